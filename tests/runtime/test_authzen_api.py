"""The AuthZEN HTTP surface (web/authzen.py, runtime/authzen.py) as a PEP meets it: errors
and their statuses, caller authentication, X-Request-ID, batch semantics, metadata and search
pagination. Real app, real SQLite, real Cedar tenants (examples/authzen-*)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from missionbound.runtime.authzen import MAX_BATCH_ITEMS, MISSION_RUNTIME_CAPABILITY
from tests.runtime.authzen_support import AGENT_AUTH, ISSUER, RS_AUTH, basic, serve_app

RICK = "CiRmZDA2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"  # admin, evil_genius
BETH = "CiRmZDM2MTRkMy1jMzlhLTQ3ODEtYjdiZC04Yjk2ZjVhNTEwMGQSBWxvY2Fs"  # viewer
TODO = "/pdp/todo/access/v1"
SEARCH = "/pdp/search/access/v1"
ERP = f"{ISSUER}/demo/erp"


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from serve_app(tmp_path_factory.mktemp("authzen-api"))


def user(ident: str, **properties: Any) -> dict[str, Any]:
    return {"type": "user", "id": ident, **({"properties": properties} if properties else {})}


def todo_request(subject: str, action: str) -> dict[str, Any]:
    return {"subject": user(subject), "action": {"name": action},
            "resource": {"type": "todo", "id": "todo-1"}}


def post(http: TestClient, path: str, body: Any, **headers: str) -> Any:
    return http.post(path, json=body, headers={**RS_AUTH, **headers})


def assert_error(response: Any, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert fragment in body["error_description"]


# -- 400 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "fragment"), [
    ({"action": {"name": "can_read_todos"}, "resource": {"type": "todo", "id": "1"}},
     "subject is required"),
    ({"subject": {"type": "user"}, "action": {"name": "x"}, "resource": {"type": "t", "id": "1"}},
     "subject.id must be a non-empty string"),
    ({"subject": user(RICK), "action": {}, "resource": {"type": "t", "id": "1"}},
     "action.name"),
    ({"subject": user(RICK), "action": {"name": "x"}, "resource": "todo-1"},
     "resource must be an object"),
    ({"subject": {"type": "user", "id": RICK, "properties": []}, "action": {"name": "x"},
      "resource": {"type": "t", "id": "1"}}, "subject.properties must be an object"),
    ({**todo_request(RICK, "can_read_todos"), "context": "yes"}, "context must be an object"),
    ([1, 2], "must be a JSON object"),
])
def test_a_malformed_evaluation_is_400(http: TestClient, body: Any, fragment: str) -> None:
    assert_error(post(http, f"{TODO}/evaluation", body), 400, fragment)


@pytest.mark.parametrize(("content", "content_type", "fragment"), [
    (b'{"subject": ', "application/json", "not valid JSON"),
    (b'{"subject": {"type": "user", "id": "a"}, "subject": {"type": "user", "id": "b"}}',
     "application/json", "duplicate member"),
    (b'{"context": {"amount": 1.5}}', "application/json", "not an integer"),
    (b'{"subject": {}}', "text/plain", "must be application/json"),
    (b'{"subject": {}}', "", "must be application/json"),
    (b"\xff\xfe", "application/json", "UTF-8"),
])
def test_bodies_that_are_not_strict_json_are_400(http: TestClient, content: bytes,
                                                 content_type: str, fragment: str) -> None:
    headers = {**RS_AUTH, **({"Content-Type": content_type} if content_type else {})}
    response = http.post(f"{TODO}/evaluation", content=content, headers=headers)
    assert_error(response, 400, fragment)


def test_json_with_a_charset_parameter_is_accepted(http: TestClient) -> None:
    response = http.post(f"{TODO}/evaluation", content=b'{"subject": {"type": "user", "id": '
                         + f'"{RICK}"'.encode() + b'}, "action": {"name": "can_read_todos"}, '
                         b'"resource": {"type": "todo", "id": "1"}}',
                         headers={**RS_AUTH, "Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200 and response.json() == {"decision": True}


def test_the_mission_endpoint_refuses_malformed_bodies_before_anything_else(
        http: TestClient) -> None:
    response = http.post("/access/v1/evaluation", content=b"[", headers={
        **RS_AUTH, "Content-Type": "application/json"})
    assert_error(response, 400, "not valid JSON")


def test_a_wrong_method_is_a_json_405(http: TestClient) -> None:
    assert_error(http.get(f"{TODO}/evaluation", headers=RS_AUTH), 405)


# -- 401 / 403 / 404 / 503 -----------------------------------------------------------------


@pytest.mark.parametrize("path", [f"{TODO}/evaluation", f"{TODO}/evaluations",
                                  f"{SEARCH}/search/resource", "/access/v1/evaluation",
                                  "/access/v1/evaluations", "/pdp/nope/access/v1/evaluation"])
@pytest.mark.parametrize("authorization", [None, basic("demo-rs", "wrong-secret"),
                                           basic("nobody", "x"), "Bearer abc"])
def test_without_valid_credentials_it_is_401_with_a_basic_challenge(
        http: TestClient, path: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = http.post(path, json=todo_request(RICK, "can_read_todos"), headers=headers)
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == f'Basic realm="{ISSUER}"'


def test_a_client_that_speaks_for_no_resource_is_403(http: TestClient) -> None:
    response = http.post(f"{TODO}/evaluation", json=todo_request(RICK, "can_read_todos"),
                         headers=AGENT_AUTH)
    assert_error(response, 403, "no audiences")


def mission_body(audience: str) -> dict[str, Any]:
    return {"subject": user("alice"), "action": {"name": "invoices.read"},
            "resource": {"type": "invoice", "id": "inv-acme-1",
                         "properties": {"audience": audience}},
            "context": {"mission": {"id": "m-1", "issuer": ISSUER, "authority_hash": "x"}}}


def test_a_mission_decision_for_another_resource_is_403(http: TestClient) -> None:
    other = "https://other.example/api"
    assert_error(post(http, "/access/v1/evaluation", mission_body(other)), 403, "audience")
    batch = {"evaluations": [mission_body(ERP), mission_body(other)]}
    assert_error(post(http, "/access/v1/evaluations", batch), 403, "evaluations[1]")


def test_the_mission_routes_are_503_while_no_mission_pdp_is_configured(
        tmp_path: Any) -> None:
    for http in serve_app(tmp_path):
        http.app.state.mission_pdp = None  # type: ignore[attr-defined]
        for path, body in (("/access/v1/evaluation", mission_body(ERP)),
                           ("/access/v1/evaluations", {"evaluations": [mission_body(ERP)]})):
            assert_error(post(http, path, body), 503, "mission PDP not configured")
        # The tenants are served all the same.
        assert post(http, f"{TODO}/evaluation", todo_request(RICK, "can_read_todos")).json() \
            == {"decision": True}


def test_an_unknown_tenant_is_404(http: TestClient) -> None:
    assert_error(post(http, "/pdp/nope/access/v1/evaluation",
                      todo_request(RICK, "can_read_todos")), 404, "no PDP tenant")
    assert_error(http.get("/.well-known/authzen-configuration/pdp/nope"), 404)
    assert_error(post(http, f"{SEARCH}/search/everything", {}), 404)


# -- X-Request-ID ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "headers", "status"), [
    (f"{TODO}/evaluation", todo_request(RICK, "can_read_todos"), RS_AUTH, 200),
    (f"{TODO}/evaluation", {"subject": {}}, RS_AUTH, 400),
    (f"{TODO}/evaluation", todo_request(RICK, "can_read_todos"), {}, 401),
    (f"{TODO}/evaluation", todo_request(RICK, "can_read_todos"), AGENT_AUTH, 403),
    ("/pdp/nope/access/v1/evaluation", todo_request(RICK, "can_read_todos"), RS_AUTH, 404),
])
def test_x_request_id_is_echoed_on_every_answer(http: TestClient, path: str, body: Any,
                                                headers: dict[str, str], status: int) -> None:
    response = http.post(path, json=body, headers={**headers, "X-Request-ID": "pep-42.a"})
    assert response.status_code == status
    assert response.headers.get_list("x-request-id") == ["pep-42.a"]


def test_without_x_request_id_the_answer_still_carries_one(http: TestClient) -> None:
    response = post(http, f"{TODO}/evaluation", todo_request(RICK, "can_read_todos"))
    assert len(response.headers.get_list("x-request-id")) == 1


# -- decisions and batches ---------------------------------------------------------------------


def test_a_deny_is_200_with_decision_false(http: TestClient) -> None:
    response = post(http, f"{TODO}/evaluation", todo_request(BETH, "can_create_todo"))
    assert response.status_code == 200 and response.json() == {"decision": False}


# Beth (viewer): read permitted, create/update/delete denied.
MIXED = [{"action": {"name": name}} for name in
         ("can_read_todos", "can_create_todo", "can_read_user", "can_delete_todo")]


def batch(items: list[dict[str, Any]], semantic: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": user(BETH), "resource": {"type": "todo", "id": "t-1"},
                            "evaluations": items}
    if semantic is not None:
        body["options"] = {"evaluations_semantic": semantic}
    return body


@pytest.mark.parametrize(("semantic", "items", "expected"), [
    (None, MIXED, [True, False, True, False]),
    ("execute_all", MIXED, [True, False, True, False]),
    ("deny_on_first_deny", MIXED, [True, False]),
    ("deny_on_first_deny", MIXED[:1] + MIXED[2:3], [True, True]),
    ("permit_on_first_permit", MIXED, [True]),
    ("permit_on_first_permit", MIXED[1:2] + MIXED[3:] + MIXED[2:3], [False, False, True]),
    ("permit_on_first_permit", MIXED[1:2] + MIXED[3:], [False, False]),
])
def test_batch_semantics(http: TestClient, semantic: str | None, items: list[dict[str, Any]],
                         expected: list[bool]) -> None:
    response = post(http, f"{TODO}/evaluations", batch(items, semantic))
    assert response.status_code == 200, response.text
    assert response.json() == {"evaluations": [{"decision": value} for value in expected]}


def test_an_item_overrides_the_defaults_member_by_member(http: TestClient) -> None:
    items = [{"action": {"name": "can_create_todo"}},
             {"action": {"name": "can_create_todo"}, "subject": user(RICK)}]
    answer = post(http, f"{TODO}/evaluations", batch(items)).json()
    assert answer == {"evaluations": [{"decision": False}, {"decision": True}]}


def test_an_item_that_cannot_be_evaluated_is_a_deny_with_its_error(http: TestClient) -> None:
    items = [{"action": {"name": "can_read_todos"}}, {"action": {"title": "no name"}},
             {"action": {"name": "can_read_user"}}]
    answer = post(http, f"{TODO}/evaluations", batch(items)).json()["evaluations"]
    assert answer[0] == {"decision": True} and answer[2] == {"decision": True}
    assert answer[1]["decision"] is False
    assert answer[1]["context"]["error"]["status"] == 400
    assert "action.name" in answer[1]["context"]["error"]["message"]
    # Under deny_on_first_deny the error is the deny that ends the batch.
    short = post(http, f"{TODO}/evaluations", batch(items, "deny_on_first_deny")).json()
    assert len(short["evaluations"]) == 2


def test_without_evaluations_the_request_is_a_single_evaluation(http: TestClient) -> None:
    for body in (todo_request(RICK, "can_create_todo"),
                 {**todo_request(RICK, "can_create_todo"), "evaluations": []}):
        assert post(http, f"{TODO}/evaluations", body).json() == {"decision": True}


@pytest.mark.parametrize(("options", "fragment"), [
    ({"evaluations_semantic": "first_match"}, "evaluations_semantic must be one of"),
    ({"evaluations_semantic": 1}, "evaluations_semantic must be one of"),
    ("all", "options must be an object"),
])
def test_unknown_batch_options_are_400(http: TestClient, options: Any, fragment: str) -> None:
    body = {**batch(MIXED), "options": options}
    assert_error(post(http, f"{TODO}/evaluations", body), 400, fragment)


def test_malformed_evaluations_are_400(http: TestClient) -> None:
    assert_error(post(http, f"{TODO}/evaluations", batch({"a": 1})), 400,  # type: ignore[arg-type]
                 "evaluations must be an array")
    assert_error(post(http, f"{TODO}/evaluations", batch([1])), 400,  # type: ignore[list-item]
                 "evaluations[0] must be an object")


def test_an_oversized_batch_is_413_and_the_limit_is_accepted(http: TestClient) -> None:
    at_limit = post(http, f"{TODO}/evaluations", batch(MIXED[:1] * MAX_BATCH_ITEMS))
    assert len(at_limit.json()["evaluations"]) == MAX_BATCH_ITEMS
    assert_error(post(http, f"{TODO}/evaluations", batch(MIXED[:1] * (MAX_BATCH_ITEMS + 1))),
                 413, "split the batch")


def test_an_oversized_body_is_413(tmp_path: Any) -> None:
    for http in serve_app(tmp_path, max_request_body_size=4096):
        body = {**todo_request(RICK, "can_read_todos"), "context": {"pad": "x" * 5000}}
        assert_error(post(http, f"{TODO}/evaluation", body), 413)


# -- request-time entities -----------------------------------------------------------------


def records_request(subject: dict[str, Any], action: str, record: str,
                    **properties: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"type": "record", "id": record}
    if properties:
        resource["properties"] = properties
    return {"subject": subject, "action": {"name": action}, "resource": resource}


def test_properties_override_the_stored_entity_for_that_request_only(
        http: TestClient) -> None:
    # bob: employee in Legal; record 104: Accounting, owned by dan.
    def decide(body: dict[str, Any]) -> bool:
        answer = post(http, f"{SEARCH}/evaluation", body).json()
        return bool(answer["decision"])

    assert decide(records_request(user("bob"), "view", "104")) is False
    assert decide(records_request(user("bob", role="manager"), "view", "104")) is True
    assert decide(records_request(user("bob"), "view", "104", department="Legal")) is True
    # Stored attributes the request did not name are kept (owner is still dan).
    assert decide(records_request(user("bob"), "delete", "104", department="Legal")) is False
    assert decide(records_request(user("bob"), "view", "104")) is False


def test_properties_the_tenant_schema_refuses_are_400(http: TestClient) -> None:
    body = records_request(user("bob", role=5), "view", "104")
    assert_error(post(http, f"{SEARCH}/evaluation", body), 400, "not valid attributes")


def test_an_unknown_subject_is_denied_not_an_error(http: TestClient) -> None:
    response = post(http, f"{SEARCH}/evaluation", records_request(user("mallory"), "view", "101"))
    assert response.status_code == 200 and response.json() == {"decision": False}


# -- metadata ----------------------------------------------------------------------------------


def test_the_mission_pdp_metadata(http: TestClient) -> None:
    response = http.get("/.well-known/authzen-configuration")
    assert response.status_code == 200
    document = response.json()
    assert document["policy_decision_point"] == ISSUER
    assert document["access_evaluation_endpoint"] == f"{ISSUER}/access/v1/evaluation"
    assert document["access_evaluations_endpoint"] == f"{ISSUER}/access/v1/evaluations"
    assert MISSION_RUNTIME_CAPABILITY in document["capabilities"]


def test_a_tenant_metadata_document_names_the_tenant_as_its_pdp(http: TestClient) -> None:
    document = http.get("/.well-known/authzen-configuration/pdp/todo").json()
    base = f"{ISSUER}/pdp/todo"
    assert document == {
        "policy_decision_point": base,
        "access_evaluation_endpoint": f"{base}/access/v1/evaluation",
        "access_evaluations_endpoint": f"{base}/access/v1/evaluations",
        "search_subject_endpoint": f"{base}/access/v1/search/subject",
        "search_resource_endpoint": f"{base}/access/v1/search/resource",
        "search_action_endpoint": f"{base}/access/v1/search/action",
    }
    # Every endpoint it names answers (here: a permit through the advertised URL).
    path = document["access_evaluation_endpoint"].removeprefix(ISSUER)
    assert post(http, path, todo_request(RICK, "can_read_todos")).json() == {"decision": True}


# -- search pagination -------------------------------------------------------------------------

ALICE_VIEWS = {"subject": user("alice"), "action": {"name": "view"},
               "resource": {"type": "record"}}  # alice is a manager: all 20 records


def test_search_pages_cover_the_results_once(http: TestClient) -> None:
    seen: list[str] = []
    token = ""
    sizes = []
    for _ in range(10):
        body = {**ALICE_VIEWS, "page": {"limit": 7, **({"token": token} if token else {})}}
        answer = post(http, f"{SEARCH}/search/resource", body).json()
        sizes.append(answer["page"]["count"])
        assert answer["page"]["total"] == 20
        seen += [result["id"] for result in answer["results"]]
        token = answer["page"]["next_token"]
        if not token:
            break
    assert sizes == [7, 7, 6]
    assert seen == [str(number) for number in range(101, 121)]


def test_a_page_token_only_works_for_its_own_search(http: TestClient) -> None:
    first = post(http, f"{SEARCH}/search/resource", {**ALICE_VIEWS, "page": {"limit": 5}}).json()
    token = first["page"]["next_token"]
    other = {**ALICE_VIEWS, "action": {"name": "edit"}, "page": {"token": token, "limit": 5}}
    assert_error(post(http, f"{SEARCH}/search/resource", other), 400, "another search")
    forged = {**ALICE_VIEWS, "page": {"token": "not-a-token!", "limit": 5}}
    assert_error(post(http, f"{SEARCH}/search/resource", forged), 400, "page.token")


@pytest.mark.parametrize("page", [{"limit": 0}, {"limit": 1001}, {"limit": "5"},
                                  {"limit": True}, {"token": 5}, "next"])
def test_bad_pages_are_400(http: TestClient, page: Any) -> None:
    assert_error(post(http, f"{SEARCH}/search/resource", {**ALICE_VIEWS, "page": page}), 400,
                 "page")


def test_a_search_without_what_it_needs_is_400(http: TestClient) -> None:
    assert_error(post(http, f"{SEARCH}/search/resource", {"subject": user("alice"),
                                                           "resource": {"type": "record"}}),
                 400, "action is required")
    assert_error(post(http, f"{SEARCH}/search/action", {"subject": user("alice"),
                                                         "resource": {"type": "record"}}),
                 400, "resource.id")
    assert_error(post(http, f"{SEARCH}/search/subject", {
        "subject": {"id": "x"}, "action": {"name": "view"},
        "resource": {"type": "record", "id": "101"}}), 400, "subject.type")

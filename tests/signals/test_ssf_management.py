"""The transmitter's management API over HTTP (OpenID Shared Signals Framework 1.0 sections
7 and 8): metadata, stream create / read / update / replace / delete, status, verification;
who may do what (confidential clients, their own streams only) and strict validation (400,
never 422 or 500, and nothing stored)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import func, select

from missionbound.issuer.security_events import EVENTS_SUPPORTED
from missionbound.issuer.signals import (
    MAX_STREAMS_PER_CLIENT,
    MIN_VERIFICATION_INTERVAL_SECONDS,
)
from missionbound.store.models import SignalDelivery, SignalStream
from tests.issuer.flow import ISSUER, REDIRECT_URI, Flow
from tests.signals.conftest import Streams
from tests.signals.support import (
    AGENT,
    LIFECYCLE_CHANGE,
    POLL_METHOD,
    PUSH_METHOD,
    RS,
    SESSION_REVOKED,
    SUBAGENT,
    VERIFICATION,
    event_of,
)

PUSH_URL = "https://rs.example/ssf/events"


def table_counts(flow: Flow) -> tuple[int, int]:
    with flow.store.read() as session, session.begin():
        return (
            int(session.scalar(select(func.count()).select_from(SignalStream)) or 0),
            int(session.scalar(select(func.count()).select_from(SignalDelivery)) or 0),
        )


def stored_stream(flow: Flow, stream_id: str) -> SignalStream | None:
    with flow.store.read() as session, session.begin():
        return session.get(SignalStream, stream_id)


# -- metadata ------------------------------------------------------------------------------


def test_transmitter_metadata(flow: Flow) -> None:
    response = flow.client.get("/.well-known/ssf-configuration")
    assert response.status_code == 200
    assert response.json() == {
        "spec_version": "1_0",
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/jwks",
        "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
        "configuration_endpoint": f"{ISSUER}/ssf/streams",
        "status_endpoint": f"{ISSUER}/ssf/status",
        "verification_endpoint": f"{ISSUER}/ssf/verify",
        "default_subjects": "ALL",
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:7617"},
                                  {"spec_urn": "urn:ietf:rfc:7523"}],
    }


# -- create, read, update, replace, delete -------------------------------------------------


def test_a_push_stream_is_created_with_the_transmitters_members(
    flow: Flow, streams: Streams
) -> None:
    config = streams.push(RS, PUSH_URL, events_requested=[LIFECYCLE_CHANGE],
                          description="erp gateway")
    assert config["stream_id"].startswith("ssf_")
    assert config == {
        "stream_id": config["stream_id"],
        "iss": ISSUER,
        "aud": "demo-rs",
        "delivery": {"method": PUSH_METHOD, "endpoint_url": PUSH_URL},
        "events_supported": list(EVENTS_SUPPORTED),
        "events_requested": [LIFECYCLE_CHANGE],
        "events_delivered": [LIFECYCLE_CHANGE],
        "min_verification_interval": MIN_VERIFICATION_INTERVAL_SECONDS,
        "description": "erp gateway",
    }
    stored = stored_stream(flow, config["stream_id"])
    assert stored is not None and stored.status == "enabled" and stored.client_id == "demo-rs"


def test_a_poll_stream_gets_the_transmitters_poll_url_and_every_event_by_default(
    streams: Streams,
) -> None:
    config = streams.poll(RS)
    stream_id = config["stream_id"]
    assert config["delivery"] == {
        "method": POLL_METHOD,
        "endpoint_url": f"{ISSUER}/ssf/poll?stream_id={stream_id}",
    }
    assert config["events_requested"] == config["events_delivered"] == list(EVENTS_SUPPORTED)


def test_the_authorization_header_is_sent_but_never_echoed(flow: Flow, streams: Streams) -> None:
    config = streams.create(RS, {"method": PUSH_METHOD, "endpoint_url": PUSH_URL,
                                 "authorization_header": "Bearer receiver-secret"})
    assert "authorization_header" not in config["delivery"]
    read = flow.client.get("/ssf/streams", params={"stream_id": config["stream_id"]}, auth=RS)
    assert "receiver-secret" not in read.text
    stored = stored_stream(flow, config["stream_id"])
    assert stored is not None and stored.authorization_header == "Bearer receiver-secret"


def test_read_one_stream_or_the_callers_list(flow: Flow, streams: Streams) -> None:
    first = streams.poll(RS)
    second = streams.push(RS, PUSH_URL)
    mine = streams.poll(AGENT)
    one = flow.client.get("/ssf/streams", params={"stream_id": first["stream_id"]}, auth=RS)
    assert one.status_code == 200 and one.json() == first
    assert one.headers["cache-control"] == "no-store"
    listed = flow.client.get("/ssf/streams", auth=RS)
    assert listed.status_code == 200
    ids = [s["stream_id"] for s in listed.json()]
    assert first["stream_id"] in ids and second["stream_id"] in ids
    assert mine["stream_id"] not in ids


def test_patch_changes_only_what_is_sent(flow: Flow, streams: Streams) -> None:
    config = streams.push(RS, PUSH_URL, description="before")
    response = flow.client.patch("/ssf/streams", json={
        "stream_id": config["stream_id"], "events_requested": [SESSION_REVOKED]}, auth=RS)
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["events_requested"] == changed["events_delivered"] == [SESSION_REVOKED]
    assert changed["delivery"] == config["delivery"]
    assert changed["description"] == "before"


def test_put_replaces_every_receiver_member(flow: Flow, streams: Streams) -> None:
    config = streams.push(RS, PUSH_URL, description="before",
                          events_requested=[LIFECYCLE_CHANGE])
    # A receiver may send back what it read (transmitter members equal to ours).
    replaced = flow.client.put("/ssf/streams", json={
        **{k: v for k, v in config.items() if k not in ("description", "events_requested",
                                                       "events_delivered")},
        "delivery": {"method": POLL_METHOD}}, auth=RS)
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["delivery"]["method"] == POLL_METHOD
    assert body["delivery"]["endpoint_url"].endswith(f"stream_id={config['stream_id']}")
    assert "description" not in body
    assert body["events_requested"] == list(EVENTS_SUPPORTED)  # the default again


def test_delete_removes_the_stream_and_what_it_owed(flow: Flow, streams: Streams) -> None:
    config = streams.poll(RS)
    flow.clock.advance(MIN_VERIFICATION_INTERVAL_SECONDS)
    assert flow.client.post("/ssf/verify", json={"stream_id": config["stream_id"]},
                            auth=RS).status_code == 204
    deleted = flow.client.delete("/ssf/streams", params={"stream_id": config["stream_id"]},
                                 auth=RS)
    assert deleted.status_code == 204 and deleted.content == b""
    assert stored_stream(flow, config["stream_id"]) is None
    with flow.store.read() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(SignalDelivery).where(
            SignalDelivery.stream_id == config["stream_id"])) == 0
    again = flow.client.get("/ssf/streams", params={"stream_id": config["stream_id"]}, auth=RS)
    assert again.status_code == 404


def test_another_clients_stream_is_not_found_and_unchanged(flow: Flow, streams: Streams) -> None:
    config = streams.poll(RS)
    stream_id = config["stream_id"]
    attempts = [
        flow.client.get("/ssf/streams", params={"stream_id": stream_id}, auth=AGENT),
        flow.client.patch("/ssf/streams", json={"stream_id": stream_id, "description": "x"},
                          auth=AGENT),
        flow.client.put("/ssf/streams", json={"stream_id": stream_id,
                                              "delivery": {"method": POLL_METHOD}}, auth=AGENT),
        flow.client.delete("/ssf/streams", params={"stream_id": stream_id}, auth=AGENT),
        flow.client.get("/ssf/status", params={"stream_id": stream_id}, auth=AGENT),
        flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": "disabled"},
                         auth=AGENT),
        flow.client.post("/ssf/verify", json={"stream_id": stream_id}, auth=AGENT),
        flow.client.post("/ssf/poll", params={"stream_id": stream_id}, json={}, auth=AGENT),
    ]
    unknown = flow.client.get("/ssf/streams", params={"stream_id": "ssf_nope"}, auth=AGENT)
    for response in [*attempts, unknown]:
        assert response.status_code == 404, response.text
        assert response.json() == {"error": "not_found", "error_description": "no such stream"}
    stored = stored_stream(flow, stream_id)
    assert stored is not None and stored.status == "enabled" and stored.description is None


def test_a_client_may_hold_a_limited_number_of_streams(flow: Flow, streams: Streams) -> None:
    existing = len(flow.client.get("/ssf/streams", auth=SUBAGENT).json())
    for _ in range(MAX_STREAMS_PER_CLIENT - existing):
        streams.poll(SUBAGENT)
    before = table_counts(flow)
    refused = flow.client.post("/ssf/streams", json={"delivery": {"method": POLL_METHOD}},
                               auth=SUBAGENT)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "too_many_streams"
    assert table_counts(flow) == before


# -- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, ("demo-rs", "wrong"), ("nobody", "x")],
                         ids=["none", "wrong-secret", "unknown-client"])
@pytest.mark.parametrize("call", ["create", "list", "status", "verify", "poll", "delete"])
def test_an_unauthenticated_caller_gets_401(
    flow: Flow, auth: tuple[str, str] | None, call: str
) -> None:
    before = table_counts(flow)
    requests = {
        "create": lambda: flow.client.post("/ssf/streams", json={
            "delivery": {"method": POLL_METHOD}}, auth=auth),
        "list": lambda: flow.client.get("/ssf/streams", auth=auth),
        "status": lambda: flow.client.get("/ssf/status", params={"stream_id": "x"}, auth=auth),
        "verify": lambda: flow.client.post("/ssf/verify", json={"stream_id": "x"}, auth=auth),
        "poll": lambda: flow.client.post("/ssf/poll", params={"stream_id": "x"}, json={},
                                         auth=auth),
        "delete": lambda: flow.client.delete("/ssf/streams", params={"stream_id": "x"},
                                             auth=auth),
    }
    response = requests[call]()
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert "Basic" in response.headers["www-authenticate"]
    assert table_counts(flow) == before


def test_a_bad_body_from_an_unauthenticated_caller_is_still_401(flow: Flow) -> None:
    response = flow.client.post("/ssf/streams", content=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert response.status_code == 401


def _assertion(client_id: str, key: ECKey, **claims: Any) -> str:
    now = int(time.time())
    base = {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": now, "exp": now + 60,
            "jti": secrets.token_urlsafe(12)}
    return str(jwt.encode({"alg": "ES256"}, {**base, **claims}, key))


def test_private_key_jwt_authenticates_with_a_bearer_assertion(
    flow: Flow, streams: Streams
) -> None:
    key = ECKey.generate_key("P-256", private=True)
    registered = flow.client.post("/register", json={
        "redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [key.as_dict(private=False)]}})
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    assertion = _assertion(client_id, key)
    headers = {"Authorization": f"Bearer {assertion}"}
    created = flow.client.post("/ssf/streams", json={"delivery": {"method": POLL_METHOD}},
                               headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["aud"] == client_id
    # The assertion is single use (RFC 7523 section 3 item 7).
    replayed = flow.client.get("/ssf/streams", headers=headers)
    assert replayed.status_code == 401
    listed = flow.client.get("/ssf/streams", headers={
        "Authorization": f"Bearer {_assertion(client_id, key)}"})
    assert [s["stream_id"] for s in listed.json()] == [created.json()["stream_id"]]
    # Another audience, another key or garbage: 401.
    for bad in (_assertion(client_id, key, aud="https://other.example"),
                _assertion(client_id, ECKey.generate_key("P-256", private=True)),
                "not-a-jwt"):
        refused = flow.client.get("/ssf/streams", headers={"Authorization": f"Bearer {bad}"})
        assert refused.status_code == 401, refused.text
    flow.client.delete("/ssf/streams", params={"stream_id": created.json()["stream_id"]},
                       headers={"Authorization": f"Bearer {_assertion(client_id, key)}"})


def test_a_secret_client_cannot_use_a_method_it_did_not_register(flow: Flow) -> None:
    # demo-rs registered client_secret_basic only: a form-style secret is not accepted here.
    response = flow.client.post("/ssf/streams", json={"delivery": {"method": POLL_METHOD}},
                                params={"client_id": "demo-rs", "client_secret": RS[1]})
    assert response.status_code == 401


# -- validation ----------------------------------------------------------------------------

GOOD_PUSH = {"method": PUSH_METHOD, "endpoint_url": PUSH_URL}
CREATE_REFUSALS: list[tuple[str, Any, str]] = [
    ("not-an-object", [GOOD_PUSH], "JSON object"),
    ("no-delivery", {}, "delivery is required"),
    ("delivery-not-object", {"delivery": "push"}, "delivery must be"),
    ("unknown-method", {"delivery": {"method": "urn:example:webhook"}}, "delivery.method"),
    ("method-short-name", {"delivery": {"method": "push", "endpoint_url": PUSH_URL}},
     "delivery.method"),
    ("push-without-url", {"delivery": {"method": PUSH_METHOD}}, "endpoint_url"),
    ("relative-url", {"delivery": {**GOOD_PUSH, "endpoint_url": "/events"}}, "absolute"),
    ("ftp-url", {"delivery": {**GOOD_PUSH, "endpoint_url": "ftp://rs.example/x"}}, "absolute"),
    ("url-with-credentials",
     {"delivery": {**GOOD_PUSH, "endpoint_url": "https://u:p@rs.example/x"}}, "credentials"),
    ("url-with-space", {"delivery": {**GOOD_PUSH, "endpoint_url": "https://rs.example/a b"}},
     "endpoint_url"),
    ("url-fragment", {"delivery": {**GOOD_PUSH, "endpoint_url": "https://rs.example/x#f"}},
     "fragment"),
    ("url-bad-port", {"delivery": {**GOOD_PUSH, "endpoint_url": "https://rs.example:99999/"}},
     "valid URL"),
    ("url-too-long", {"delivery": {**GOOD_PUSH, "endpoint_url": "https://rs.example/"
                                   + "a" * 2100}}, "2048"),
    ("header-with-newline",
     {"delivery": {**GOOD_PUSH, "authorization_header": "Bearer x\r\nX-Evil: 1"}},
     "authorization_header"),
    ("header-not-string", {"delivery": {**GOOD_PUSH, "authorization_header": 5}},
     "authorization_header"),
    ("poll-with-url", {"delivery": {"method": POLL_METHOD, "endpoint_url": PUSH_URL}},
     "leave it out"),
    ("poll-with-header", {"delivery": {"method": POLL_METHOD, "authorization_header": "x"}},
     "push delivery only"),
    ("unknown-delivery-member", {"delivery": {**GOOD_PUSH, "format": "jws"}}, "unknown member"),
    ("unknown-member", {"delivery": GOOD_PUSH, "subjects": []}, "unknown member"),
    ("stream-id-on-create", {"delivery": GOOD_PUSH, "stream_id": "mine"}, "assigned"),
    ("unsupported-event", {"delivery": GOOD_PUSH,
                           "events_requested": ["https://schemas.example/other"]},
     "unsupported event"),
    ("verification-requested", {"delivery": GOOD_PUSH, "events_requested": [VERIFICATION]},
     "unsupported event"),
    ("empty-events", {"delivery": GOOD_PUSH, "events_requested": []}, "non-empty"),
    ("events-not-list", {"delivery": GOOD_PUSH, "events_requested": LIFECYCLE_CHANGE},
     "non-empty"),
    ("events-twice", {"delivery": GOOD_PUSH,
                      "events_requested": [LIFECYCLE_CHANGE, LIFECYCLE_CHANGE]}, "twice"),
    ("other-iss", {"delivery": GOOD_PUSH, "iss": "https://evil.example"}, "iss"),
    ("other-aud", {"delivery": GOOD_PUSH, "aud": "demo-agent"}, "aud"),
    ("own-events-delivered", {"delivery": GOOD_PUSH, "events_requested": [LIFECYCLE_CHANGE],
                              "events_delivered": list(EVENTS_SUPPORTED)}, "events_delivered"),
    ("other-events-supported", {"delivery": GOOD_PUSH, "events_supported": [LIFECYCLE_CHANGE]},
     "events_supported"),
    ("other-verification-interval", {"delivery": GOOD_PUSH, "min_verification_interval": 0},
     "min_verification_interval"),
    ("description-not-string", {"delivery": GOOD_PUSH, "description": 7}, "description"),
    ("description-too-long", {"delivery": GOOD_PUSH, "description": "d" * 1025}, "description"),
]


@pytest.mark.parametrize(("body", "words"), [(b, w) for _, b, w in CREATE_REFUSALS],
                         ids=[name for name, _, _ in CREATE_REFUSALS])
def test_a_bad_stream_configuration_is_refused_and_nothing_stored(
    flow: Flow, body: Any, words: str
) -> None:
    before = table_counts(flow)
    response = flow.client.post("/ssf/streams", json=body, auth=RS)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert words in response.json()["error_description"], response.json()
    assert response.headers["cache-control"] == "no-store"
    assert table_counts(flow) == before


@pytest.mark.parametrize(("content", "content_type"), [
    (b"{", "application/json"),
    (b'{"delivery": {"method": "urn:ietf:rfc:8936"}, "delivery": {}}', "application/json"),
    (b'{"delivery": {"method": "urn:ietf:rfc:8936"}}', "text/plain"),
    (b'{"delivery": {"method": "urn:ietf:rfc:8936"}, "x": 1.5}', "application/json"),
    (b"\xff\xfe", "application/json"),
], ids=["truncated", "duplicate-member", "wrong-type", "float", "not-utf8"])
def test_a_body_that_is_not_strict_json_is_invalid_request(
    flow: Flow, content: bytes, content_type: str
) -> None:
    before = table_counts(flow)
    response = flow.client.post("/ssf/streams", content=content, auth=RS,
                                headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert table_counts(flow) == before


def test_updates_are_validated_like_creation_and_change_nothing(
    flow: Flow, streams: Streams
) -> None:
    config = streams.push(RS, PUSH_URL)
    stream_id = config["stream_id"]
    refusals = [
        flow.client.patch("/ssf/streams", json={"events_requested": [LIFECYCLE_CHANGE]},
                          auth=RS),  # no stream_id
        flow.client.patch("/ssf/streams", json={"stream_id": stream_id,
                                                "delivery": {"method": "x"}}, auth=RS),
        flow.client.patch("/ssf/streams", json={"stream_id": stream_id, "iss": "x"}, auth=RS),
        flow.client.put("/ssf/streams", json={"stream_id": stream_id}, auth=RS),  # no delivery
        flow.client.put("/ssf/streams", json={"stream_id": stream_id, "delivery": {
            "method": POLL_METHOD, "endpoint_url": f"{ISSUER}/ssf/poll?stream_id=other"}},
            auth=RS),
        flow.client.delete("/ssf/streams", auth=RS),  # no stream_id
        flow.client.get("/ssf/status", auth=RS),
    ]
    for response in refusals:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
    read = flow.client.get("/ssf/streams", params={"stream_id": stream_id}, auth=RS)
    assert read.json() == config


# -- status --------------------------------------------------------------------------------


def test_status_is_read_and_changed(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    read = flow.client.get("/ssf/status", params={"stream_id": stream_id}, auth=RS)
    assert read.status_code == 200 and read.json() == {"stream_id": stream_id,
                                                       "status": "enabled"}
    for status in ("paused", "disabled", "enabled"):
        changed = flow.client.post("/ssf/status", json={
            "stream_id": stream_id, "status": status, "reason": f"now {status}"}, auth=RS)
        assert changed.status_code == 200, changed.text
        assert changed.json() == {"stream_id": stream_id, "status": status,
                                  "reason": f"now {status}"}
    for bad in ({"stream_id": stream_id, "status": "stopped"},
                {"stream_id": stream_id},
                {"stream_id": stream_id, "status": "paused", "reason": 3},
                {"stream_id": stream_id, "status": "paused", "extra": True}):
        refused = flow.client.post("/ssf/status", json=bad, auth=RS)
        assert refused.status_code == 400, refused.text
    assert flow.client.get("/ssf/status", params={"stream_id": stream_id},
                           auth=RS).json()["status"] == "enabled"


# -- verification --------------------------------------------------------------------------


def test_verification_queues_a_signed_set_echoing_state(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS, events_requested=[SESSION_REVOKED])["stream_id"]
    flow.clock.advance(MIN_VERIFICATION_INTERVAL_SECONDS)
    response = flow.client.post("/ssf/verify", json={"stream_id": stream_id,
                                                     "state": "VGhpcyBpcyBhbiBleGFtcGxl"},
                                auth=RS)
    assert response.status_code == 204, response.text
    polled = streams.polled(RS, stream_id)
    (jti, token), = polled["sets"].items()
    (claims,) = streams.claims([token])
    assert claims["jti"] == jti and claims["iss"] == ISSUER and claims["aud"] == "demo-rs"
    assert claims["sub_id"] == {"format": "opaque", "id": stream_id}
    assert event_of(claims) == (VERIFICATION, {"state": "VGhpcyBpcyBhbiBleGFtcGxl"})
    assert isinstance(claims["iat"], int)


def test_verification_is_rate_limited(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    flow.clock.advance(MIN_VERIFICATION_INTERVAL_SECONDS)
    assert flow.client.post("/ssf/verify", json={"stream_id": stream_id},
                            auth=RS).status_code == 204
    before = table_counts(flow)
    again = flow.client.post("/ssf/verify", json={"stream_id": stream_id}, auth=RS)
    assert again.status_code == 429, again.text
    assert again.json()["error"] == "too_many_requests"
    assert 1 <= int(again.headers["retry-after"]) <= MIN_VERIFICATION_INTERVAL_SECONDS
    assert table_counts(flow) == before
    flow.clock.advance(MIN_VERIFICATION_INTERVAL_SECONDS)
    # The interval has passed, but the first verification SET is still undelivered: refused
    # until it is received (a receiver that never polls cannot grow its queue by asking).
    pending = flow.client.post("/ssf/verify", json={"stream_id": stream_id}, auth=RS)
    assert pending.status_code == 429, pending.text
    assert pending.json()["error"] == "too_many_requests"
    assert "undelivered" in pending.json()["error_description"]
    assert pending.headers["retry-after"] == str(MIN_VERIFICATION_INTERVAL_SECONDS)
    assert table_counts(flow) == before
    first = streams.polled(RS, stream_id)
    assert len(first["sets"]) == 1
    streams.polled(RS, stream_id, ack=list(first["sets"]), maxEvents=0)
    assert flow.client.post("/ssf/verify", json={"stream_id": stream_id},
                            auth=RS).status_code == 204
    polled = streams.polled(RS, stream_id)
    assert len(polled["sets"]) == 1 and set(polled["sets"]).isdisjoint(first["sets"])
    for claims in streams.claims([*first["sets"].values(), *polled["sets"].values()]):
        assert event_of(claims) == (VERIFICATION, {})


def test_verification_of_a_disabled_stream_is_refused(flow: Flow, streams: Streams) -> None:
    stream_id = streams.poll(RS)["stream_id"]
    flow.client.post("/ssf/status", json={"stream_id": stream_id, "status": "disabled"},
                     auth=RS)
    flow.clock.advance(MIN_VERIFICATION_INTERVAL_SECONDS)
    before = table_counts(flow)
    refused = flow.client.post("/ssf/verify", json={"stream_id": stream_id}, auth=RS)
    assert refused.status_code == 409 and refused.json()["error"] == "stream_disabled"
    assert table_counts(flow) == before
    for bad in ({}, {"stream_id": stream_id, "state": 5}, {"stream_id": stream_id, "x": 1}):
        assert flow.client.post("/ssf/verify", json=bad, auth=RS).status_code == 400


def test_the_openapi_document_lists_the_ssf_routes(flow: Flow) -> None:
    paths = flow.client.get("/openapi.json").json()["paths"]
    assert set(paths["/ssf/streams"]) == {"get", "post", "patch", "put", "delete"}
    assert {"/ssf/status", "/ssf/verify", "/ssf/poll",
            "/.well-known/ssf-configuration"} <= set(paths)


def test_http_methods_not_offered_are_405(flow: Flow) -> None:
    response: httpx.Response = flow.client.get("/ssf/verify", auth=RS)
    assert response.status_code == 405


def test_a_self_registered_client_may_poll_but_never_have_the_as_push(
    flow: Flow, streams: Streams
) -> None:
    """Decision E12: push sends requests to a URL the client names; open registration must
    not let anyone aim the AS at internal addresses."""
    response = flow.client.post("/register", json={
        "redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "client_secret_basic"})
    assert response.status_code == 201, response.text
    registered = (response.json()["client_id"], response.json()["client_secret"])
    before = table_counts(flow)
    refused = flow.client.post("/ssf/streams", auth=registered, json={
        "delivery": {"method": PUSH_METHOD, "endpoint_url": "http://127.0.0.1:6379/"}})
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
    assert "poll" in refused.json()["error_description"]
    assert table_counts(flow) == before
    polling = streams.poll(registered)
    switched = flow.client.patch("/ssf/streams", auth=registered, json={
        "stream_id": polling["stream_id"],
        "delivery": {"method": PUSH_METHOD, "endpoint_url": "http://10.0.0.1/"}})
    assert switched.status_code == 400
    assert stored_stream(flow, polling["stream_id"]).delivery_method == POLL_METHOD

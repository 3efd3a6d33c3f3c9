"""The wire rules for errors: JSON ``{"error", "error_description"}`` always; request
validation is 400 ``invalid_request`` (never FastAPI's 422); an unexpected exception is a
JSON 500 that reveals nothing of the failure.

The routes exercised here are added to the real app by the test: the handlers and middleware
under test are the ones every future endpoint goes through.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from structlog.testing import capture_logs

from missionbound.mission.errors import InvalidState
from missionbound.store.errors import DerivationRefused

pytestmark = pytest.mark.anyio

SECRET_DETAIL = "the database password is hunter2"


class Payment(BaseModel):
    invoice_id: str
    amount: int


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    @app.post("/_test/payments")
    def create_payment(payment: Payment, dry_run: bool = False) -> dict[str, str]:
        return {"invoice_id": payment.invoice_id}

    @app.get("/_test/boom")
    def boom() -> None:
        raise RuntimeError(SECRET_DETAIL)

    @app.post("/_test/transition")
    def transition() -> None:
        raise InvalidState("cannot resume a Mission that is active")

    @app.post("/_test/refresh")
    def refresh() -> None:
        raise DerivationRefused("the Mission is revoked", mission_state="revoked",
                                mission_error="mission_revoked")

    return app


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, str] = response.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str) and body["error_description"]
    return body


async def test_a_valid_request_reaches_the_handler(client: httpx.AsyncClient) -> None:
    response = await client.post("/_test/payments", json={"invoice_id": "inv-1", "amount": 5})
    assert response.status_code == 200
    assert response.json() == {"invoice_id": "inv-1"}


@pytest.mark.parametrize(
    ("query", "body", "mentions"),
    [
        ("", {"invoice_id": "inv-1"}, "body.amount"),  # missing member
        ("", {"invoice_id": "inv-1", "amount": "lots"}, "body.amount"),  # wrong type
        ("?dry_run=perhaps", {"invoice_id": "inv-1", "amount": 5}, "query.dry_run"),
        ("", [1, 2], "body"),  # not an object
    ],
)
async def test_validation_errors_are_400_invalid_request_not_422(
    client: httpx.AsyncClient, query: str, body: object, mentions: str
) -> None:
    response = await client.post(f"/_test/payments{query}", json=body)
    error = assert_error(response, 400, "invalid_request")
    assert mentions in error["error_description"]


async def test_malformed_json_is_400_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_test/payments", content=b'{"invoice_id": ', headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400, "invalid_request")
    assert error["error_description"] == "the request body is not valid JSON"


async def test_error_descriptions_do_not_echo_input(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_test/payments", json={"invoice_id": "inv-1", "amount": "s3cret-value"}
    )
    assert_error(response, 400, "invalid_request")
    assert "s3cret-value" not in response.text


async def test_unknown_path_is_404_json(client: httpx.AsyncClient) -> None:
    body = assert_error(await client.get("/no/such/thing"), 404, "not_found")
    assert "/no/such/thing" in body["error_description"]


async def test_wrong_method_is_405_json_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/healthz")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_mission_errors_carry_their_own_code_and_status(client: httpx.AsyncClient) -> None:
    body = assert_error(await client.post("/_test/transition"), 409, "invalid_state")
    assert body["error_description"] == "cannot resume a Mission that is active"


async def test_a_refused_derivation_keeps_its_mission_members(client: httpx.AsyncClient) -> None:
    # PROFILE.md section 8: invalid_grant + mission_state (+ mission_error) on the wire.
    body = assert_error(await client.post("/_test/refresh"), 400, "invalid_grant")
    assert body == {"error": "invalid_grant", "error_description": "the Mission is revoked",
                    "mission_state": "revoked", "mission_error": "mission_revoked"}


async def test_unexpected_exception_is_a_json_500_without_details(
    client: httpx.AsyncClient,
) -> None:
    with capture_logs() as logs:
        response = await client.get("/_test/boom")
    assert_error(response, 500, "server_error")
    assert SECRET_DETAIL not in response.text
    assert "Traceback" not in response.text and "RuntimeError" not in response.text
    # The operator gets the details, tied to the response by its request id.
    request_id = response.headers["x-request-id"]
    assert request_id in response.json()["error_description"]
    failure = next(entry for entry in logs if entry["event"] == "unhandled_error")
    assert failure["log_level"] == "error" and failure["path"] == "/_test/boom"


@pytest.mark.parametrize("streamed", [False, True])
async def test_oversized_body_is_413_json(
    client: httpx.AsyncClient, app: FastAPI, streamed: bool
) -> None:
    limit = app.state.settings.max_request_body_size
    payload = json.dumps({"invoice_id": "x" * (limit + 1), "amount": 1}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the limit must hold while the body is being read.
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    response = await client.post(
        "/_test/payments",
        content=chunks() if streamed else payload,
        headers={"content-type": "application/json"},
    )
    body = assert_error(response, 413, "request_too_large")
    assert str(limit) in body["error_description"]


async def test_one_log_line_per_request(client: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        response = await client.get("/healthz?token=abc")
    lines = [entry for entry in logs if entry["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "GET"
    assert line["path"] == "/healthz"  # the query string (tokens, codes) is not logged
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert response.headers["x-request-id"]

"""The RFC 8935 push endpoint: status codes through Starlette's TestClient, mounted in
Starlette and FastAPI apps, and over real HTTP under uvicorn with keys from a real JWKS
server (including a key rotation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from missionbound.enforce.signals import MissionStateBook, Outcome, PushEndpoint
from missionbound.protocol.jwks import JwksCache
from tests.e2e_support import free_port
from tests.enforce.support import receiver_for, serving
from tests.protocol.secevents import (
    MISSION_ID,
    ManualClock,
    Transmitter,
    lifecycle_event,
    serving_jwks,
)

T = Transmitter()
SECRET = "Bearer push-secret-1"
SET_HEADERS = {"Content-Type": "application/secevent+jwt"}


@pytest.fixture
def book() -> MissionStateBook:
    return MissionStateBook()


@pytest.fixture
def client(book: MissionStateBook) -> Iterator[TestClient]:
    endpoint = receiver_for(T, book=book).push_endpoint(authorization=SECRET)
    with TestClient(endpoint) as test_client:
        yield test_client


def push(client: TestClient | httpx.Client, token: str | bytes, path: str = "/",
         **headers: str) -> httpx.Response:
    sent = {**SET_HEADERS, "Authorization": SECRET, **headers}
    return client.post(path, content=token, headers=sent)


def test_a_set_taken_is_answered_202_with_no_body(client: TestClient,
                                                  book: MissionStateBook) -> None:
    response = push(client, T.sign(lifecycle_event("active", 2)))
    assert response.status_code == 202 and response.content == b""
    assert book.is_active(MISSION_ID)


def test_duplicates_and_stale_sets_are_answered_202(client: TestClient,
                                                    book: MissionStateBook) -> None:
    token = T.sign(lifecycle_event("revoked", 5))
    assert push(client, token).status_code == 202
    assert push(client, token).status_code == 202  # a redelivery: acknowledged
    assert push(client, T.sign(lifecycle_event("active", 4))).status_code == 202
    held = book.get(MISSION_ID)
    assert held is not None and held.state == "revoked"


@pytest.mark.parametrize(("token", "err"), [
    (T.sign(aud="someone-else"), "invalid_audience"),
    (T.sign(iss="https://evil.example"), "invalid_issuer"),
    (T.sign(header={"kid": "unknown"}), "invalid_key"),
    (Transmitter(kid=T.kid).sign(), "authentication_failed"),
    (T.sign(header={"typ": "JWT"}), "invalid_request"),
    (T.sign(lifecycle_event(origin="https://other.example")), "invalid_request"),
    ("not-a-jwt", "invalid_request"),
])
def test_a_refused_set_is_answered_400_with_the_rfc8935_error(
    client: TestClient, book: MissionStateBook, token: str, err: str
) -> None:
    response = push(client, token)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"err", "description"} and body["err"] == err
    assert len(book) == 0


@pytest.mark.parametrize("authorization", [None, "", "Bearer wrong", "bearer push-secret-1",
                                           SECRET + " "])
def test_the_authorization_header_must_be_exactly_the_configured_one(
    client: TestClient, book: MissionStateBook, authorization: str | None
) -> None:
    headers = dict(SET_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    response = client.post("/", content=T.sign(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["err"] == "authentication_failed"
    assert len(book) == 0


def test_two_authorization_headers_are_refused(client: TestClient) -> None:
    headers = [("Content-Type", "application/secevent+jwt"), ("Authorization", SECRET),
               ("Authorization", SECRET)]
    response = client.post("/", content=T.sign(), headers=headers)
    assert response.status_code == 401


def test_without_configured_authorization_any_caller_may_push(book: MissionStateBook) -> None:
    with TestClient(receiver_for(T, book=book).push_endpoint()) as client:
        response = client.post("/", content=T.sign(), headers=SET_HEADERS)
    assert response.status_code == 202 and len(book) == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_only_post_is_allowed(client: TestClient, method: str) -> None:
    response = client.request(method, "/", headers={"Authorization": SECRET})
    assert response.status_code == 405 and response.headers["allow"] == "POST"


@pytest.mark.parametrize("content_type", [None, "application/jwt", "application/json",
                                          "text/plain"])
def test_the_content_type_must_be_secevent_jwt(client: TestClient, book: MissionStateBook,
                                               content_type: str | None) -> None:
    headers = {"Authorization": SECRET}
    if content_type:
        headers["Content-Type"] = content_type
    response = client.post("/", content=T.sign(), headers=headers)
    assert response.status_code == 400 and response.json()["err"] == "invalid_request"
    assert len(book) == 0


def test_content_type_parameters_and_case_do_not_matter(client: TestClient) -> None:
    response = push(client, T.sign(), **{"Content-Type": "Application/SecEvent+JWT; x=1"})
    assert response.status_code == 202


def test_surrounding_whitespace_is_tolerated(client: TestClient) -> None:
    assert push(client, T.sign() + "\r\n").status_code == 202


def test_oversized_and_non_ascii_bodies_are_refused(client: TestClient) -> None:
    assert push(client, "a" * 70_000).json()["err"] == "invalid_request"
    response = push(client, "é.é.é".encode())
    assert response.status_code == 400 and response.json()["err"] == "invalid_request"


def test_unavailable_keys_are_answered_503_so_the_transmitter_retries(
    book: MissionStateBook,
) -> None:
    with JwksCache(f"http://127.0.0.1:{free_port()}/jwks") as keys, TestClient(
        receiver_for(T, keys=keys, book=book).push_endpoint()
    ) as client:
        response = client.post("/", content=T.sign(), headers=SET_HEADERS)
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert len(book) == 0


def test_a_kid_not_yet_fetchable_is_answered_503_with_the_wait() -> None:
    clock, new = ManualClock(), Transmitter()
    with serving_jwks(T) as jwks, JwksCache(jwks.url, clock=clock) as keys:
        endpoint = receiver_for(T, keys=keys).push_endpoint()
        with TestClient(endpoint) as client:
            assert client.post("/", content=T.sign(), headers=SET_HEADERS).status_code == 202
            clock.advance(10)
            response = client.post("/", content=new.sign(), headers=SET_HEADERS)
            assert response.status_code == 503 and response.headers["retry-after"] == "20"
            jwks.publish(T, new)  # the issuer rotated; the transmitter tries again later
            clock.advance(20)
            assert client.post("/", content=new.sign(), headers=SET_HEADERS).status_code == 202


# -- wired into applications ------------------------------------------------------------


def test_routed_in_a_starlette_app(book: MissionStateBook) -> None:
    endpoint = receiver_for(T, book=book).push_endpoint(authorization=SECRET)
    app = Starlette(routes=[Route("/ssf/events", endpoint)])
    with TestClient(app) as client:
        assert push(client, T.sign(), "/ssf/events").status_code == 202
        assert client.get("/ssf/events").status_code == 405
        assert push(client, T.sign(), "/other").status_code == 404
    assert book.is_active(MISSION_ID)


def test_routed_in_a_fastapi_app(book: MissionStateBook) -> None:
    app = FastAPI()
    endpoint = receiver_for(T, book=book).push_endpoint(authorization=SECRET)
    app.router.routes.append(Route("/ssf/events", endpoint))

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    with TestClient(app) as client:
        assert push(client, T.sign(), "/ssf/events").status_code == 202
        assert push(client, T.sign(aud="x"), "/ssf/events").json()["err"] == "invalid_audience"
        assert client.get("/hello").json() == {"hello": "world"}
        assert "/ssf/events" not in client.get("/openapi.json").json()["paths"]
    assert book.is_active(MISSION_ID)


# -- over real HTTP ---------------------------------------------------------------------


@pytest.mark.parametrize("lifespan", ["on", "off"])
def test_served_alone_by_uvicorn(book: MissionStateBook, lifespan: Literal["on", "off"]) -> None:
    endpoint: PushEndpoint = receiver_for(T, book=book).push_endpoint(authorization=SECRET)
    with serving(endpoint, lifespan=lifespan) as url, httpx.Client(base_url=url) as http:
        assert push(http, T.sign(lifecycle_event("active", 2)), "/anything").status_code == 202
        assert push(http, T.sign(lifecycle_event("suspended", 3)), "/").status_code == 202
        refused = push(http, T.sign(aud="nobody"))
        assert refused.status_code == 400 and refused.json()["err"] == "invalid_audience"
        assert push(http, T.sign(), Authorization="Bearer nope").status_code == 401
        assert http.get("/").status_code == 405
    held = book.get(MISSION_ID)
    assert held is not None and held.state == "suspended"


def test_keys_from_the_issuers_jwks_over_http_with_rotation(book: MissionStateBook) -> None:
    new = Transmitter()
    with serving_jwks(T) as jwks, JwksCache(jwks.url, min_refresh_seconds=0) as keys:
        receiver = receiver_for(T, keys=keys, book=book)
        outcomes: list[Outcome] = []
        book.subscribe(lambda s: outcomes.append(Outcome.APPLIED))
        with serving(receiver.push_endpoint()) as url, httpx.Client(base_url=url) as http:
            sent: Any = push(http, T.sign(lifecycle_event("active", 2)))
            assert sent.status_code == 202
            jwks.publish(new)  # rotation: the old key is gone, the new one signs
            assert push(http, new.sign(lifecycle_event("suspended", 3))).status_code == 202
            assert jwks.requests == 2
            stale = push(http, T.sign(lifecycle_event("active", 4)))
            assert stale.status_code == 400 and stale.json()["err"] == "invalid_key"
    held = book.get(MISSION_ID)
    assert held is not None and (held.state, held.version) == ("suspended", 3)
    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED]

"""RS-B with the issuer's keys fetched over real HTTP (RFC 8414 ``jwks_uri``): a JWK Set served
by uvicorn on 127.0.0.1 (tests/enforce/support.py), read by the guard's own cache or by a
:class:`~missionbound.protocol.jwks.JwksCache` the deployment configured. Key rotation (a
``kid`` published after the first fetch is fetched once the refresh limit lets it; until
then the answer is 503 with the ``Retry-After`` the limit implies) and an issuer whose keys
cannot be had (503, ``Retry-After``, no ``WWW-Authenticate``: no verdict on the token). On
both surfaces."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from joserfc.jwk import Key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from missionbound.enforce.rs import TrustedIssuer
from missionbound.protocol.jwks import DEFAULT_MIN_REFRESH_SECONDS, JwksCache
from tests.e2e_support import free_port
from tests.enforce.rs.rs_support import (
    ISSUER,
    SIGNER,
    SURFACES,
    Harness,
    Signer,
    assert_refused,
    guard_for,
    harness,
    token_claims,
)
from tests.enforce.support import serving


@dataclass
class JwksServer:
    """The issuer's ``jwks_uri``: serves :attr:`keys` (changeable), counts the fetches."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    def publish(self, *signers: Signer) -> None:
        self.keys = [signer.jwk for signer in signers]


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()

    async def jwks(request: Request) -> JSONResponse:
        server.fetches += 1
        return JSONResponse({"keys": server.keys})

    with serving(Starlette(routes=[Route("/jwks", jwks)]), lifespan="off") as base:
        server.url = f"{base}/jwks"
        yield server


@pytest.fixture
def jwks(jwks_server: JwksServer) -> JwksServer:
    jwks_server.publish(SIGNER)
    jwks_server.fetches = 0
    return jwks_server


@pytest.fixture(params=SURFACES)
def surface(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class OffLoopJwksCache(JwksCache):
    """A :class:`JwksCache` that fails the test if it is asked for a key on the event loop
    (where a fetch would stall every request of the process)."""

    def key_for(self, kid: str) -> Key:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return super().key_for(kid)
        raise AssertionError("JwksCache.key_for called on the event loop")


def ok(h: Harness, response: Any, reached: int) -> None:
    assert response.status_code == 200, response.text
    assert len(h.seen) == reached


def test_keys_are_fetched_from_jwks_uri_once_and_cached(surface: str, jwks: JwksServer) -> None:
    guard = guard_for(issuers=[TrustedIssuer(ISSUER, jwks_uri=jwks.url)])
    with harness(surface, guard) as h:
        for count in range(1, 4):
            ok(h, h.send("GET", "/api/invoices", access_token=SIGNER.sign()), count)
    assert jwks.fetches == 1


def test_a_kid_published_after_the_first_fetch_waits_for_the_refresh_limit(
        surface: str, jwks: JwksServer) -> None:
    guard = guard_for(issuers=[TrustedIssuer(ISSUER, jwks_uri=jwks.url)])
    rotated = Signer(kid="as-key-2")
    with harness(surface, guard) as h:
        ok(h, h.send("GET", "/api/invoices", access_token=SIGNER.sign()), 1)
        jwks.publish(SIGNER, rotated)
        response = h.send("GET", "/api/invoices", access_token=rotated.sign())
        assert_refused(h, response, status=503, error="temporarily_unavailable",
                       reason="issuer_keys_unavailable", schemes=None, reached=1)
        # The set may be fetched again within the limit (30 s): that is when to come back.
        retry_after = int(response.headers["retry-after"])
        assert 1 <= retry_after <= DEFAULT_MIN_REFRESH_SECONDS
        assert retry_after >= DEFAULT_MIN_REFRESH_SECONDS - 5
    assert jwks.fetches == 1


def test_a_rotated_key_is_fetched_and_accepted(surface: str, jwks: JwksServer) -> None:
    clock = Clock()
    cache = OffLoopJwksCache(jwks.url, clock=clock)
    guard = guard_for(issuers=[TrustedIssuer(ISSUER, keys=cache)])
    rotated = Signer(kid="as-key-2")
    try:
        with harness(surface, guard) as h:
            ok(h, h.send("GET", "/api/invoices", access_token=SIGNER.sign()), 1)
            assert jwks.fetches == 1
            jwks.publish(SIGNER, rotated)
            clock.now += 10
            early = h.send("GET", "/api/invoices", access_token=rotated.sign())
            assert_refused(h, early, status=503, error="temporarily_unavailable",
                           reason="issuer_keys_unavailable", schemes=None, reached=1)
            assert early.headers["retry-after"] == "20"
            clock.now += 21
            ok(h, h.send("GET", "/api/invoices", access_token=rotated.sign()), 2)
            assert jwks.fetches == 2
            # The old key stays good while the issuer still publishes it...
            ok(h, h.send("GET", "/api/invoices", access_token=SIGNER.sign()), 3)
            # ...and once it is withdrawn, a token it signs is refused at the next fetch.
            jwks.publish(rotated)
            clock.now += 301
            withdrawn = h.send("GET", "/api/invoices",
                               access_token=SIGNER.sign(token_claims()))
            assert_refused(h, withdrawn, status=401, error="invalid_token",
                           reason="unknown_key", reached=3)
            assert jwks.fetches == 3
    finally:
        cache.close()


def test_jwks_unavailable_is_503_with_retry_after_and_no_challenge(surface: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/jwks"  # nothing listens there
    guard = guard_for(issuers=[TrustedIssuer(ISSUER, jwks_uri=closed)])
    with harness(surface, guard) as h:
        for _ in range(2):  # the second is refused from the failed attempt, not a verdict
            response = h.send("GET", "/api/invoices", access_token=SIGNER.sign())
            body = assert_refused(h, response, status=503, error="temporarily_unavailable",
                                  reason="issuer_keys_unavailable", schemes=None)
            assert int(response.headers["retry-after"]) >= 1
            assert "mission_state" not in body


def test_jwks_answering_an_error_is_503(surface: str, jwks_server: JwksServer) -> None:
    broken = jwks_server.url.replace("/jwks", "/no-such-path")
    guard = guard_for(issuers=[TrustedIssuer(ISSUER, jwks_uri=broken)])
    with harness(surface, guard) as h:
        response = h.send("GET", "/api/invoices", access_token=SIGNER.sign())
        assert_refused(h, response, status=503, error="temporarily_unavailable",
                       reason="issuer_keys_unavailable", schemes=None)

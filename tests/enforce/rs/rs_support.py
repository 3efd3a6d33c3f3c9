"""What the RS-B tests of the Resource Server kit share: an Authorization Server's signing key
(real ES256, joserfc), Mission-bound access tokens minted with it, DPoP proofs for the
requests they go with, and one small API protected by the kit on either surface:

- ``fastapi``: a FastAPI app whose routes take ``Depends(require_mission(guard, ...))``, with
  :func:`~missionbound.enforce.rs.install`;
- ``starlette``: a plain Starlette app behind :class:`~missionbound.enforce.rs.MissionMiddleware`
  with a table of :class:`~missionbound.enforce.rs.Protect` routes.

Every route handler records the :class:`~missionbound.enforce.rs.MissionContext` it got, so
a test can assert that a refused request never reached one (:attr:`Harness.seen` stays
empty) and what an allowed one was given. The guard's clock is pinned to :data:`NOW`.
"""

from __future__ import annotations

import json
import re
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import Depends, FastAPI
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from missionbound.enforce.rs import (
    MissionContext,
    MissionGuard,
    MissionMiddleware,
    Protect,
    TrustedIssuer,
    install,
    json_field,
    mission_context,
    money,
    require_mission,
)
from missionbound.enforce.rs.request import Extractor
from missionbound.mission.anchors import authority_hash
from missionbound.protocol.dpop import SUPPORTED_ALGS as DPOP_ALGS
from missionbound.protocol.dpop import access_token_hash
from missionbound.protocol.jwks import StaticKeys
from tests.protocol.proofs import DROP, generate_key, make_proof, public_jwk

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
IAT = int(NOW.timestamp())
ISSUER = "https://as.example.test"
BASE = "http://testserver"
RESOURCE = f"{BASE}/api"
OTHER_RESOURCE = "https://mcp.example.test/mcp"
METADATA_PATH = "/.well-known/oauth-protected-resource/api"
METADATA_URL = BASE + METADATA_PATH
T = "mission_resource_access"
READ = "invoices.read"
WRITE = "journal-entries.write"
REPORTS = "reports.read"
CAP = {"amount": "500.00", "currency": "USD"}
MISSION_ID = "msn_" + "Q" * 32
AGENT = "demo-agent"
SUBAGENT = "demo-subagent"

READ_ENTRY: dict[str, Any] = {"type": T, "resource": RESOURCE, "actions": [READ]}
WRITE_ENTRY: dict[str, Any] = {"type": T, "resource": RESOURCE, "actions": [WRITE],
                               "constraints": {"max_value": CAP}}
DETAILS: list[dict[str, Any]] = [READ_ENTRY, WRITE_ENTRY]

# What the journal-entries route binds: the Mission's max_value to the amount and currency of
# the body, its vendors allow-list to the body's vendor.
WRITE_BIND: dict[str, Extractor] = {
    "max_value": money(json_field("amount"), json_field("currency")),
    "vendors": json_field("vendor"),
}
REPORT_LABELS = ("finance",)
SURFACES = ("fastapi", "starlette")


class Signer:
    """An Authorization Server's ES256 signing key, published under ``kid``."""

    def __init__(self, kid: str = "as-key-1", key: Key | None = None) -> None:
        self.kid = kid
        self.key: Key = key if key is not None else generate_key("ES256")
        self.jwk = {**public_jwk(self.key), "kid": kid, "alg": "ES256", "use": "sig"}

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def sign(self, claims: Mapping[str, Any] | None = None, *,
             header: Mapping[str, Any] | None = None, key: Key | None = None,
             **overrides: Any) -> str:
        """An access token: ``claims`` (default :func:`token_claims`) with ``overrides``
        (:data:`DROP` removes), header ``typ: at+jwt``, ``alg: ES256``, this ``kid``."""
        protected = _merge({"typ": "at+jwt", "alg": "ES256", "kid": self.kid}, header or {})
        body = _merge(dict(claims) if claims is not None else token_claims(), overrides)
        return sign_jws(protected, json.dumps(body), key or self.key)


def sign_jws(protected: dict[str, Any], payload: str, key: Key) -> str:
    registry = JWSRegistry(algorithms=[protected["alg"]], strict_check_header=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # HS256 with a "public" secret
        return jws.serialize_compact(protected, payload, key, registry=registry)


SIGNER = Signer()


def token_claims(details: Sequence[Mapping[str, Any]] | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """The claims of a good Mission-bound access token for :data:`RESOURCE` (RFC 9068 section
    2.2, PROFILE.md section 8), with a fresh ``jti``; ``overrides`` replace claims."""
    entries = [dict(entry) for entry in (DETAILS if details is None else details)]
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": RESOURCE,
        "client_id": AGENT,
        "iat": IAT,
        "exp": IAT + 300,
        "jti": secrets.token_urlsafe(16),
        "authorization_details": entries,
        "mission": {"id": MISSION_ID, "origin": ISSUER,
                    "authority_hash": authority_hash(ISSUER, entries)},
    }
    return _merge(claims, overrides)


def token(details: Sequence[Mapping[str, Any]] | None = None, **overrides: Any) -> str:
    return SIGNER.sign(token_claims(details, **overrides))


def bound_token(key: Key, details: Sequence[Mapping[str, Any]] | None = None,
                **overrides: Any) -> str:
    """A token DPoP-bound to ``key`` (``cnf.jkt``, RFC 9449 section 6.1)."""
    return token(details, cnf={"jkt": key.thumbprint()}, **overrides)


def proof(key: Key, access_token: str | None, *, method: str = "GET",
          path: str = "/api/invoices", **claims: Any) -> str:
    """A DPoP proof of ``key`` for ``method`` on :data:`BASE` + ``path`` at :data:`NOW`,
    carrying the ``ath`` of ``access_token``; ``claims`` override (DROP removes)."""
    defaults: dict[str, Any] = {"htm": method, "htu": BASE + path, "iat": IAT}
    if access_token is not None:
        defaults["ath"] = access_token_hash(access_token)
    return make_proof(key, **{**defaults, **claims})


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {name: value for name, value in merged.items() if value is not DROP}


# -- the protected API ------------------------------------------------------------------------


def guard_for(**options: Any) -> MissionGuard:
    """A guard for :data:`RESOURCE` trusting :data:`ISSUER` with :data:`SIGNER`'s key (a
    static JWK Set unless ``issuers`` is given), its clock at :data:`NOW`."""
    options.setdefault("issuers", [TrustedIssuer(ISSUER, keys=StaticKeys(SIGNER.jwks))])
    options.setdefault("clock", lambda: NOW)
    return MissionGuard(resource=RESOURCE, **options)


@dataclass
class Harness:
    """One protected API on one surface, and what its handlers saw."""

    surface: str
    guard: MissionGuard
    client: TestClient
    seen: list[MissionContext] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)

    def send(self, method: str, path: str, *, access_token: str | None = None,
             scheme: str = "Bearer", dpop: str | None = None, json_body: Any = DROP,
             content: bytes | None = None,
             headers: Sequence[tuple[str, str]] = ()) -> httpx.Response:
        all_headers = list(headers)
        if access_token is not None:
            all_headers.append(("Authorization", f"{scheme} {access_token}"))
        if dpop is not None:
            all_headers.append(("DPoP", dpop))
        if json_body is not DROP:
            content = json.dumps(json_body).encode()
        if content is not None:
            all_headers.append(("Content-Type", "application/json"))
        return self.client.request(method, path, headers=all_headers, content=content)

    def with_dpop(self, key: Key, access_token: str, method: str = "GET",
                  path: str = "/api/invoices", **options: Any) -> httpx.Response:
        """The request with ``access_token`` under the DPoP scheme and a fresh proof."""
        return self.send(method, path, access_token=access_token, scheme="DPoP",
                         dpop=proof(key, access_token, method=method, path=path), **options)


def build_app(surface: str, guard: MissionGuard, seen: list[MissionContext],
              bodies: list[Any]) -> Any:
    """The API: ``GET /api/invoices`` and ``GET /api/invoices/{invoice_id}`` (invoices.read),
    ``POST /api/journal-entries`` (journal-entries.write, :data:`WRITE_BIND`), ``GET
    /api/reports`` (reports.read, labelled :data:`REPORT_LABELS`); on the Starlette surface
    also ``GET /api/undeclared`` (a route the middleware's table does not name) and the public
    ``GET /api/health``."""

    def answer(context: MissionContext, body: Any = None) -> JSONResponse:
        seen.append(context)
        if body is not None:
            bodies.append(body)
        return JSONResponse({"subject": context.subject, "acting_client": context.acting_client,
                             "mission": context.mission.id, "jti": context.token.jti})

    if surface == "fastapi":
        return _fastapi_app(guard, answer)
    if surface == "starlette":
        return _starlette_app(guard, answer)
    raise ValueError(surface)


Answer = Callable[..., JSONResponse]


def _fastapi_app(guard: MissionGuard, answer: Answer) -> FastAPI:
    app = FastAPI()
    install(app, guard)
    # Dependencies as defaults: this module's annotations are strings (PEP 563), which
    # FastAPI cannot resolve for names local to this function.
    read = Depends(require_mission(guard, READ))
    write = Depends(require_mission(guard, WRITE, bind=WRITE_BIND))
    report = Depends(require_mission(guard, REPORTS, labels=REPORT_LABELS))

    @app.get("/api/invoices")
    async def list_invoices(mission: MissionContext = read) -> JSONResponse:
        return answer(mission)

    @app.get("/api/invoices/{invoice_id}")
    async def get_invoice(invoice_id: str, mission: MissionContext = read) -> JSONResponse:
        return answer(mission)

    @app.post("/api/journal-entries")
    async def post_entry(request: Request, mission: MissionContext = write) -> JSONResponse:
        # The guard read the body to check max_value; the route reads it again.
        return answer(mission, await request.json())

    @app.get("/api/reports")
    async def reports(mission: MissionContext = report) -> JSONResponse:
        return answer(mission)

    return app


def _starlette_app(guard: MissionGuard, answer: Answer) -> Starlette:
    async def read(request: Request) -> JSONResponse:
        return answer(mission_context(request))

    async def post_entry(request: Request) -> JSONResponse:
        return answer(mission_context(request), await request.json())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    routes = [
        Route("/api/invoices", read), Route("/api/invoices/{invoice_id}", read),
        Route("/api/journal-entries", post_entry, methods=["POST"]),
        Route("/api/reports", read), Route("/api/undeclared", read),
        Route("/api/health", health),
    ]
    table = [
        Protect("GET", "/api/invoices", READ),
        Protect("GET", "/api/invoices/{invoice_id}", READ),
        Protect("POST", "/api/journal-entries", WRITE, bind=WRITE_BIND),
        Protect("GET", "/api/reports", REPORTS, labels=REPORT_LABELS),
    ]
    return Starlette(routes=routes, middleware=[
        Middleware(MissionMiddleware, guard=guard, routes=table, public=["/api/health"])])


@contextmanager
def harness(surface: str, guard: MissionGuard | None = None) -> Iterator[Harness]:
    guard = guard if guard is not None else guard_for()
    seen: list[MissionContext] = []
    bodies: list[Any] = []
    app = build_app(surface, guard, seen, bodies)
    with TestClient(app, base_url=BASE, raise_server_exceptions=True) as client:
        yield Harness(surface, guard, client, seen, bodies)
    guard.close()


# -- what a refusal looks like on the wire ----------------------------------------------------

_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')


def challenges(response: httpx.Response) -> list[tuple[str, dict[str, str]]]:
    """Each ``WWW-Authenticate`` challenge: its scheme and its parameters."""
    out = []
    for value in response.headers.get_list("www-authenticate"):
        scheme, _, rest = value.partition(" ")
        out.append((scheme, dict(_CHALLENGE_PARAM.findall(rest))))
    return out


def assert_refused(h: Harness, response: httpx.Response, *, status: int, error: str | None,
                   reason: str, schemes: Sequence[str] | None = ("Bearer",),
                   reached: int = 0) -> dict[str, Any]:
    """``response`` is the refusal: ``status``, the JSON body's ``error`` (absent when None)
    and ``reason``, one challenge per scheme of ``schemes`` (None: no WWW-Authenticate) each
    with that ``error``, ``resource_metadata`` and, for DPoP, ``algs``; and the handlers were
    reached ``reached`` times in all (0: the refused request reached none)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body.get("reason") == reason, body
    if error is None:
        assert "error" not in body, body
    else:
        assert body["error"] == error, body
    assert isinstance(body["error_description"], str) and body["error_description"], body
    assert response.headers["cache-control"] == "no-store"
    found = challenges(response)
    if schemes is None:
        assert found == [], found
    else:
        assert [scheme for scheme, _ in found] == list(schemes), found
        for scheme, params in found:
            expected = {"resource_metadata": METADATA_URL}
            if error is not None:
                expected |= {"error": error, "error_description": body["error_description"]}
            if scheme == "DPoP":
                expected["algs"] = " ".join(DPOP_ALGS)
            assert params == expected, (scheme, params)
    assert len(h.seen) == reached, f"a handler ran {len(h.seen)} times, expected {reached}"
    return body

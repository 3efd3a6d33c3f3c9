"""The `rs` suite: what the Resource Server kit (`missionbound.enforce.rs`) adds per request.

Each benchmark drives an ASGI application directly (no HTTP client, no socket: those cost the
same with and without the kit) and times one request at a time with ``perf_counter``:

* ``rs.bare``: a Starlette route answering a small JSON document, no kit;
* ``rs.RS-B middleware`` / ``rs.RS-B fastapi``: the same route behind
  ``MissionMiddleware`` / the ``require_mission`` dependency (and ``rs.bare fastapi``, the
  FastAPI route alone): an ES256 RFC 9068 token with the ``mission`` claim, DPoP-bound, a
  fresh ES256 DPoP proof per request (``ath``, replay cache), the entry for the action, the
  decision logged as JSON (to /dev/null, rendered as ``serve`` renders it);
* ``rs.RS-B middleware (new token each request)``: the same with a token the guard has not
  seen (an agent presents one token for many requests: the guard verifies it once and keeps
  the verdict until ``exp``, missionbound/enforce/rs/token_cache.py; this row is the cost of
  the first request with a token);
* ``rs.RS-C middleware (cached)``: RS-B plus the Mission state from the view's cache (the
  staleness bound is long, so the source, asked once at setup, is not asked again);
* ``rs.RS-B post max_value``: ``POST`` with a JSON body whose ``amount`` is checked against
  the Mission's ``max_value`` (the body read, parsed and replayed to the route).

The issuer's key is given as ``StaticKeys`` (a ``JwksCache`` hit costs the same). Proofs are
signed before timing (client work). The detail line gives the overhead: the kit's p50 minus
the bare route's p50. Budget (issue 6): <= 300 us added at p50 on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from fastapi import Depends, FastAPI
from joserfc import jws
from joserfc.jwk import ECKey, Key
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from suites import Bench

from missionbound.enforce.rs import (
    MissionContext,
    MissionGuard,
    MissionMiddleware,
    MissionStateView,
    ObservedState,
    Protect,
    Tier,
    TrustedIssuer,
    json_field,
    money,
    require_mission,
)
from missionbound.mission.anchors import authority_hash
from missionbound.protocol.dpop import access_token_hash
from missionbound.protocol.jwks import StaticKeys

ISSUER = "https://as.bench.example"
RESOURCE = "http://bench.test/api"
BASE = "http://bench.test"
ENTRIES = [
    {"type": "mission_resource_access", "resource": RESOURCE, "actions": ["invoices.read"]},
    {"type": "mission_resource_access", "resource": RESOURCE,
     "actions": ["journal-entries.write"],
     "constraints": {"max_value": {"amount": "500.00", "currency": "USD"}}},
]
MISSION_ID = "msn_" + "B" * 32
BODY = json.dumps({"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"}).encode()


class _AlwaysActive:
    """The bench's state source: asked once at setup, then the view's cache answers."""

    def observe(self, mission_id: str, *, access_token: str) -> ObservedState:
        return ObservedState(mission_id=mission_id, state="active", version=2,
                             observed_at=time.monotonic())


def _sign(key: Key, header: dict[str, Any], claims: dict[str, Any]) -> str:
    return jws.serialize_compact(header, json.dumps(claims).encode(), key)


def _token(issuer_key: Key, agent_key: Key) -> str:
    now = int(time.time())
    return _sign(issuer_key, {"typ": "at+jwt", "alg": "ES256", "kid": "k1"}, {
        "iss": ISSUER, "sub": "alice", "aud": RESOURCE, "client_id": "demo-agent",
        "iat": now, "exp": now + 3600, "jti": secrets.token_urlsafe(12),
        "authorization_details": ENTRIES,
        "mission": {"id": MISSION_ID, "origin": ISSUER,
                    "authority_hash": authority_hash(ISSUER, ENTRIES)},
        "cnf": {"jkt": agent_key.thumbprint()},
    })


def _proofs(agent_key: Key, token: str, method: str, url: str, count: int) -> list[str]:
    ath = access_token_hash(token)
    jwk = dict(agent_key.as_dict(private=False))
    return [_sign(agent_key, {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk},
                  {"htm": method, "htu": url, "iat": int(time.time()),
                   "jti": secrets.token_urlsafe(12), "ath": ath}) for _ in range(count)]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "server": ("bench.test", 80),
            "client": ("127.0.0.1", 5000), "headers": [(b"host", b"bench.test"), *headers]}


async def _call(app: Any, scope: dict[str, Any], body: bytes) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _time_requests(app: Any, requests: Iterator[tuple[dict[str, Any], bytes]], seconds: float,
                   expect: int) -> list[float]:
    async def run() -> list[float]:
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        warm = 50
        while time.perf_counter() < deadline or len(samples) < 200:
            scope, body = next(requests)
            start = time.perf_counter()
            status = await _call(app, scope, body)
            elapsed = time.perf_counter() - start
            if status != expect:
                raise RuntimeError(f"unexpected status {status} (wanted {expect})")
            if warm:
                warm -= 1
            else:
                samples.append(elapsed)
        return samples

    return asyncio.run(run())


def _result(samples: list[float], baseline: list[float] | None) -> dict[str, Any]:
    samples = sorted(samples)
    p50 = statistics.median(samples)
    out: dict[str, Any] = {
        "p50_us": p50 * 1e6,
        "p95_us": samples[int(len(samples) * 0.95)] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
        "ops_per_s": 1 / p50,
        "requests": len(samples),
    }
    if baseline is not None:
        added = (p50 - statistics.median(baseline)) * 1e6
        out["added_p50_us"] = added
        out["detail"] = f"added by the kit at p50: {added:.0f} us (budget 300 us)"
    return out


async def _invoices(request: Request) -> JSONResponse:
    return JSONResponse({"invoices": [{"id": "inv-acme-1", "amount": "120.00"}]})


async def _journal(request: Request) -> JSONResponse:
    data = await request.json()
    return JSONResponse({"posted": data["invoice_id"]}, status_code=201)


_ROUTES = [Route("/api/invoices", _invoices), Route("/api/journal-entries", _journal,
                                                       methods=["POST"])]
_PROTECT = [Protect("GET", "/api/invoices", "invoices.read"),
            Protect("POST", "/api/journal-entries", "journal-entries.write",
                    bind={"max_value": money(json_field("amount"), json_field("currency"))})]


class _Fixture:
    def __init__(self) -> None:
        self.issuer_key = ECKey.generate_key("P-256", private=True)
        self.agent_key = ECKey.generate_key("P-256", private=True)
        jwk = {**self.issuer_key.as_dict(private=False), "kid": "k1", "alg": "ES256",
               "use": "sig"}
        self.keys = StaticKeys({"keys": [jwk]})
        self.token = _token(self.issuer_key, self.agent_key)

    def guard(self, tier: Tier = Tier.RS_B) -> MissionGuard:
        state = None
        if tier is Tier.RS_C:
            state = MissionStateView(_AlwaysActive(), staleness_seconds=3600)
            state.observe(MISSION_ID, access_token=self.token)
        return MissionGuard(resource=RESOURCE, issuers=[TrustedIssuer(ISSUER, keys=self.keys)],
                            tier=tier, state=state, dpop_required=True)

    def requests(self, method: str, path: str, body: bytes, *, with_token: bool,
                 count: int, new_tokens: bool = False
                 ) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Requests with fresh proofs, signed before timing, in batches of ``count``; with
        ``new_tokens``, each request presents a token never seen before."""
        while True:
            tokens = ([_token(self.issuer_key, self.agent_key) for _ in range(count)]
                      if new_tokens else [self.token] * count)
            proofs = ([_proofs(self.agent_key, token, method, BASE + path, 1)[0]
                       for token in tokens] if with_token else [""] * count)
            for token, proof in zip(tokens, proofs, strict=True):
                headers = [(b"content-type", b"application/json")] if body else []
                if with_token:
                    headers += [(b"authorization", f"DPoP {token}".encode()),
                                (b"dpop", proof.encode())]
                yield _scope(method, path, headers), body


@contextlib.contextmanager
def _quiet_json_logs() -> Iterator[None]:
    """Decisions logged as ``serve`` logs them (JSON lines), to /dev/null."""
    with open(os.devnull, "w") as sink:
        structlog.configure(
            processors=[structlog.contextvars.merge_contextvars,
                        structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(20),
            logger_factory=structlog.WriteLoggerFactory(file=sink),
            cache_logger_on_first_use=False)
        try:
            yield
        finally:
            structlog.reset_defaults()


def _fastapi_apps(guard: MissionGuard) -> tuple[FastAPI, FastAPI]:
    bare, kit = FastAPI(), FastAPI()

    @bare.get("/api/invoices")
    async def bare_invoices() -> dict[str, Any]:
        return {"invoices": [{"id": "inv-acme-1", "amount": "120.00"}]}

    reads = require_mission(guard, "invoices.read")

    # The dependency is built at run time, so it is given as a default value: a string
    # annotation (this module uses postponed annotations) could not name a local.
    @kit.get("/api/invoices")
    async def kit_invoices(
            mission: MissionContext = Depends(reads),  # noqa: B008
    ) -> dict[str, Any]:
        return {"invoices": [{"id": "inv-acme-1", "amount": "120.00"}]}

    return bare, kit


class RsBench(Bench):
    self_timed = True


def _suite_runner() -> Callable[[float], dict[str, Any]]:
    def run(seconds: float) -> dict[str, Any]:
        fixture = _Fixture()
        rows: dict[str, dict[str, Any]] = {}
        with _quiet_json_logs():
            bare = Starlette(routes=_ROUTES)
            get = fixture.requests("GET", "/api/invoices", b"", with_token=False, count=500)
            base = _time_requests(bare, get, seconds, 200)
            rows["bare"] = _result(base, None)
            post_base = _time_requests(
                bare, fixture.requests("POST", "/api/journal-entries", BODY, with_token=False,
                                       count=500), seconds, 201)
            for label, tier in (("RS-B middleware", Tier.RS_B),
                                ("RS-C middleware (cached)", Tier.RS_C)):
                app = MissionMiddleware(Starlette(routes=_ROUTES), guard=fixture.guard(tier),
                                        routes=_PROTECT)
                samples = _time_requests(app, fixture.requests(
                    "GET", "/api/invoices", b"", with_token=True, count=500), seconds, 200)
                rows[label] = _result(samples, base)
            app = MissionMiddleware(Starlette(routes=_ROUTES), guard=fixture.guard(),
                                    routes=_PROTECT)
            rows["RS-B middleware (new token each request)"] = _result(_time_requests(
                app, fixture.requests("GET", "/api/invoices", b"", with_token=True, count=500,
                                      new_tokens=True), seconds, 200), base)
            samples = _time_requests(app, fixture.requests(
                "POST", "/api/journal-entries", BODY, with_token=True, count=500), seconds, 201)
            rows["RS-B post max_value"] = _result(samples, post_base)
            fast_bare, fast_kit = _fastapi_apps(fixture.guard())
            fast_base = _time_requests(fast_bare, fixture.requests(
                "GET", "/api/invoices", b"", with_token=False, count=500), seconds, 200)
            rows["bare fastapi"] = _result(fast_base, None)
            rows["RS-B fastapi"] = _result(_time_requests(fast_kit, fixture.requests(
                "GET", "/api/invoices", b"", with_token=True, count=500), seconds, 200),
                fast_base)
        summary = dict(rows["RS-B middleware"])
        summary["detail"] = "; ".join(
            f"{name}: p50 {row['p50_us']:.0f} us"
            + (f" (+{row['added_p50_us']:.0f})" if "added_p50_us" in row else "")
            for name, row in rows.items()) + " [budget: +300 us]"
        summary["rows"] = rows
        return summary

    return run


def rs_benches() -> list[Bench]:
    return [RsBench("rs.overhead (bare, RS-B, RS-C, post, fastapi)",
                    lambda: contextlib.nullcontext(_suite_runner()),
                    note="per-request p50 of each app; detail: added over the bare route")]


__all__ = ["rs_benches"]

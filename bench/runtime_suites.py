"""The `runtime` suite: the PDP decision in-process (issue 7, budget p50 <= 60 us on 2 cores).

* ``runtime.decide read``: ``decide()`` for ``invoices.read`` on the demo Mission (Cedar
  match, actor, state, credential; no parameters);
* ``runtime.decide wire transfer``: ``decide()`` for ``execute_wire_transfer`` with its four
  parameters (the digest recomputed over them, max_value, vendors, metering charges);
* ``runtime.cedar raw``: ``cedarpy.is_authorized`` alone on the same PolicySet and Entities;
* ``runtime.permit mint``: sign one ``mission-permit+jwt`` (ES256) for the wire transfer;
* ``runtime.permit verify``: a tool runtime's checks of that permit without I/O (signature,
  claims, binding, the digest recomputed over the arguments: ``verify_permit_jwt``); the
  database single use adds one transaction (the ``store`` suite measures those).

The request is read from its AuthZEN body once, before timing (the HTTP layer's work); the
compiled policy is loaded once (the PolicyCache's work). Detail line: decide / raw Cedar.
Run alone: ``.venv/bin/python bench/run.py runtime`` (once registered) or
``.venv/bin/python bench/runtime_suites.py``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cedarpy  # noqa: E402
from suites import Bench  # noqa: E402

from missionbound.runtime.compiler import compile_policy, load_policy  # noqa: E402
from missionbound.runtime.decision import MissionView, StateView, decide  # noqa: E402
from missionbound.runtime.digests import parameter_digest  # noqa: E402
from missionbound.runtime.request import request_from_authzen  # noqa: E402
from tests.runtime.table_support import (  # noqa: E402
    ERP,
    MCP,
    NOW,
    authzen_body,
    demo_catalog,
    make_mission,
)

WIRE = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}


def _setup() -> dict[str, Callable[[], object]]:
    catalog = demo_catalog()
    record = make_mission()
    policy = load_policy(compile_policy(record, catalog))
    mission = MissionView.of(record)
    state = StateView("active", record.version, NOW + timedelta(seconds=5))
    read = request_from_authzen(authzen_body(record, action="invoices.read", audience=ERP))
    body = authzen_body(record, action="execute_wire_transfer", audience=MCP, parameters=WIRE)
    body["action"]["properties"]["parameter_digest"] = parameter_digest(WIRE)
    wire = request_from_authzen(body)
    for request in (read, wire):
        assert decide(policy, mission, state, request, catalog=catalog, now=NOW).allowed
    cedar_request: dict[str, Any] = {
        "principal": {"type": "Mission", "id": record.mission_id},
        "action": {"type": "Action", "id": "invoices.read"},
        "resource": {"type": "Audience", "id": ERP}}
    return {
        "runtime.decide read": lambda: decide(policy, mission, state, read, catalog=catalog,
                                              now=NOW),
        "runtime.decide wire transfer": lambda: decide(policy, mission, state, wire,
                                                       catalog=catalog, now=NOW),
        "runtime.cedar raw": lambda: cedarpy.is_authorized(cedar_request, policy.policy_set,
                                                           policy.entities),
    }


class RuntimeBench(Bench):
    self_timed = True


def _percentiles(op: Callable[[], object], seconds: float) -> dict[str, float]:
    for _ in range(2000):
        op()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        op()
        samples.append(time.perf_counter() - start)
    samples.sort()
    p50 = statistics.median(samples)
    return {"p50_us": p50 * 1e6, "p95_us": samples[int(len(samples) * 0.95)] * 1e6,
            "p99_us": samples[int(len(samples) * 0.99)] * 1e6, "ops_per_s": 1 / p50}


def _runner() -> Callable[[float], dict[str, Any]]:
    def run(seconds: float) -> dict[str, Any]:
        ops = _setup()
        results = {name: _percentiles(op, seconds / 3) for name, op in ops.items()}
        raw = results["runtime.cedar raw"]["p50_us"]
        detail = "; ".join(
            f"{name.removeprefix('runtime.')} p50 {r['p50_us']:.1f} us p99 {r['p99_us']:.1f} us"
            + (f" ({r['p50_us'] / raw:.2f}x raw Cedar)" if name != "runtime.cedar raw" else "")
            for name, r in results.items())
        worst = results["runtime.decide wire transfer"]
        return {**worst, "detail": detail, "parts": results}
    return run


def _permit_ops() -> dict[str, Callable[[], object]]:
    from joserfc.jwk import ECKey

    from missionbound.issuer.keys import SignerKey, generate_signing_key
    from missionbound.protocol.jwks import StaticKeys
    from missionbound.protocol.permits import verify_permit_jwt
    from missionbound.runtime.permits import mint_permit

    generated = generate_signing_key()
    signer = SignerKey(kid=generated.kid, alg=generated.alg,
                       key=ECKey.import_key(generated.private_jwk))
    keys = StaticKeys({"keys": [generated.public_jwk]})
    presenter = ECKey.generate_key("P-256", private=True).thumbprint()
    record = make_mission()

    def mint() -> str:
        return mint_permit(
            signer=signer, issuer="https://as.example", audience=MCP,
            evaluation_id="dec_bench", mission={"id": record.mission_id,
                                                "origin": record.origin,
                                                "authority_hash": record.authority_hash},
            policy_version="sha-256:" + "P" * 43, tool_id="execute_wire_transfer",
            action="execute_wire_transfer", parameter_digest=parameter_digest(WIRE),
            subject="alice", client_id="demo-agent", act=None, jkt=presenter, use_limit=1,
            now=NOW, valid_until=NOW + timedelta(seconds=60))

    token = mint()

    def verify() -> object:
        return verify_permit_jwt(token, key_for=keys, issuer="https://as.example",
                                 audience=MCP, tool_id="execute_wire_transfer", arguments=WIRE,
                                 presenter_jkt=presenter, now=NOW + timedelta(seconds=1))

    return {"runtime.permit mint": mint, "runtime.permit verify": verify}


def _permit_bench(name: str) -> Bench:
    return Bench(name, lambda: contextlib.nullcontext(_permit_ops()[name]), batch=100)


def runtime_benches() -> list[Bench]:
    return [RuntimeBench("runtime.decide (read, wire transfer, raw cedar)",
                         lambda: contextlib.nullcontext(_runner()),
                         note="headline: decide wire transfer; detail: every part"),
            _permit_bench("runtime.permit mint"), _permit_bench("runtime.permit verify")]


__all__ = ["runtime_benches"]

if __name__ == "__main__":
    outcome = _runner()(6.0)
    print(outcome["detail"])

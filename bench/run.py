"""missionbound benchmarks: `make bench` runs them all, prints a table and writes
bench/results/<name>.json. Speed is measured here, never asserted by timed tests.

Each benchmark is a function returning a callable to time; the harness warms it up, times
repeated batches and reports p50/p95 per operation and operations per second. A benchmark
marked `self_timed` (the `issuance` suite) times itself instead and adds p99.
Usage: python bench/run.py [--quick] [name-substring ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suites import SUITES, Bench

RESULTS = Path(__file__).resolve().parent / "results"


def measure(op: Callable[[], object], *, seconds: float, batch: int) -> dict[str, float]:
    for _ in range(max(1, batch // 10)):
        op()  # warm caches and lazy imports
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 5:
        start = time.perf_counter()
        for _ in range(batch):
            op()
        samples.append((time.perf_counter() - start) / batch)
    samples.sort()
    return {
        "p50_us": statistics.median(samples) * 1e6,
        "p95_us": samples[int(len(samples) * 0.95) - 1 if len(samples) > 1 else 0] * 1e6,
        "ops_per_s": 1 / statistics.median(samples),
        "batches": len(samples),
        "batch": batch,
    }


def issuance_suite() -> list[Bench]:
    # Imported on use, like the store suite: it needs the web stack and a database driver.
    from issuance_suites import issuance_benches

    return issuance_benches()


def replica_suite() -> list[Bench]:
    # PostgreSQL only: cross-replica revocation visibility (docs/scale-out.md).
    from replica_suites import replica_benches

    return replica_benches()


def cross_domain_suite() -> list[Bench]:
    # Token exchange at the origin: ID-JAG issuance and delegation (docs/cross-domain.md).
    from cross_domain_suites import cross_domain_benches

    return cross_domain_benches()


def rs_suite() -> list[Bench]:
    # What the Resource Server kit adds per request (docs/resource-servers.md).
    from rs_suites import rs_benches

    return rs_benches()


def runtime_suite() -> list[Bench]:
    # The PDP's pure decision next to raw Cedar on the same artifact (docs/runtime.md).
    from runtime_suites import runtime_benches

    return runtime_benches()


def evidence_suite() -> list[Bench]:
    # What a runtime evidence record costs: signing and writing (docs/evidence.md).
    from evidence_suites import evidence_benches

    return evidence_benches()


def authzen_suite() -> list[Bench]:
    # AuthZEN evaluations over real HTTP on a resource-policy tenant (docs/authzen.md).
    from authzen_suites import authzen_benches

    return authzen_benches()


def pdp_suite() -> list[Bench]:
    # The Mission PDP: in-process evaluate and AuthZEN HTTP evaluations (docs/runtime.md).
    from pdp_suites import pdp_benches

    return pdp_benches()


def gateway_suite() -> list[Bench]:
    # What the Mission-aware MCP gateway adds to a tools/call (docs/mcp.md).
    from gateway_suites import gateway_benches

    return gateway_benches()


ALL_SUITES = {**SUITES, "issuance": issuance_suite, "replicas": replica_suite,
              "cross-domain": cross_domain_suite, "rs": rs_suite,
              "runtime": runtime_suite, "evidence": evidence_suite, "authzen": authzen_suite,
              "pdp": pdp_suite, "gateway": gateway_suite}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke check)")
    parser.add_argument("only", nargs="*", help="run benchmarks whose name contains these")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else 2.0
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for suite_name, suite in ALL_SUITES.items():
        benches = [b for b in suite() if not args.only or any(o in b.name for o in args.only)]
        for bench in benches:
            with bench.setup() as op:
                if getattr(bench, "self_timed", False):
                    # It times itself: per-request percentiles, concurrent clients.
                    result = op(seconds)
                else:
                    result = measure(op, seconds=seconds, batch=bench.batch)
            result.update(name=bench.name, suite=suite_name, note=bench.note)
            rows.append(result)
            print(f"{bench.name:<44} p50 {result['p50_us']:>10.1f} us   "
                  f"p95 {result['p95_us']:>10.1f} us   {result['ops_per_s']:>10.0f} ops/s"
                  + (f"   p99 {result['p99_us']:>10.1f} us" if "p99_us" in result else ""),
                  flush=True)
            if result.get("detail"):
                print(f"    {result['detail']}", flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps({
        "at": stamp, "python": platform.python_version(), "machine": platform.machine(),
        "quick": args.quick, "results": rows}, indent=2))
    print(f"\nwrote {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

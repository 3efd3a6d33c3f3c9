"""The `authzen` suite: AuthZEN evaluations per second over real HTTP (DESIGN.md "Fast": the
budget for the Mission endpoint is >= 1,500 req/s on 2 cores; this suite measures the same
path with a resource-policy tenant, which needs no Mission).

How, reusing the `issuance` suite's machinery (bench/issuance_suites.py):

* ``python -m missionbound serve --pdp-tenant todo=examples/authzen-todo
  --pdp-tenant search=examples/authzen-search`` on a free 127.0.0.1 port, one process as
  ``serve`` runs it, over a fresh SQLite file (tenant decisions read no database).
* N client threads (1, 2, 4) in this process, each on its own keep-alive ``http.client``
  connection, posting the interop table's todo requests round robin with HTTP Basic as
  ``demo-rs``. Every answer is checked against the table's expected decision: a wrong
  decision or an unexpected status stops the benchmark (errors never count as throughput).
* Also a 10-item ``evaluations`` batch and a resource search (20 candidates), x2.

Run alone: ``.venv/bin/python bench/authzen_suites.py [--seconds S]``; or from bench/run.py
once it lists the suite (``"authzen": authzen_suite``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from issuance_suites import (
    BenchFailure,
    Server,
    TimedBench,
    Worker,
    drive,
    served,
)

ROOT = Path(__file__).resolve().parents[1]
TENANTS = {"todo": ROOT / "examples" / "authzen-todo",
           "search": ROOT / "examples" / "authzen-search"}
TABLES = ROOT / "tests" / "runtime" / "authzen_interop"
RS_BASIC = "Basic " + base64.b64encode(b"demo-rs:demo-rs-secret").decode()
HEADERS = {"Authorization": RS_BASIC, "Content-Type": "application/json"}
CLIENT_THREADS = (1, 2, 4)
BATCH_ITEMS = 10


def served_with_tenants() -> contextlib.AbstractContextManager[Server]:
    """``missionbound serve`` with the example tenants, on SQLite (tenant decisions read no
    database); stopped before the database is removed."""
    tenants = [arg for name, tenant in TENANTS.items()
               for arg in ("--pdp-tenant", f"{name}={tenant}")]
    return served("sqlite", *tenants)


def _todo_cases() -> list[tuple[bytes, Any]]:
    table = json.loads((TABLES / "todo" / "decisions-1_0-01.json").read_text())
    return [(json.dumps(case["request"]).encode(), case["expected"])
            for case in table["evaluation"]]


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    connection.request("POST", path, body, HEADERS)
    response = connection.getresponse()
    return response.status, response.read()


def evaluation_worker() -> Worker:
    cases = itertools.cycle(_todo_cases())

    def send(connection: http.client.HTTPConnection) -> None:
        body, expected = next(cases)
        status, answer = _post(connection, "/pdp/todo/access/v1/evaluation", body)
        if status != 200 or json.loads(answer) != {"decision": expected}:
            raise BenchFailure(f"evaluation: HTTP {status}: {answer[:300]!r}")

    return Worker(send)


def batch_worker() -> Worker:
    cases = _todo_cases()[:BATCH_ITEMS]
    body = json.dumps({"evaluations": [json.loads(request) for request, _ in cases]}).encode()
    expected = {"evaluations": [{"decision": decision} for _, decision in cases]}

    def send(connection: http.client.HTTPConnection) -> None:
        status, answer = _post(connection, "/pdp/todo/access/v1/evaluations", body)
        if status != 200 or json.loads(answer) != expected:
            raise BenchFailure(f"evaluations: HTTP {status}: {answer[:300]!r}")

    return Worker(send)


def search_worker() -> Worker:
    body = json.dumps({"subject": {"type": "user", "id": "bob"}, "action": {"name": "view"},
                       "resource": {"type": "record"}}).encode()

    def send(connection: http.client.HTTPConnection) -> None:
        status, answer = _post(connection, "/pdp/search/access/v1/search/resource", body)
        if status != 200 or not json.loads(answer)["results"]:
            raise BenchFailure(f"search: HTTP {status}: {answer[:300]!r}")

    return Worker(send)


def http_bench(make_worker: Callable[[], Worker], threads: int) -> Callable[
        [], contextlib.AbstractContextManager[Callable[[float], dict[str, Any]]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with served_with_tenants() as server:
            drive(server, [make_worker() for _ in range(threads)], 0.3)  # warm up

            def run(seconds: float) -> dict[str, Any]:
                return drive(server, [make_worker() for _ in range(threads)], seconds)

            yield run

    return setup


def authzen_benches() -> list[TimedBench]:
    benches = [TimedBench(f"authzen.tenant evaluation uvicorn x{threads}",
                          http_bench(evaluation_worker, threads),
                          note="POST /pdp/todo/access/v1/evaluation, interop todo cases")
               for threads in CLIENT_THREADS]
    benches.append(TimedBench(f"authzen.tenant evaluations[{BATCH_ITEMS}] uvicorn x2",
                              http_bench(batch_worker, 2),
                              note="one batch of 10 per request"))
    benches.append(TimedBench("authzen.tenant search/resource uvicorn x2",
                              http_bench(search_worker, 2),
                              note="20 candidate records per search"))
    return benches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    for bench in authzen_benches():
        with bench.setup() as run:
            result = run(args.seconds)
        print(f"{bench.name:<44} p50 {result['p50_us']:>8.0f} us   p99 "
              f"{result['p99_us']:>8.0f} us   {result['ops_per_s']:>8.0f} req/s   "
              f"{result.get('detail', '')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

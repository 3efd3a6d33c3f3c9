"""The `evidence` suite: what a runtime evidence record costs (PROFILE.md section 12,
"Evidence"; docs/evidence.md). The AuthZEN endpoint's budget is 1,500 decisions/s on 2 cores
and every consequential decision writes one record in its transaction, so the record's
share of a decision is the number that matters.

- `evidence.sign`: build and sign one Decision Evidence record (JCS + ES256 JWS + the link
  digest), no database: the CPU floor of a record.
- `evidence.<db>.decision`: one write transaction holding one `record_decision` (lock the
  chain head, INSERT the record, advance the head), round robin over 64 Missions.
- `evidence.<db>.decision hot mission`: the same, every record on one Mission's chain.
- `evidence.<db>.decision batched`: 25 records per transaction, timed per record: what a
  record costs without its own commit (its CPU and its three statements).
- `evidence.<db>.write only`: a write transaction holding one small INSERT (a single-use
  id) instead of the record: the commit (fsync) every durable decision pays anyway;
  `decision` minus this is what evidence adds.
- `evidence.verify`: verify one stored record offline (signature, byte equality, link).

Databases as in the `store` suite: a temporary SQLite file, and a fresh PostgreSQL schema
when one answers (skipped, saying why, otherwise). Signing keys are loaded once, as
`MissionIssuer.signer` caches them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from store_suites import (
    OP_NOW,
    fresh_store,
    mission_template,
    postgres_problem,
    seed_active_missions,
)
from suites import ISSUER, Bench

from missionbound.issuer.keys import SignerKey, ensure_signing_key, public_jwks, signing_key
from missionbound.mission.catalog import ActionClass
from missionbound.mission.record import MissionRecord
from missionbound.runtime.decision import Charge, Decision
from missionbound.runtime.digests import parameter_digest
from missionbound.runtime.evidence import EvidenceLog
from missionbound.runtime.evidence_format import ChainVerifier, RecordKind, keys_from, sign_record
from missionbound.runtime.request import DecisionRequest
from missionbound.store import Store, missions, single_use

MCP = f"{ISSUER}/demo/mcp"
ARGUMENTS = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}
MISSIONS = 64


def _request(mission: MissionRecord) -> DecisionRequest:
    return DecisionRequest(
        subject_type="user", subject_id="alice", subject_iss=ISSUER, audience=MCP,
        resource_type="invoice", resource_id="inv-acme-1", resource_properties={"audience": MCP},
        action_name="execute_wire_transfer", parameters=ARGUMENTS,
        parameter_digest=parameter_digest(ARGUMENTS), idempotency_key=None,
        mission_id=mission.mission_id, mission_issuer=mission.origin,
        authority_hash=mission.authority_hash or "", client_id="demo-agent",
        act=({"sub": "demo-agent"},))


DECISION = Decision(
    allowed=True, reason=None, action_class=ActionClass.IRREVERSIBLE, class_source="default",
    entry_index=0, entry_digest="sha-256:dPCNLHsZuzPXuhco_s21VTvDI4cagI_LMhPQsqfNJKQ",
    contributing_constraints=("max_value", "vendors"),
    parameter_digest=parameter_digest(ARGUMENTS), parameter_bound=True,
    charges=(Charge("max_calls", "sha-256:entry", 10, 1),),
    valid_until=OP_NOW + timedelta(seconds=60), use_limit=1)


@contextlib.contextmanager
def _with_missions(backend: str, count: int) -> Iterator[tuple[Store, SignerKey,
                                                                list[MissionRecord]]]:
    with fresh_store(backend) as store:
        ids = seed_active_missions(store, mission_template(), count)
        ensure_signing_key(store, OP_NOW)
        key = signing_key(store, OP_NOW)
        with store.read() as session, session.begin():
            records = [missions.get(session, mission_id) for mission_id in ids]
        yield store, key, [record for record in records if record is not None]


def _decision_setup(backend: str, count: int
                    ) -> Callable[[], contextlib.AbstractContextManager[Callable[[], object]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        with _with_missions(backend, count) as (store, key, records):
            log = EvidenceLog(issuer_url=ISSUER, signer=lambda: key)
            pairs = itertools.cycle([(record, _request(record)) for record in records])
            ids = itertools.count()

            def op() -> object:
                mission, request = next(pairs)
                with store.begin() as session:
                    return log.record_decision(session, mission=mission, request=request,
                                               decision=DECISION, now=OP_NOW,
                                               evaluation_id=f"dec_{next(ids)}")
            yield op

    return setup


def _batched_setup(backend: str, per_transaction: int = 25
                   ) -> Callable[[], contextlib.AbstractContextManager[Callable[[], object]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        with _with_missions(backend, MISSIONS) as (store, key, records):
            log = EvidenceLog(issuer_url=ISSUER, signer=lambda: key)
            pairs = itertools.cycle([(record, _request(record)) for record in records])
            ids = itertools.count()
            session = store.session()
            session.begin()

            def op() -> object:
                number = next(ids)
                if number and number % per_transaction == 0:
                    session.commit()
                    session.begin()
                mission, request = next(pairs)
                return log.record_decision(session, mission=mission, request=request,
                                           decision=DECISION, now=OP_NOW,
                                           evaluation_id=f"dec_{number}")
            try:
                yield op
            finally:
                session.commit()
                session.close()

    return setup


def _write_only(backend: str
                ) -> Callable[[], contextlib.AbstractContextManager[Callable[[], object]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        with _with_missions(backend, 1) as (store, _key, _records):
            ids = itertools.count()

            def op() -> object:
                with store.begin() as session:
                    return single_use.consume_once(session, "bench", f"v{next(ids)}",
                                                   OP_NOW + timedelta(hours=1))
            yield op

    return setup


def _sign_setup() -> contextlib.AbstractContextManager[Callable[[], object]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        with _with_missions("sqlite", 1) as (_store, key, [mission]):
            content = _unsigned_record(mission)

            def op() -> object:
                return sign_record(content, RecordKind.DECISION, key)
            yield op

    return setup()


def _verify_setup() -> contextlib.AbstractContextManager[Callable[[], object]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        with _with_missions("sqlite", 1) as (store, key, [mission]):
            log = EvidenceLog(issuer_url=ISSUER, signer=lambda: key)
            with store.begin() as session:
                record = log.record_decision(session, mission=mission, request=_request(mission),
                                             decision=DECISION, evaluation_id="dec_v", now=OP_NOW)
            keys = keys_from(public_jwks(store, OP_NOW))

            def op() -> object:
                return ChainVerifier(keys).check(record)
            yield op

    return setup()


def _unsigned_record(mission: MissionRecord) -> dict[str, Any]:
    # What record_decision signs, built once (the builder's own cost is in `decision`).
    return {
        "evidence_id": "evd_bench", "evaluation_id": "dec_bench",
        "mission": {"id": mission.mission_id, "issuer": mission.origin,
                    "origin": mission.origin, "authority_hash": mission.authority_hash,
                    "policy_version": mission.policy_version},
        "action": {"name": "execute_wire_transfer"}, "audience": MCP,
        "decision": "permit", "parameter_digest": DECISION.parameter_digest,
        "emitter": {"id": ISSUER, "role": "pdp"}, "sequence": 42, "prev_hash": None,
    }


def evidence_benches() -> list[Bench]:
    benches = [
        Bench("evidence.sign", _sign_setup, batch=200),
        Bench("evidence.verify", _verify_setup, batch=200),
    ]
    backends = ["sqlite"]
    problem = postgres_problem()
    if problem is None:
        backends.append("postgresql")
    else:
        print(f"evidence: PostgreSQL benchmarks skipped: {problem}", flush=True)
    for backend in backends:
        benches += [
            Bench(f"evidence.{backend}.decision", _decision_setup(backend, MISSIONS), batch=50),
            Bench(f"evidence.{backend}.decision hot mission", _decision_setup(backend, 1),
                  batch=50),
            Bench(f"evidence.{backend}.decision batched", _batched_setup(backend), batch=50),
            Bench(f"evidence.{backend}.write only", _write_only(backend), batch=50),
        ]
    return benches

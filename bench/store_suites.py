"""The `store` suite: the storage layer's hot paths, each in its own transaction, on SQLite
(a temporary file) and on PostgreSQL (a fresh schema on MISSIONBOUND_TEST_DATABASE_URL, or
the local default). The PostgreSQL benchmarks are skipped, saying why, when no server answers.

Every benchmark gets a fresh database brought to the newest migration, seeded with the demo
Mission (built by the real core: intake, derivation, consent disclosure, anchors), and
removed afterwards. Engines are made by `create_engine_for`, configured as `serve` has them
(SQLite WAL + synchronous=FULL + BEGIN IMMEDIATE; PostgreSQL with pool_pre_ping). Each timed
operation is bounded: it touches a fixed number of rows, and the one that reads a growing
history (a lifecycle round trip) spreads its Missions so that no history gets long.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from suites import ISSUER, NOW, Bench, demo_catalog

from missionbound import audit
from missionbound.mission.anchors import Anchors, authority_hash, compute_anchors, proposal_hash
from missionbound.mission.consent import Party, build_consent_disclosure
from missionbound.mission.derivation import ClientCeiling, derive_authority
from missionbound.mission.intent import validate_intent
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord, Principal, new_mission_id
from missionbound.store import Store, missions, single_use
from missionbound.store.engine import create_engine_for
from missionbound.store.gate import gate_derivation
from missionbound.store.lifecycle import transition
from missionbound.store.migrate import upgrade

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CREATED_AT = NOW
OP_NOW = NOW + timedelta(minutes=5)  # approved at +1 min; well before the demo expiry
# Large enough never to be reached by a run, so every gate takes the capped UPDATE path.
MAX_DERIVATIONS = 1_000_000
# Lifecycle round trips go round-robin over this many Missions: each transition reads the
# Mission's whole history, which must stay short (<= ~2 + 2 * ops / POOL entries).
LIFECYCLE_POOL = 256
SEED_CHUNK = 64

STORE_INTENT = {
    "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per invoice, "
    "by Friday.",
    "resources": [f"{ISSUER}/demo/erp", f"{ISSUER}/demo/mcp"],
    "constraints": ["only Q3 invoices", "approved vendors only"],
    "purpose": "https://missionbound.dev/purposes/accounts-payable",
    "mission_expiry": "2026-11-28T17:00:00Z",
    "context": {
        "max_derivations": MAX_DERIVATIONS,
        "max_value": {"amount": "500.00", "currency": "USD"},
        "vendors": ["acme"],
    },
}
ALICE = Principal(iss=ISSUER, sub="alice")
BOB = Principal(iss=ISSUER, sub="bob")
ADMIN = {Role.ADMIN}
ADMIN_ACTOR = {"role": "admin", "iss": ISSUER, "sub": "bob"}


# -- databases ------------------------------------------------------------------------------


def postgres_url() -> str:
    return os.environ.get("MISSIONBOUND_TEST_DATABASE_URL", DEFAULT_POSTGRES_URL)


def postgres_problem() -> str | None:
    """Why the PostgreSQL benchmarks cannot run, or ``None`` when a server answers."""
    url = postgres_url()
    try:
        shown = make_url(url).render_as_string(hide_password=True)
        engine = create_engine_for(url, connect_args={"connect_timeout": 3}, pool_pre_ping=False)
    except Exception as exc:  # a malformed URL: say so, run the rest
        return f"unusable MISSIONBOUND_TEST_DATABASE_URL: {exc}"
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no usable PostgreSQL at {shown} ({reason}); set MISSIONBOUND_TEST_DATABASE_URL"
    finally:
        engine.dispose()
    return None


@contextlib.contextmanager
def fresh_database_url(backend: str) -> Iterator[str]:
    """An empty database for one benchmark, removed afterwards: a new SQLite file, or a new
    PostgreSQL schema selected through libpq's ``options=-csearch_path=...``."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="mb-bench-") as folder:
            yield f"sqlite:///{Path(folder) / 'missionbound.db'}"
        return
    schema = "mb_bench_" + secrets.token_hex(6)
    admin = create_engine_for(postgres_url(), pool_size=1, max_overflow=0)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(postgres_url()).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def fresh_store(backend: str) -> Iterator[Store]:
    with fresh_database_url(backend) as url:
        upgrade(url)
        store = Store(create_engine_for(url))
        try:
            yield store
        finally:
            store.dispose()


# -- the demo Mission -----------------------------------------------------------------------


@dataclass(frozen=True)
class MissionTemplate:
    """What PAR and consent would produce for the demo intent; only ids differ per Mission."""

    intent: dict[str, Any]
    requested: list[Any]
    authority_set: list[Any]
    narrowing_decisions: list[Any]
    policy_version: str
    mission_expiry: datetime
    disclosure: dict[str, Any]
    anchors: Anchors

    def record(self) -> MissionRecord:
        return MissionRecord(
            mission_id=new_mission_id(),
            origin=ISSUER,
            state=State.PENDING_APPROVAL,
            version=1,
            mission_intent=self.intent,
            authorization_details_requested=self.requested,
            authority_set=self.authority_set,
            narrowing_decisions=self.narrowing_decisions,
            subject=ALICE,
            client_id="demo-agent",
            policy_version=self.policy_version,
            created_at=CREATED_AT,
            mission_expiry=self.mission_expiry,
        )


def mission_template() -> MissionTemplate:
    catalog = demo_catalog()
    intent = validate_intent(json.dumps(STORE_INTENT), catalog=catalog, now=CREATED_AT)
    client = ClientCeiling("demo-agent", {f"{ISSUER}/demo/erp": None, f"{ISSUER}/demo/mcp": None})
    derivation = derive_authority(
        intent, catalog=catalog, client=client, now=CREATED_AT, max_lifetime=timedelta(days=30)
    )
    requested = derivation.authorization_details_requested
    disclosure = build_consent_disclosure(
        disclosure_id="cd_bench",
        intent=intent,
        authority_set=derivation.authority_set,
        narrowing_decisions=derivation.narrowing_decisions,
        mission_expiry=derivation.mission_expiry,
        subject=Party(ALICE, "Alice Example"),
        approver=Party(BOB, "Bob Manager"),
        client_id="demo-agent",
        client_name="Demo reconciliation agent",
        catalog=catalog,
        proposal_hash=proposal_hash(ISSUER, intent.value, requested),
        authority_hash=authority_hash(ISSUER, derivation.authority_set),
        rendered_at=CREATED_AT,
    )
    anchors = compute_anchors(
        ISSUER,
        mission_intent=intent.value,
        authorization_details_requested=requested,
        consent_disclosure=disclosure,
        authority_set=derivation.authority_set,
    )
    return MissionTemplate(
        intent=intent.value,
        requested=list(requested),
        authority_set=list(derivation.authority_set),
        narrowing_decisions=list(derivation.narrowing_decisions),
        policy_version=derivation.policy_version,
        mission_expiry=derivation.mission_expiry,
        disclosure=disclosure,
        anchors=anchors,
    )


def seed_active_missions(store: Store, template: MissionTemplate, count: int) -> list[str]:
    """``count`` approved (active) Missions, as PAR + consent leave them (untimed)."""
    ids: list[str] = []
    while len(ids) < count:
        with store.begin() as session:
            for _ in range(min(SEED_CHUNK, count - len(ids))):
                record = missions.create_pending(
                    session,
                    template.record(),
                    {"role": "client", "client_id": "demo-agent"},
                    CREATED_AT,
                )
                missions.approve(
                    session,
                    record.mission_id,
                    approver=BOB,
                    approval_event_id="ape_" + secrets.token_urlsafe(12),
                    anchors=template.anchors,
                    consent_disclosure=template.disclosure,
                    authority_set=template.authority_set,
                    policy_version=template.policy_version,
                    now=CREATED_AT + timedelta(minutes=1),
                )
                ids.append(record.mission_id)
    return ids


# -- the operations -------------------------------------------------------------------------

Setup = Callable[[], contextlib.AbstractContextManager[Callable[[], object]]]


def _seeded(
    backend: str, missions_needed: int, make_op: Callable[[Store, list[str]], Callable[[], object]]
) -> Setup:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        template = mission_template()
        with fresh_store(backend) as store:
            ids = seed_active_missions(store, template, missions_needed)
            yield make_op(store, ids)

    return setup


def gate_and_audit(store: Store, ids: list[str]) -> Callable[[], object]:
    """What the token endpoint will do per issuance: gate, then the token.issued record."""
    mission_id = ids[0]

    def op() -> object:
        with store.begin() as session:
            count = gate_derivation(session, mission_id, now=OP_NOW)
            return audit.append(
                session,
                event="token.issued",
                mission_id=mission_id,
                actor={"client_id": "demo-agent"},
                anchors=None,
                policy_version=None,
                data={"jti": secrets.token_urlsafe(16), "derivation": count},
                at=OP_NOW,
            )

    return op


def lifecycle_round_trip(store: Store, ids: list[str]) -> Callable[[], object]:
    """An administrator suspends, then resumes: two transactions, each with its history
    row, audit record and outbox event."""
    turn = itertools.count()

    def op() -> object:
        mission_id = ids[next(turn) % len(ids)]
        for event in (Event.SUSPEND, Event.RESUME):
            with store.begin() as session:
                transition(
                    session,
                    mission_id,
                    event,
                    roles=ADMIN,
                    actor=ADMIN_ACTOR,
                    reason="bench",
                    now=OP_NOW,
                )
        return mission_id

    return op


def audit_append(store: Store, ids: list[str]) -> Callable[[], object]:
    """One audit record for a Mission (global and per-Mission chain), alone in its
    transaction."""
    mission_id = ids[0]

    def op() -> object:
        with store.begin() as session:
            return audit.append(
                session,
                event="pdp.decision",
                mission_id=mission_id,
                actor={"client_id": "demo-agent"},
                anchors=None,
                policy_version="demo:1",
                data={
                    "decision": "permit",
                    "action": "invoices.read",
                    "resource": f"{ISSUER}/demo/erp",
                },
                at=OP_NOW,
            )

    return op


def consume_once(store: Store, _ids: list[str]) -> Callable[[], object]:
    """A fresh DPoP proof jti, first use, alone in its transaction."""
    expires_at = OP_NOW + timedelta(minutes=5)

    def op() -> object:
        with store.begin() as session:
            if not single_use.consume_once(
                session, "dpop_jti", secrets.token_urlsafe(16), expires_at
            ):
                raise AssertionError("a fresh value was refused")
        return None

    return op


def missions_get(store: Store, ids: list[str]) -> Callable[[], object]:
    """The record with its history (submit + approve), in a read-only transaction."""
    mission_id = ids[0]

    def op() -> object:
        with store.read() as session, session.begin():
            return missions.get(session, mission_id)

    return op


def _benches(backend: str) -> list[Bench]:
    db = "sqlite" if backend == "sqlite" else "pg"
    where = (
        "temp file, WAL, synchronous=FULL" if backend == "sqlite" else "fresh schema, pool_pre_ping"
    )
    return [
        Bench(
            f"store.{db}.gate_derivation+audit",
            _seeded(backend, 1, gate_and_audit),
            batch=20,
            note=f"one txn: gate (cap {MAX_DERIVATIONS}) + token.issued; {where}",
        ),
        Bench(
            f"store.{db}.lifecycle suspend+resume",
            _seeded(backend, LIFECYCLE_POOL, lifecycle_round_trip),
            batch=10,
            note=f"two txns via transition(); {LIFECYCLE_POOL} Missions round-robin; {where}",
        ),
        Bench(
            f"store.{db}.audit.append",
            _seeded(backend, 1, audit_append),
            batch=20,
            note=f"one txn, one record for a Mission; {where}",
        ),
        Bench(
            f"store.{db}.consume_once",
            _seeded(backend, 1, consume_once),
            batch=20,
            note=f"one txn, first use of a fresh value; {where}",
        ),
        Bench(
            f"store.{db}.missions.get",
            _seeded(backend, 1, missions_get),
            batch=50,
            note=f"read-only txn, record + 2 history entries; {where}",
        ),
    ]


def store_benches() -> list[Bench]:
    benches = _benches("sqlite")
    problem = postgres_problem()
    if problem is None:
        benches += _benches("postgresql")
    else:
        print(f"store: PostgreSQL benchmarks skipped: {problem}", flush=True)
    return benches

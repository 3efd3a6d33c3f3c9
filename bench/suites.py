"""The benchmark suites. Each `Bench` has a name, a batch size and a `setup()` context manager
yielding the operation to time (setup and teardown are not timed).

`core`: the pure Mission core (this file). `store`: storage and the audit spine on SQLite and
PostgreSQL (`store_suites.py`)."""

from __future__ import annotations

import contextlib
import json
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from missionbound.mission.anchors import compute_anchors
from missionbound.mission.authority import set_is_subset
from missionbound.mission.catalog import Catalog, load_catalog
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.derivation import ClientCeiling, derive_authority
from missionbound.mission.intent import validate_intent
from missionbound.mission.lifecycle import Event, Role, State, decide_transition

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "http://127.0.0.1:8000"
NOW = datetime(2026, 11, 26, tzinfo=UTC)


@dataclass
class Bench:
    name: str
    setup: Callable[[], contextlib.AbstractContextManager[Callable[[], object]]]
    batch: int = 100
    note: str = ""


def demo_catalog() -> Catalog:
    raw = tomllib.loads((ROOT / "missionbound/demo/tenant.toml").read_text())["catalog"]
    return load_catalog(json.loads(json.dumps(raw).replace("{issuer}", ISSUER)))


DEMO_INTENT = json.dumps({
    "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per invoice, "
            "by Friday.",
    "resources": [f"{ISSUER}/demo/erp", f"{ISSUER}/demo/mcp"],
    "constraints": ["only Q3 invoices", "approved vendors only"],
    "purpose": "https://missionbound.dev/purposes/accounts-payable",
    "mission_expiry": "2026-11-28T17:00:00Z",
    "context": {"max_derivations": 50, "max_value": {"amount": "500.00", "currency": "USD"},
                "vendors": ["acme"]},
})


def _constant(op: Callable[[], object]) -> Callable[[], contextlib.AbstractContextManager[
        Callable[[], object]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        yield op
    return setup


def core_suite() -> list[Bench]:
    catalog = demo_catalog()
    client = ClientCeiling("demo-agent", {f"{ISSUER}/demo/erp": None, f"{ISSUER}/demo/mcp": None})
    intent = validate_intent(DEMO_INTENT, catalog=catalog, now=NOW)
    derivation = derive_authority(intent, catalog=catalog, client=client, now=NOW,
                                  max_lifetime=timedelta(days=30))
    registry = ConstraintRegistry.for_catalog(catalog)
    narrowed: list[dict[str, Any]] = [dict(e) for e in derivation.authority_set[:2]]

    def intake_and_derive() -> object:
        parsed = validate_intent(DEMO_INTENT, catalog=catalog, now=NOW)
        return derive_authority(parsed, catalog=catalog, client=client, now=NOW,
                                max_lifetime=timedelta(days=30))

    def anchors() -> object:
        return compute_anchors(ISSUER, mission_intent=intent.value,
                               authorization_details_requested=[],
                               consent_disclosure={"goal": intent.goal},
                               authority_set=derivation.authority_set)

    roles = frozenset({Role.ADMIN})
    return [
        Bench("core.validate_intent", _constant(
            lambda: validate_intent(DEMO_INTENT, catalog=catalog, now=NOW)), batch=200),
        Bench("core.intake+derive_authority", _constant(intake_and_derive), batch=100),
        Bench("core.compute_anchors (3 anchors)", _constant(anchors), batch=100),
        Bench("core.subset_rule (2 entries vs set)", _constant(
            lambda: set_is_subset(narrowed, derivation.authority_set, registry)), batch=1000),
        Bench("core.decide_transition", _constant(
            lambda: decide_transition(State.ACTIVE, 3, Event.SUSPEND, roles)), batch=5000),
    ]


def store_suite() -> list[Bench]:
    # Imported on use: store_suites builds on this module (Bench, the demo catalog), and the
    # core suite should not need a database driver.
    from store_suites import store_benches

    return store_benches()


SUITES: dict[str, Callable[[], list[Bench]]] = {"core": core_suite, "store": store_suite}

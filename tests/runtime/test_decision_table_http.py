"""The PDP decision table (tests/runtime/decision_table.py) over HTTP: the real app from
``create_app`` (demo tenant, the table's extended catalog), a real database (SQLite and
PostgreSQL), ``POST /access/v1/evaluation`` with HTTP Basic ``demo-rs:demo-rs-secret``.

Each case gets its own Mission, stored pending and approved as the consent step approves
(the policy artifact compiled and stored with it: ``test_pdp.approve_with_artifact``); a
state the case needs is reached through the lifecycle (suspend, revoke, complete, reject),
the clock (``mission_expiry``), or, for a stored value this code does not know, a raw
``UPDATE`` (what an operator's SQL could leave behind). What only an in-process runner can
set up (a state lease from a remote source; class floors, which the approval path does not
take) is skipped here, saying why. The decision and ``context.reason`` must match.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update

from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord
from missionbound.runtime.tenants import load_tenants
from missionbound.store.lifecycle import transition
from missionbound.store.models import Mission
from missionbound.store.transactions import Store
from missionbound.tenant import load_tenant
from missionbound.web.app import create_app
from tests.runtime.decision_table import CASES, TableCase
from tests.runtime.table_support import ADMIN, AUDIENCES, ERP, ISSUER, MCP, NOW, extended_catalog
from tests.runtime.test_pdp import approve_with_artifact, pending_of

BASIC = "Basic " + base64.b64encode(b"demo-rs:demo-rs-secret").decode("ascii")
# Stored states reached through the lifecycle from active (or from pending).
LIFECYCLE = {"suspended": [Event.SUSPEND], "revoked": [Event.REVOKE],
             "completed": [Event.COMPLETE]}
# demo-rs speaks for the table's audiences, including the near-misses it asks about (a
# trailing slash, another case): the PDP, not the caller check, must refuse those.
PEP_AUDIENCES = frozenset({ERP, MCP, ADMIN} | {case.audience for case in CASES
                                                if case.audience not in AUDIENCES})
ADMIN_ACTOR = {"role": "admin", "iss": ISSUER, "sub": "bob"}


def _skip_reason(case: TableCase) -> str | None:
    if "valid_through_s" in case.state:
        return "a state lease comes from a remote state source; the co-located PDP reads " \
               "the authoritative store (valid through now)"
    return None


HTTP_CASES = [pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=why)]
                           if (why := _skip_reason(case)) else []) for case in CASES]


class Served:
    """One app per test, the table's catalog and clock, tenants set per case."""

    def __init__(self, app: FastAPI, store: Store, folder: Path) -> None:
        self.app = app
        self.store = store
        self.folder = folder
        self.client = TestClient(app, base_url=ISSUER)

    def set_tenants(self, policies: dict[str, str]) -> None:
        """The resource-policy tenants loaded as ``pdp_tenants`` folders would load them."""
        folders: dict[str, Path] = {}
        for name, text in policies.items():
            folder = self.folder / f"tenant-{name}-{secrets.token_hex(4)}"
            folder.mkdir()
            (folder / "policies.cedar").write_text(text)
            (folder / "entities.json").write_text("[]")
            folders[name] = folder
        loaded = self.app.state.pdp_tenants
        loaded.clear()
        loaded.update(load_tenants(folders))

    def post(self, body: dict[str, Any]) -> Any:
        return self.client.post("/access/v1/evaluation", json=body,
                                headers={"Authorization": BASIC})


@pytest.fixture
def served(store: Store, tmp_path: Path) -> Iterator[Served]:
    settings = Settings(issuer=ISSUER, data_dir=tmp_path, database_url=str(
        store.engine.url.render_as_string(hide_password=False)), expiry_sweep_seconds=0)
    demo = load_tenant(settings)
    rs = demo.clients["demo-rs"]
    tenant = replace(demo, catalog=extended_catalog(), clients={
        **demo.clients, "demo-rs": replace(rs, audiences=PEP_AUDIENCES)})
    ensure_signing_key(store, NOW.replace(year=2026, month=11, day=1))
    app = create_app(settings, tenant=tenant, engine=store.engine)
    app.state.issuer.clock = lambda: NOW
    yield Served(app, store, tmp_path)


def _mission(case: TableCase, served: Served) -> MissionRecord:
    record = replace(case.mission_record(), mission_id="msn_" + secrets.token_urlsafe(24))
    catalog = served.app.state.tenant.catalog
    wanted = case.state.get("state", State.ACTIVE.value)
    if wanted in (State.PENDING_APPROVAL.value, State.REJECTED.value):
        pending = pending_of(record)
        from missionbound.store import missions

        with served.store.begin() as session:
            missions.create_pending(session, pending, None, pending.created_at)
            if wanted == State.REJECTED.value:
                transition(session, pending.mission_id, Event.REJECT, roles={Role.APPROVER},
                           actor=ADMIN_ACTOR, reason=None,
                           now=pending.created_at + _minutes(1))
        return record
    resource_policies = dict(case.compile.get("resource_policies", {}))
    for uri, floors in case.compile.get("class_floors", {}).items():
        # A resource's class floors are catalog configuration, compiled in at approval.
        resources = dict(catalog.resources)
        resources[uri] = replace(resources[uri], class_floors=dict(floors))
        catalog = replace(catalog, resources=resources)
    approved = approve_with_artifact(served.store, record, catalog,
                                     resource_policies=resource_policies,
                                     tool_definitions=case.compile.get("tool_definitions"))
    with served.store.begin() as session:
        for event in LIFECYCLE.get(wanted, []):
            transition(session, approved.mission_id, event, roles={Role.ADMIN},
                       actor=ADMIN_ACTOR, reason=None, now=NOW - _minutes(5))
        if wanted == State.EXPIRED.value:
            transition(session, approved.mission_id, Event.EXPIRE, roles={Role.CLOCK},
                       actor={"role": "clock"}, reason=None, now=NOW - _minutes(5))
        elif wanted not in (*LIFECYCLE, State.ACTIVE.value):
            # A stored value this code does not know: only SQL behind the AS's back.
            session.execute(update(Mission).where(Mission.mission_id == approved.mission_id)
                            .values(state=wanted))
    return approved


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False


def _minutes(count: int) -> Any:
    from datetime import timedelta

    return timedelta(minutes=count)


@pytest.mark.parametrize("case", HTTP_CASES)
def test_decision_table_over_http(served: Served, case: TableCase) -> None:
    served.set_tenants(dict(case.tenants))
    mission = _mission(case, served)
    response = served.post(case.body(mission, mission.policy_version))
    if _has_float(case.parameters):
        # The wire refuses a JSON number with a fraction before any decision (decimals
        # travel as strings, PROFILE.md section 3): 400, not the in-process deny.
        assert response.status_code == 400, response.text
        assert not case.allowed
        return
    assert response.status_code == 200, response.text
    answer = response.json()
    context = answer.get("context", {})
    assert (answer["decision"], context.get("reason")) == (case.allowed, case.reason), answer
    assert isinstance(context.get("evaluation_id"), str)
    if case.allowed and "use_limit" in case.expect:
        conditions = context.get("conditions", {})
        assert conditions.get("use_limit") == case.expect["use_limit"]
        assert ("permit" in context) == bool(case.expect.get("use_limit"))


def test_the_table_is_big_enough_over_http() -> None:
    runnable = [case for case in CASES if _skip_reason(case) is None]
    assert len(runnable) >= 60, len(runnable)

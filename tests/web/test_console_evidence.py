"""The console's Mission timeline shows the Mission's runtime evidence (PROFILE.md sections
12 and 15): decisions, refusals and executions, merged by time with the audit records, each
with its kind, time, action, result, reason, evaluation id and place in the evidence chain.
In-process HTTP on the real app and database (SQLite and PostgreSQL, the module-scoped
``flow`` of tests/issuer), evidence written by the real EvidenceLog with the AS's key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from html import unescape
from typing import Any

import pytest
from fastapi.testclient import TestClient

from missionbound.mission.catalog import ActionClass
from missionbound.runtime.decision import Decision
from missionbound.runtime.digests import parameter_digest
from missionbound.runtime.evidence import EvidenceLog
from missionbound.runtime.reasons import Reason
from missionbound.runtime.request import DecisionRequest
from missionbound.store import missions
from missionbound.web import console
from tests.e2e_support import parse_forms
from tests.issuer.conftest import flow, flow_database_url  # noqa: F401 (the shared fixtures)
from tests.issuer.flow import ISSUER, Flow

MCP = f"{ISSUER}/demo/mcp"
SECRET = "SECRET-c0ns0le"
ARGUMENTS = {"invoice_id": "inv-acme-1", "amount": "120.00", "memo": SECRET}
EVIDENCE_ID = re.compile(r'<li class="mb-entry mb-entry-[a-z]+ mb-evidence" id="evidence-(\d+)"')


@pytest.fixture(scope="module")
def bob(flow: Flow) -> Iterator[TestClient]:  # noqa: F811
    browser = flow.browser()
    flow.sign_in(browser, "bob", next_path="/console/")
    yield browser
    browser.close()


def plain(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", "", html)).split())


def record_story(flow: Flow, mission_id: str) -> None:  # noqa: F811
    """A permit and its execution, a deny, a refusal by the gateway."""
    log = EvidenceLog(issuer_url=ISSUER, signer=flow.issuer.signer)
    with flow.store.begin() as session:
        mission = missions.get(session, mission_id)
        assert mission is not None
        request = DecisionRequest(
            subject_type="user", subject_id="alice", subject_iss=ISSUER, audience=MCP,
            resource_type="invoice", resource_id="inv-acme-1",
            resource_properties={"audience": MCP}, action_name="schedule_payment",
            parameters=ARGUMENTS, parameter_digest=parameter_digest(ARGUMENTS),
            idempotency_key=None, mission_id=mission_id, mission_issuer=mission.origin,
            authority_hash=mission.authority_hash or "", client_id="demo-agent",
            act=({"sub": "demo-agent"}, {"sub": "demo-subagent"}))
        now = flow.now()
        allowed = Decision(allowed=True, reason=None, action_class=ActionClass.CONSEQUENTIAL_WRITE,
                           class_source="default", entry_digest="sha-256:entry",
                           parameter_digest=request.parameter_digest, parameter_bound=True,
                           valid_until=now + timedelta(seconds=60), use_limit=1)
        log.record_decision(session, mission=mission, request=request, decision=allowed,
                            evaluation_id="dec_console_1", now=now)
        log.record_execution(session, mission_id=mission_id, evaluation_id="dec_console_1",
                             audience=MCP, authorized_parameter_digest=request.parameter_digest,
                             effective_parameter_digest=request.parameter_digest,
                             outcome="completed", error=None, emitter_id=MCP, now=now)
        denied = Decision(allowed=False, reason=Reason.OUT_OF_AUTHORITY,
                          action_class=ActionClass.IRREVERSIBLE, class_source="default")
        log.record_decision(session, mission=mission, decision=denied,
                            request=DecisionRequest(**{**_fields(request),
                                                       "action_name": "execute_wire_transfer"}),
                            evaluation_id="dec_console_2", now=now + timedelta(microseconds=1))
        log.record_refusal(session, mission_id=mission_id, audience=MCP,
                           action="send_remittance_email", reason="mission_inactive",
                           emitter_id=MCP, now=now + timedelta(microseconds=2))


def _fields(request: DecisionRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in DecisionRequest.__slots__}


def suspend(flow: Flow, bob: TestClient, mission_id: str) -> None:  # noqa: F811
    page = bob.get(f"/console/missions/{mission_id}").text
    [form] = [f for f in parse_forms(page) if f.action.endswith("/lifecycle")]
    response = bob.post(f"/console/missions/{mission_id}/lifecycle",
                        data={**form.hidden, "operation": "suspend", "reason": "check",
                              "confirm": "yes"})
    assert response.status_code == 303, response.text


def test_the_timeline_shows_the_evidence_among_the_audit_records(
    flow: Flow, bob: TestClient  # noqa: F811
) -> None:
    mission_id = flow.grant(login_hint="alice").mission_id
    record_story(flow, mission_id)
    flow.clock.advance(1)
    suspend(flow, bob, mission_id)
    page = bob.get(f"/console/missions/{mission_id}")
    assert page.status_code == 200, page.text
    html = page.text
    titles = re.findall(r'<strong class="mb-entry-title">([^<]+)</strong>', html)
    assert titles == ["Mission requested", "Approved", "Token issued",
                      "Permitted: schedule_payment", "Executed: schedule_payment",
                      "Denied: execute_wire_transfer",
                      "Refused before a decision: send_remittance_email", "Suspended"]
    kinds = re.findall(r'<span class="mb-entry-kind">([a-z]+)</span>', html)
    assert kinds == ["lifecycle", "lifecycle", "token", "decision", "execution", "decision",
                     "refusal", "lifecycle"]
    assert EVIDENCE_ID.findall(html) == ["1", "2", "3", "4"]
    text = plain(html)
    assert "Result permit; evaluation dec_console_1; evidence record 1" in text
    assert "Result completed; evaluation dec_console_1; evidence record 2" in text
    assert "Result deny; evaluation dec_console_2; evidence record 3" in text
    assert "Reason: out_of_authority" in text and "Reason: mission_inactive" in text
    assert "Result deny; evidence record 4" in text
    assert "asked by client demo-agent, delegation demo-agent → demo-subagent" in text
    assert f"by the PDP {ISSUER}" in text and f"by enforcement point {MCP}" in text
    assert "class consequential_write" in text
    # Times are shown; the raw parameters never are.
    assert len(re.findall(r'<time datetime="[0-9T:-]+Z">', html)) >= 8
    assert SECRET not in html and "evidence_envelope" not in html


def test_every_evidence_record_is_reachable_once_through_the_page_links(
    flow: Flow, bob: TestClient, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setattr(console, "TIMELINE_PAGE", 2)
    mission_id = flow.grant(login_hint="alice").mission_id
    record_story(flow, mission_id)
    flow.clock.advance(1)
    suspend(flow, bob, mission_id)
    seen: list[str] = []
    url: str | None = f"/console/missions/{mission_id}"
    for _ in range(20):
        assert url is not None
        page = bob.get(url)
        assert page.status_code == 200, page.text
        seen += EVIDENCE_ID.findall(page.text)
        more = re.search(r'<a href="([^"]+)">More evidence of this period</a>', page.text)
        later = re.search(r'<a href="([^"]+)">Later records</a>', page.text)
        url = unescape(more.group(1)) if more else unescape(later.group(1)) if later else None
        if url is None:
            break
    assert seen == ["1", "2", "3", "4"]


def test_a_bad_evidence_position_is_a_400_page(flow: Flow, bob: TestClient) -> None:  # noqa: F811
    mission_id = flow.grant(login_hint="alice").mission_id
    page = bob.get(f"/console/missions/{mission_id}?evidence_after=x")
    assert page.status_code == 400
    assert "evidence_after must be a whole number" in plain(page.text)

"""The demo gateway's in-process Mission PDP (web/colocated_pdp.py): what the AuthZEN HTTP
endpoints would refuse it refuses too, as the HTTP client's errors, and changes nothing."""

from __future__ import annotations

import pytest

from missionbound.enforce.rs.pdp_client import PdpUnavailable, ReportFailed
from missionbound.web.colocated_pdp import CoLocatedPdp
from tests.issuer.conftest import flow, flow_database_url  # noqa: F401 (the shared fixtures)
from tests.issuer.flow import ISSUER, MCP, Flow, snapshot


def colocated(flow: Flow) -> CoLocatedPdp:  # noqa: F811
    pdp = flow.app.state.demo_mcp.state.pep.pdp
    assert isinstance(pdp, CoLocatedPdp)
    return pdp


def body(audience: str) -> dict[str, object]:
    return {"subject": {"type": "user", "id": "alice", "properties": {"iss": ISSUER}},
            "resource": {"type": "mcp_tool", "id": "get_invoice",
                         "properties": {"audience": audience}},
            "action": {"name": "get_invoice"},
            "context": {"mission": {"id": "msn_unknown", "issuer": ISSUER},
                        "credential": {"issuer": ISSUER, "expires_at": "2099-01-01T00:00:00Z"}}}


def test_a_request_for_another_resource_is_refused_and_records_nothing(
        flow: Flow) -> None:  # noqa: F811
    before = snapshot(flow.engine)
    with pytest.raises(PdpUnavailable, match="refused the request"):
        # demo-rs speaks for the demo ERP and MCP resources only (403 over HTTP).
        colocated(flow).evaluate(body("https://elsewhere.example/mcp"))
    with pytest.raises(PdpUnavailable, match="refused the request"):
        colocated(flow).evaluate({"subject": "not an object"})  # 400 over HTTP
    assert snapshot(flow.engine) == before


def test_a_report_the_intake_refuses_is_not_retried(flow: Flow) -> None:  # noqa: F811
    assert MCP in flow.app.state.tenant.clients["demo-rs"].audiences
    before = snapshot(flow.engine)
    with pytest.raises(ReportFailed) as refused:
        colocated(flow).report(evaluation_id="dec_never_decided", outcome="completed")
    assert refused.value.retryable is False
    with pytest.raises(ReportFailed):
        colocated(flow).report(evaluation_id="dec_x", outcome="exploded")  # not an outcome
    assert snapshot(flow.engine) == before

"""The gateway's upstream client (missionbound/enforce/mcp/upstream.py) against the demo
payments server over real streamable HTTP (uvicorn on a loopback socket,
tests/demo/test_payments_mcp.py's ``served``), and an upstream that is not there."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from missionbound.enforce.mcp import Upstream, UpstreamUnavailable
from tests.demo.test_payments_mcp import Served, served  # noqa: F401 (the shared fixture)
from tests.enforce.mcp.mcp_support import run


def test_an_http_upstream_lists_and_calls_in_one_session(
        served: Served) -> None:  # noqa: F811 (the imported fixture)
    upstream = Upstream(served.url, timeout_seconds=5)

    async def work() -> tuple[list[str], Any]:
        async with upstream.open() as session:
            names = [tool.name for tool in await session.list_tools()]
            return names, await session.call_tool("get_invoice", {"invoice_id": "inv-acme-1"})

    names, result = run(work)
    assert names == ["list_invoices", "get_invoice", "schedule_payment",
                     "execute_wire_transfer", "send_remittance_email"]
    assert not result.is_error and result.structured_content["vendor"] == "acme"


def test_the_listing_is_kept_for_the_ttl_only(served: Served) -> None:  # noqa: F811
    now = [0.0]
    upstream = Upstream(served.url, definitions_ttl_seconds=10, clock=lambda: now[0])
    first = run(upstream.list_tools)
    assert run(upstream.list_tools) == first
    assert upstream._cached is not None and upstream._cached[0] == 0.0
    now[0] = 11.0
    run(upstream.list_tools)
    assert upstream._cached[0] == 11.0  # listed again once the TTL passed


@pytest.mark.parametrize("work", [
    lambda up: up.list_tools(),
    lambda up: up.call_tool("get_invoice", {"invoice_id": "inv-acme-1"}),
])
def test_an_unreachable_upstream_is_upstream_unavailable(
        work: Callable[[Upstream], Awaitable[Any]]) -> None:
    upstream = Upstream("http://127.0.0.1:9/mcp", timeout_seconds=2)
    with pytest.raises(UpstreamUnavailable):
        run(lambda: work(upstream))


@pytest.mark.parametrize(("resource", "path"), [
    ("http://testserver", ""), ("http://testserver/tools/mcp", "/tools/mcp")])
def test_mount_gateway_serves_the_endpoint_metadata_and_metrics(resource: str,
                                                                path: str) -> None:
    """At the host root or under a path: the endpoint at the path itself (no redirect to
    ``path/``), its 401 pointing to the RFC 9728 document at the host root."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from missionbound.demo.payments_mcp import Ledger, build_payments_server
    from missionbound.enforce.mcp import build_gateway_app, mount_gateway
    from missionbound.enforce.rs import MissionGuard, PdpClient, TrustedIssuer
    from missionbound.protocol.jwks import JwksCache

    keys = JwksCache("http://as.test/jwks")
    guard = MissionGuard(resource=resource, issuers=[TrustedIssuer("http://as.test", keys=keys)],
                         dpop_required=True)
    pdp = PdpClient("http://as.test", client_id="pep", client_secret="pep-secret")
    gateway = build_gateway_app(resource=resource, guard=guard, pdp=pdp, permit_keys=keys,
                                upstream=Upstream(build_payments_server(Ledger())))
    host = Starlette()
    mount_gateway(host, path, gateway)
    metadata_url = f"http://testserver/.well-known/oauth-protected-resource{path}"
    with TestClient(host) as client:
        refused = client.post(path or "/", json={}, follow_redirects=False)
        assert refused.status_code == 401
        assert f'resource_metadata="{metadata_url}"' in refused.headers["www-authenticate"]
        document = client.get(metadata_url).json()
        assert (document["resource"], document["authorization_servers"]) == (
            resource, ["http://as.test"])
        assert client.get(f"{path}/metrics").status_code == 200
    pdp.close()
    guard.close()

"""The gateway's world for tests: the real application (AS, Mission PDP, the gateway at
``/demo/mcp`` in front of the in-process demo payments server) on a real database, reached
by the official ``mcp`` client over streamable HTTP through an ``httpx2`` ASGI transport, with
DPoP-bound Mission tokens approved through the real consent flow (tests/issuer/flow.py).

The gateway reaches the AS (JWKS, PDP, execution intake) over HTTP through a
:class:`~tests.demo.test_erp.Loopback`, as the demo ERP does in its tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from fastapi.testclient import TestClient
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import select

import tests.issuer.flow as flow_module
from missionbound.client.mcp_auth import DPoPAuth
from missionbound.config import ENV_PREFIX
from missionbound.demo.payments_mcp import Ledger
from missionbound.store.models import EvidenceRecord
from missionbound.store.transactions import Store
from missionbound.web.app import create_app
from tests.demo.test_erp import Loopback
from tests.issuer.flow import ISSUER, MCP, Flow, Grant, build_flow
from tests.protocol.proofs import generate_key

TIMEOUT = 20.0
_T = TypeVar("_T")


@dataclass
class World:
    """The application (``flow``) and the gateway's HTTP client into it."""

    flow: Flow
    http: httpx.Client

    @property
    def ledger(self) -> Ledger:
        ledger = self.flow.app.state.demo_payments_ledger
        assert isinstance(ledger, Ledger)
        return ledger


def build_world(database_url: str, data_dir: Path) -> Iterator[World]:
    loopback = Loopback()
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        patch.setattr(flow_module, "create_app", partial(create_app,
                                                         http_client=loopback.client))
        built = build_flow(database_url, data_dir)
    loopback.target = TestClient(built.app, base_url=ISSUER, follow_redirects=False)
    try:
        yield World(built, loopback.client)
    finally:
        loopback.target.close()
        loopback.client.close()
        built.client.close()
        built.engine.dispose()


def new_grant(flow: Flow, **push: Any) -> Grant:
    return flow.grant(dpop_key=generate_key(), **push)


def run(work: Callable[[], Awaitable[_T]]) -> _T:
    async def bounded() -> _T:
        return await asyncio.wait_for(work(), TIMEOUT)

    return asyncio.run(bounded())


@asynccontextmanager
async def agent(app: Any, grant: Grant | None, url: str = MCP):
    """The official ``mcp`` client, its every HTTP request carrying ``grant``'s token and a
    fresh DPoP proof (``missionbound.client.mcp_auth.DPoPAuth``), into ``app`` in process."""
    auth = None
    if grant is not None:
        assert grant.dpop_key is not None
        auth = DPoPAuth(grant.access_token, grant.dpop_key)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=ISSUER,
                                  auth=auth, timeout=TIMEOUT) as http, \
            Client(streamable_http_client(url, http_client=http), cache=None,
                   read_timeout_seconds=TIMEOUT) as client:
        yield client


def evidence(flow: Flow, mission_id: str, kind: str = "decision") -> list[dict[str, Any]]:
    with Store(flow.engine).read() as session, session.begin():
        rows = session.scalars(select(EvidenceRecord).where(
            EvidenceRecord.kind == kind, EvidenceRecord.mission_id == mission_id
        ).order_by(EvidenceRecord.id)).all()
        return [dict(row.record) for row in rows]

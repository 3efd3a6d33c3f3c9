"""In-process HTTP tests: the real app from create_app on a real SQLite file, driven
through httpx's ASGI transport (no server, no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from missionbound.config import ENV_PREFIX, Settings, load_settings
from missionbound.store.engine import create_engine_for
from missionbound.web.app import create_app

ISSUER = "https://as.test.example"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_missionbound_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's MISSIONBOUND_* variables must not change what these tests see.
    import os

    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, issuer=ISSUER)


@pytest.fixture
def sqlite_engine(settings: Settings) -> Iterator[Engine]:
    # HTTP behaviour does not depend on the database: one backend is enough here. The
    # health check, which does, also runs on both (tests/web/test_health.py).
    engine = create_engine_for(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def app(settings: Settings, sqlite_engine: Engine) -> FastAPI:
    return create_app(settings, engine=sqlite_engine)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
        yield client

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from missionbound.config import Settings, load_settings
from missionbound.store.engine import create_engine_for
from missionbound.web.app import create_app

pytestmark = pytest.mark.anyio


async def test_healthz_is_ok_when_the_database_answers(settings: Settings, engine: Engine) -> None:
    # ``engine`` is the shared fixture: a migrated SQLite file, then a PostgreSQL schema.
    app = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "database_url",
    [
        # A directory where the SQLite file should be: the driver cannot open it.
        "sqlite:///{tmp}/a-directory.db",
        # Nothing listens on port 1: the connection is refused at once.
        "postgresql+psycopg://missionbound@127.0.0.1:1/missionbound",
    ],
)
async def test_healthz_is_503_when_the_database_does_not_answer(
    tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "a-directory.db").mkdir()
    settings = load_settings(data_dir=tmp_path, database_url=database_url.format(tmp=tmp_path))
    engine = create_engine_for(settings.database_url)
    try:
        app = create_app(settings, engine=engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as client:
            response = await client.get("/healthz")
    finally:
        engine.dispose()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "unavailable"}}
    # The driver's message (host names, user names, paths) stays in the log.
    assert "127.0.0.1" not in response.text and str(tmp_path) not in response.text

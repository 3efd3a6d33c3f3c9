"""The real app with the two example tenants, for the AuthZEN HTTP tests: SQLite, migrated,
driven with Starlette's TestClient and HTTP Basic as the demo tenant's ``demo-rs``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from missionbound.config import Settings
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade
from missionbound.web.app import create_app

ISSUER = "https://pdp.test.example"
ROOT = Path(__file__).resolve().parents[2]
TENANTS = {"todo": ROOT / "examples" / "authzen-todo",
           "search": ROOT / "examples" / "authzen-search"}
# The interop tables: the shared copy when this checkout has one, else the copy in the repo.
SHARED_INTEROP = ROOT.parent / "shared" / "interop" / "authzen"
REPO_INTEROP = Path(__file__).resolve().parent / "authzen_interop"
INTEROP = SHARED_INTEROP if SHARED_INTEROP.is_dir() else REPO_INTEROP


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


RS_AUTH = {"Authorization": basic("demo-rs", "demo-rs-secret")}
# demo-agent is a registered client with a secret but speaks for no resource.
AGENT_AUTH = {"Authorization": basic("demo-agent", "demo-agent-secret")}


def interop(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((INTEROP / name).read_text())
    return document


def serve_app(folder: Path, **overrides: Any) -> Iterator[TestClient]:
    """The app over a migrated SQLite database in ``folder``; the client's requests carry
    no credentials unless a test adds them."""
    settings = Settings(issuer=ISSUER, data_dir=folder, expiry_sweep_seconds=0,
                        signals_delivery_seconds=0, pdp_tenants=TENANTS, **overrides)
    upgrade(settings.database_url)
    engine = create_engine_for(settings.database_url)
    try:
        yield TestClient(create_app(settings, engine=engine), base_url=ISSUER)
    finally:
        engine.dispose()

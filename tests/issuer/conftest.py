"""The ``flow`` fixture: one issuer app per test module and database kind (a SQLite file and a
PostgreSQL schema of its own, see tests/conftest.py), shared by the module's tests.

Sharing is safe because every test makes its own Missions and compares store snapshots
taken before and after what it does; tests never rely on what others left behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from missionbound.config import ENV_PREFIX
from missionbound.store.engine import create_engine_for
from tests.conftest import BACKENDS, postgres_problem, postgres_url
from tests.issuer.flow import Flow, build_flow


@pytest.fixture(scope="module", params=BACKENDS)
def flow_database_url(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty database for one module: a new SQLite file or a new PostgreSQL schema
    (dropped afterwards). PostgreSQL is skipped only when no server answers."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('flow-db') / 'missionbound.db'}"
        return
    problem = postgres_problem()
    if problem is not None:
        kind, reason = problem
        if kind == "skip":
            pytest.skip(reason)
        pytest.fail(reason)
    schema = "mb_test_" + secrets.token_hex(6)
    admin = create_engine_for(postgres_url(), pool_size=1, max_overflow=0)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(postgres_url()).update_query_dict(
            {"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module")
def flow(flow_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """The issuer app on the module's database, with the demo tenant and a movable clock."""
    with pytest.MonkeyPatch.context() as patch:
        # A developer's MISSIONBOUND_* variables must not change what these tests see.
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        built = build_flow(flow_database_url, tmp_path_factory.mktemp("flow-data"))
    try:
        yield built
    finally:
        built.client.close()
        built.engine.dispose()

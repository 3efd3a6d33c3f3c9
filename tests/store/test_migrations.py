"""The packaged Alembic migrations build exactly the schema the models describe, on both
databases, and ``upgrade`` is safe to run again (``missionbound db upgrade``, DESIGN.md)."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import alembic_config, current_revision, head_revision, upgrade
from missionbound.store.models import AuditChainHead, Base
from tests.store.concurrency import run_concurrently


def test_upgrade_builds_the_schema_the_models_describe(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    engine = create_engine_for(empty_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_the_chain_head(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    engine = create_engine_for(empty_database_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        with engine.connect() as connection:
            heads = connection.execute(select(AuditChainHead.__table__)).all()
        assert [(row.id, row.last_seq, row.last_hash) for row in heads] == [(1, 0, None)]
    finally:
        engine.dispose()


def test_upgrade_twice_changes_nothing(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    upgrade(empty_database_url)
    engine = create_engine_for(empty_database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_everything_and_upgrade_rebuilds(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url)
    engine = create_engine_for(empty_database_url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) & set(Base.metadata.tables) == set()
        assert current_revision(engine) is None
    finally:
        engine.dispose()
    upgrade(empty_database_url)
    engine = create_engine_for(empty_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_replicas_upgrading_at_once_do_not_collide(empty_database_url: str) -> None:
    # Several `missionbound serve` processes start together against one empty database.
    results = run_concurrently(4, lambda _: upgrade(empty_database_url))
    assert results == [None] * 4
    engine = create_engine_for(empty_database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()

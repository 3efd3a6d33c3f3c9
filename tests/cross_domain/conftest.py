"""Fixtures of the Resource AS tests: one origin (SQLite) and one Resource AS per module and
database kind (the Resource AS on SQLite and on PostgreSQL: tests/issuer/conftest.py's
``flow_database_url``), shared by the module's tests. Every test makes its own Mission and
its own ID-JAGs and compares snapshots taken before and after what it does."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from missionbound.config import ENV_PREFIX
from tests.cross_domain.support import Origin, ResourceAS, build_origin, build_resource_as
from tests.issuer.conftest import flow_database_url

__all__ = ["flow_database_url"]


@pytest.fixture(scope="module")
def clean_environment() -> Iterator[None]:
    # A developer's MISSIONBOUND_* variables must not change what these tests see.
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        yield


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, clean_environment: None
           ) -> Iterator[Origin]:
    folder = tmp_path_factory.mktemp("origin")
    built = build_origin(f"sqlite:///{folder / 'origin.db'}", folder)
    try:
        yield built
    finally:
        built.client.close()
        built.engine.dispose()


@pytest.fixture(scope="module")
def ras(flow_database_url: str, origin: Origin, tmp_path_factory: pytest.TempPathFactory,
        clean_environment: None) -> Iterator[ResourceAS]:
    built = build_resource_as(flow_database_url, tmp_path_factory.mktemp("ras"), origin.client)
    try:
        yield built
    finally:
        built.client.close()
        built.engine.dispose()

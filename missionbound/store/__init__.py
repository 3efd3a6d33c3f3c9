"""Persistence (DESIGN.md "The house"): SQLAlchemy models, repositories, migrations, outbox.

Repositories take a caller-owned :class:`~sqlalchemy.orm.Session` and never commit. Import
them from their modules: ``missions`` (create, approve, transition, expire), ``gate``
(the derivation gate), ``single_use``, ``outbox``, ``clients``, ``keys``, ``par``,
``codes``, ``refresh``, ``tokens``. This package itself exports only what has no
dependency on the audit spine (which in turn builds on the models here).
"""

from missionbound.store.engine import DatabaseUrlError, create_engine_for, read_only_engine
from missionbound.store.errors import (
    DerivationRefused,
    InvalidGrant,
    InvalidRequestUri,
    MissionNotFound,
    RefreshTokenReused,
)
from missionbound.store.migrate import upgrade, upgrade_engine
from missionbound.store.transactions import Store, run_after_rollback

__all__ = [
    "DatabaseUrlError",
    "DerivationRefused",
    "InvalidGrant",
    "InvalidRequestUri",
    "MissionNotFound",
    "RefreshTokenReused",
    "Store",
    "create_engine_for",
    "read_only_engine",
    "run_after_rollback",
    "upgrade",
    "upgrade_engine",
]

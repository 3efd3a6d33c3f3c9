"""``INSERT ... ON CONFLICT DO NOTHING`` on both databases.

A plain INSERT that hits a unique constraint aborts the whole PostgreSQL transaction; this
form leaves the caller's transaction usable and reports through the row count whether the
row was inserted (1) or already there (0). Concurrent inserters of the same key wait for the
first to commit or roll back, which is what makes single-use ids exactly-once. Whether the
row went in is read from ``RETURNING`` (a DBAPI ``rowcount`` after INSERT is not reliable).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session


def insert_ignoring_conflicts(
    session: Session, model: type[DeclarativeBase], values: dict[str, Any]
) -> bool:
    """Insert ``values`` into ``model``'s table unless the key exists; True if inserted."""
    dialect = session.get_bind().dialect.name
    table = model.__table__
    assert isinstance(table, Table)
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - create_engine_for admits only these two
        raise RuntimeError(f"unsupported database {dialect}")
    key = next(iter(table.primary_key.columns))
    # Pending ORM changes go first (as session.execute would autoflush them), then the
    # INSERT on the session's connection: a plain Core statement, no ORM execution layer.
    session.flush()
    inserted = session.connection().execute(statement.returning(key)).first()
    return inserted is not None

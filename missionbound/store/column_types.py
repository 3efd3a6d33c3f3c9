"""Column types shared by every table.

SQLite has no time zone type: SQLAlchemy's ``DateTime`` there stores naive text and gives
back naive values, so an aware ``datetime`` would silently come back naive and compare
wrongly with ``now``. :class:`UTCDateTime` stores UTC on both databases and always returns
aware UTC values; a naive value is refused at bind time (it has no defined instant).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` on PostgreSQL; fixed-width UTC text on SQLite (which
    therefore sorts and compares correctly in SQL)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime refused: store times as timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"stored time is a {type(value).__name__}, not a datetime")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Plain JSON (text on both databases): what is read back is exactly what was written, which
# the audit chain relies on when it re-hashes stored records. Python ``None`` is SQL NULL.
JSONColumn = JSON(none_as_null=True)

# 64-bit ids on PostgreSQL; on SQLite only "INTEGER PRIMARY KEY" is the auto-assigned rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")

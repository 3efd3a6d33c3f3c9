"""Input checks shared by the repositories: bad input is a typed error before any write."""

from __future__ import annotations

from datetime import datetime

from missionbound.mission.errors import InvalidRequest


def require_aware(value: datetime, name: str) -> None:
    """A stored instant must say which instant it is: naive datetimes are refused."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(f"{name} must be a timezone-aware datetime")

"""Error descriptions on the wire stay within RFC 6749 section 5.2's character set."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from missionbound.mission.errors import MAX_DESCRIPTION, InvalidRequest, wire_text

ALLOWED = {chr(c) for c in range(0x20, 0x7F)} - {'"', "\\"}


def test_quotes_backslashes_and_non_ascii_are_replaced() -> None:
    wire = InvalidRequest('member "x\\y" is not allowed: é').to_wire()
    assert wire == {"error": "invalid_request",
                    "error_description": "member 'x/y' is not allowed: ?"}


@given(st.text(max_size=2000))
def test_any_description_becomes_allowed_text(description: str) -> None:
    text = wire_text(description)
    assert set(text) <= ALLOWED
    assert len(text) <= MAX_DESCRIPTION

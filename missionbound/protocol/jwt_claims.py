"""The registered JWT claims every verifier here checks the same way (RFC 7519 section 4.1):
``iat``, ``exp`` and ``nbf`` as NumericDates with a leeway, a lifetime bound, and required
string claims. Each verifier (access tokens, Transaction Tokens) raises its own error from
:class:`ClaimRefused`, whose ``reason`` is one of the codes below, shared by them."""

from __future__ import annotations

import math
from typing import Any

EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
TOO_LONG_LIVED = "too_long_lived"
MISSING_CLAIM = "missing_claim"
INVALID_CLAIM = "invalid_claim"


class ClaimRefused(ValueError):
    """A registered claim is missing, malformed or says the token is not valid now."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def numeric_date(claims: dict[str, Any], name: str, what: str, *,
                 required: bool) -> float | None:
    """Claim ``name`` as seconds since the epoch (RFC 7519 section 2: any JSON number, a
    bool is not one); None when absent and not ``required``. ``what`` names the token."""
    if name not in claims:
        if required:
            raise ClaimRefused(MISSING_CLAIM, f'the {what} lacks "{name}"')
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClaimRefused(INVALID_CLAIM, f'the {what} "{name}" must be a NumericDate '
                           "(seconds since the epoch)")
    return float(value)


def check_times(claims: dict[str, Any], what: str, *, now: float, leeway: float,
                max_lifetime: float | None) -> tuple[float, float]:
    """``iat`` and ``exp`` (both required) and ``nbf`` against ``now`` with ``leeway``, and
    ``exp - iat`` at most ``max_lifetime`` (None: no bound). Returns ``(iat, exp)``."""
    iat = numeric_date(claims, "iat", what, required=True)
    exp = numeric_date(claims, "exp", what, required=True)
    assert iat is not None and exp is not None  # required
    if now >= exp + leeway:
        raise ClaimRefused(EXPIRED, f"the {what} expired {now - exp:.0f} s ago")
    if iat > now + leeway:
        raise ClaimRefused(NOT_YET_VALID,
                           f"the {what} was issued {iat - now:.0f} s in the future")
    nbf = numeric_date(claims, "nbf", what, required=False)
    if nbf is not None and nbf > now + leeway:
        raise ClaimRefused(NOT_YET_VALID, f"the {what} is not valid yet (nbf)")
    if exp <= iat:
        raise ClaimRefused(INVALID_CLAIM, f'the {what} "exp" is not after its "iat"')
    if max_lifetime is not None and exp - iat > max_lifetime:
        raise ClaimRefused(TOO_LONG_LIVED, f"the {what} lives {exp - iat:.0f} s; at most "
                           f"{max_lifetime:.0f} s are accepted")
    return iat, exp


def string_claim(claims: dict[str, Any], name: str, what: str, max_length: int) -> str:
    """Claim ``name``: a string of 1 to ``max_length`` characters."""
    if name not in claims:
        raise ClaimRefused(MISSING_CLAIM, f'the {what} lacks "{name}"')
    value = claims[name]
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise ClaimRefused(INVALID_CLAIM, f'the {what} "{name}" must be a string of 1 to '
                           f"{max_length} characters")
    return value

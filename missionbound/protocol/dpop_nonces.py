"""Server-issued DPoP nonces (RFC 9449 section 8) that need no storage.

A nonce is ``base64url(step || HMAC-SHA256(secret, step))``, where ``step`` counts
:data:`DEFAULT_NONCE_STEP` periods since the epoch and ``secret`` is one server secret. Every
replica that reads the same secret checks a nonce another one issued, with no table to write
or read per request. The Authorization Server keeps its secret in its database
(``missionbound.issuer.dpop``); a Resource Server (``missionbound.enforce.rs``) is given one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime, timedelta

from missionbound.protocol.dpop import NonceCheck, UseDPoPNonce

# A nonce is accepted during the step it was issued in and the steps either side: from 5 to
# 10 minutes after issue. That matches the 300 s proof window, so a nonce never goes stale
# before a proof made with it would; it bounds pre-generated proofs (section 11.2) to
# 10 minutes; and a client whose nonce lapsed while idle pays one extra round trip
# (section 8). The next step is accepted too because a replica whose clock runs slightly
# ahead may already be issuing it.
DEFAULT_NONCE_STEP = timedelta(minutes=5)

# Domain separation: a MAC made with this secret for anything else never passes as a nonce.
_NONCE_CONTEXT = b"missionbound dpop-nonce v1\x00"
_STEP_BYTES = 8
_MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits (RFC 2104 section 5 allows it)
_NONCE = re.compile(r"[A-Za-z0-9_-]{32}")  # 24 bytes, base64url without padding


def issue_nonce(secret: bytes, now: datetime, *, step: timedelta = DEFAULT_NONCE_STEP) -> str:
    """The nonce for ``now``: send it in a ``DPoP-Nonce`` header (RFC 9449 section 8.2)."""
    return _encode_nonce(secret, _step_number(now, step))


def check_nonce(
    secret: bytes, value: str | None, now: datetime, *, step: timedelta = DEFAULT_NONCE_STEP
) -> None:
    """Accept a nonce this server issued during the current step or either neighbour; else
    raise :class:`UseDPoPNonce` carrying a fresh one (RFC 9449 section 8)."""
    current = _step_number(now, step)
    if value is None:
        raise UseDPoPNonce(
            _encode_nonce(secret, current),
            "this server requires a nonce in the DPoP proof: retry with the DPoP-Nonce value",
        )
    issued = _decode_nonce(secret, value)
    if issued is None:
        raise UseDPoPNonce(
            _encode_nonce(secret, current),
            "the DPoP proof nonce is not one this server issued: retry with the DPoP-Nonce value",
        )
    if not current - 1 <= issued <= current + 1:
        raise UseDPoPNonce(
            _encode_nonce(secret, current),
            "the DPoP proof nonce is no longer valid: retry with the DPoP-Nonce value",
        )


def nonce_checker(
    secret: bytes, now: datetime, step: timedelta = DEFAULT_NONCE_STEP
) -> NonceCheck:
    """The ``nonce_check`` argument of ``verify_dpop_proof`` for this server's nonces."""

    def check(nonce: str | None) -> None:
        check_nonce(secret, nonce, now, step=step)

    return check


def _step_number(now: datetime, step: timedelta) -> int:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    seconds = step.total_seconds()
    if seconds < 1:
        raise ValueError("the nonce step must be at least one second")
    return int(now.timestamp() // seconds)


def _mac(secret: bytes, step_bytes: bytes) -> bytes:
    if not secret:
        raise ValueError("the nonce secret is empty")
    return hmac.new(secret, _NONCE_CONTEXT + step_bytes, hashlib.sha256).digest()[:_MAC_BYTES]


def _encode_nonce(secret: bytes, step_number: int) -> str:
    step_bytes = step_number.to_bytes(_STEP_BYTES, "big")
    raw = step_bytes + _mac(secret, step_bytes)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_nonce(secret: bytes, value: str) -> int | None:
    """The step a genuine nonce was issued in; None for anything this server did not issue."""
    if not isinstance(value, str) or not _NONCE.fullmatch(value):
        return None
    try:
        raw = base64.urlsafe_b64decode(value)
    except (binascii.Error, ValueError):
        return None
    step_bytes, mac = raw[:_STEP_BYTES], raw[_STEP_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, step_bytes)):
        return None
    return int.from_bytes(step_bytes, "big")

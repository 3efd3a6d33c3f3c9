"""DPoP at the Authorization Server (RFC 9449): replay refusal and server nonces that hold
across every replica.

:func:`missionbound.protocol.dpop.verify_dpop_proof` checks a proof on its own; what needs
state shared by the replicas lives here, in the database:

- Replay (section 11.1): a proof's ``jti`` is recorded with ``consume_once`` under the key
  ``<jkt>:<jti>``, inside the caller's transaction. The primary key makes it exactly-once on
  any number of replicas.
- Server nonces (section 8) are stateless: ``base64url(step || HMAC-SHA256(secret, step))``,
  where ``step`` counts :data:`DEFAULT_NONCE_STEP` periods since the epoch and ``secret`` is
  one server secret every replica reads. Any replica checks a nonce another one issued, with no
  table to write or read per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from missionbound.protocol.dpop import (
    DPoPProof,
    DPoPProofError,
    NonceCheck,
    UseDPoPNonce,
    single_dpop_header,
    verify_dpop_proof,
)
from missionbound.store.secrets import server_secret
from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store

REPLAY_NAMESPACE = "dpop-jti"
NONCE_SECRET_NAME = "dpop-nonce"

# A jti is remembered a minute past the last instant its proof could be accepted: replicas'
# clocks disagree a little, and a replica whose clock runs ahead must not purge it while
# one running behind would still accept the proof.
REPLAY_MARGIN = timedelta(seconds=60)

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


def check_not_replayed(session: Session, proof: DPoPProof, *, now: datetime) -> None:
    """Refuse a proof whose ``jti`` this key already used (RFC 9449 section 11.1).

    Runs inside the caller's transaction, and that is what we want: if the request rolls
    back, the proof authorized nothing, so the jti stays unused and the same proof may still
    be presented once. What counts is that no two requests a proof authorized both take
    effect, which the primary key guarantees on every replica.

    The key is scoped by the proof's key thumbprint: only the key's holder can spend its
    jtis, so nobody can block another client's jti by sending it first with their own key.
    """
    expires_at = max(proof.accepted_until, now) + REPLAY_MARGIN
    if not consume_once(session, REPLAY_NAMESPACE, f"{proof.jkt}:{proof.jti}", expires_at):
        raise DPoPProofError("DPoP proof jti was already used: sign a new proof for each request")


def load_nonce_secret(store: Store, *, now: datetime) -> bytes:
    """The nonce secret every replica shares, created in its own transaction on first use.

    Call it at start and keep the bytes (the secret never changes). Never read it inside a
    request's transaction: a request refused with ``use_dpop_nonce`` rolls back, and with it
    a secret created there, so the nonce just sent would never verify.
    """
    with store.begin() as session:
        return server_secret(session, NONCE_SECRET_NAME, now=now)


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


def verify_request_proof(
    session: Session,
    header_values: Sequence[str],
    *,
    method: str,
    url: str,
    now: datetime,
    access_token: str | None = None,
    nonce_secret: bytes | None,
    nonce_step: timedelta = DEFAULT_NONCE_STEP,
) -> DPoPProof | None:
    """Check the request's ``DPoP`` header end to end; None when it sent none.

    ``header_values`` are all the ``DPoP`` header values the request carried. With a
    ``nonce_secret`` (from :func:`load_nonce_secret`) the proof must carry a current server
    nonce; pass None when this server issues none. Per RFC 9449 section 11.3, a server that
    has sent a client a ``DPoP-Nonce`` must require it, so pass the secret on every endpoint
    that ever sends one. The jti is consumed in ``session``'s transaction, last, once every
    other check passed.
    """
    proof_text = single_dpop_header(header_values)
    if proof_text is None:
        return None
    proof = verify_dpop_proof(
        proof_text,
        method=method,
        url=url,
        now=now,
        access_token=access_token,
        nonce_check=None if nonce_secret is None else nonce_checker(nonce_secret, now, nonce_step),
    )
    check_not_replayed(session, proof, now=now)
    return proof


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

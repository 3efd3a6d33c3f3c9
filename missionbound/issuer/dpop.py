"""DPoP at the Authorization Server (RFC 9449): replay refusal and server nonces that hold
across every replica.

:func:`missionbound.protocol.dpop.verify_dpop_proof` checks a proof on its own; what needs
state shared by the replicas lives here, in the database:

- Replay (section 11.1): a proof's ``jti`` is recorded with ``consume_once`` under the key
  ``<jkt>:<jti>``, inside the caller's transaction. The primary key makes it exactly-once on
  any number of replicas.
- Server nonces (section 8) are stateless (:mod:`missionbound.protocol.dpop_nonces`); their
  secret is created once in the database, so every replica reads the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from missionbound.protocol.dpop import (
    DPoPProof,
    DPoPProofError,
    single_dpop_header,
    verify_dpop_proof,
)
from missionbound.protocol.dpop_nonces import DEFAULT_NONCE_STEP, nonce_checker
from missionbound.store.secrets import server_secret
from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store

REPLAY_NAMESPACE = "dpop-jti"
NONCE_SECRET_NAME = "dpop-nonce"

# A jti is remembered a minute past the last instant its proof could be accepted: replicas'
# clocks disagree a little, and a replica whose clock runs ahead must not purge it while
# one running behind would still accept the proof.
REPLAY_MARGIN = timedelta(seconds=60)



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

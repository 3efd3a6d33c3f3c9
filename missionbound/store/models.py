"""Every table of the project, as SQLAlchemy 2 typed declarative models.

One metadata so that the Alembic migrations (``missionbound/store/migrations``) can be
checked against it. Times are :class:`~missionbound.store.column_types.UTCDateTime`; JSON
members are plain JSON. Constraint names follow one naming convention so that migrations
produce the same names on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from missionbound.store.column_types import BigId, JSONColumn, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(255)  # client ids, kids, jtis, approval event ids
MISSION_ID = String(128)  # "msn_" + up to 124 base64url characters (record.MISSION_ID)
DIGEST = String(128)  # "sha-256:" + 43 characters, or a token hash
STATE = String(32)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONColumn,
        list[Any]: JSONColumn,
    }


def _mission_fk() -> ForeignKey:
    return ForeignKey("missions.mission_id")


class Client(Base):
    """A registered OAuth client (RFC 7591 metadata as JSON)."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(ID, primary_key=True)
    # "metadata" is reserved on declarative classes; the column keeps the RFC 7591 name.
    client_metadata: Mapped[dict[str, Any]] = mapped_column("metadata")
    secret_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]


class SigningKey(Base):
    """A JOSE signing key. Retired keys stay published until ``not_after`` so tokens they
    signed still verify."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(ID, primary_key=True)
    alg: Mapped[str] = mapped_column(String(16))
    private_jwk: Mapped[dict[str, Any]]
    public_jwk: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    retired_at: Mapped[datetime | None]
    not_after: Mapped[datetime | None]


class Mission(Base):
    """PROFILE.md section 7. ``record`` holds the immutable members (the JSON form without
    ``state``, ``version`` and ``lifecycle_history``); the other columns are the mutable
    state and copies of members used for filtering."""

    __tablename__ = "missions"
    __table_args__ = (Index(None, "state", "mission_expiry"),)

    mission_id: Mapped[str] = mapped_column(MISSION_ID, primary_key=True)
    state: Mapped[str] = mapped_column(STATE)
    version: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict[str, Any]]
    subject_sub: Mapped[str | None] = mapped_column(ID, index=True)
    client_id: Mapped[str] = mapped_column(ID, index=True)
    created_at: Mapped[datetime]
    mission_expiry: Mapped[datetime]
    activated_at: Mapped[datetime | None]
    # The approval idempotency key (issuance digest 4.8): one approval event, one Mission.
    approval_event_id: Mapped[str | None] = mapped_column(ID, unique=True)


class MissionHistory(Base):
    """One row per committed lifecycle event; ``version`` is the version it produced."""

    __tablename__ = "mission_history"
    __table_args__ = (UniqueConstraint("mission_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    mission_id: Mapped[str] = mapped_column(MISSION_ID, _mission_fk())
    version: Mapped[int] = mapped_column(Integer)
    from_state: Mapped[str | None] = mapped_column(STATE)
    to_state: Mapped[str] = mapped_column(STATE)
    event: Mapped[str] = mapped_column(String(32))
    actor: Mapped[dict[str, Any] | None]
    reason: Mapped[str | None] = mapped_column(String(1024))
    committed_at: Mapped[datetime]


class DerivationCounter(Base):
    """PROFILE.md section 8: operational state beside the record, checked and incremented
    atomically with issuance."""

    __tablename__ = "derivation_counters"

    mission_id: Mapped[str] = mapped_column(MISSION_ID, _mission_fk(), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class PushedAuthorizationRequest(Base):
    """RFC 9126: a pushed request, single use, bound to the client that pushed it."""

    __tablename__ = "pushed_authorization_requests"

    request_uri: Mapped[str] = mapped_column(String(512), primary_key=True)
    client_id: Mapped[str] = mapped_column(ID, index=True)
    params: Mapped[dict[str, Any]]
    mission_id: Mapped[str | None] = mapped_column(MISSION_ID, _mission_fk(), index=True)
    expires_at: Mapped[datetime]
    consumed_at: Mapped[datetime | None]


class AuthorizationCode(Base):
    """RFC 6749 section 4.1 code (stored as a hash), PKCE S256 challenge, DPoP ``dpop_jkt``."""

    __tablename__ = "authorization_codes"

    code_hash: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    mission_id: Mapped[str] = mapped_column(MISSION_ID, _mission_fk(), index=True)
    client_id: Mapped[str] = mapped_column(ID)
    redirect_uri: Mapped[str] = mapped_column(String(2048))
    code_challenge: Mapped[str] = mapped_column(String(128))
    dpop_jkt: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class RefreshTokenFamily(Base):
    """All refresh tokens descended from one grant; reuse of a rotated member revokes it."""

    __tablename__ = "refresh_token_families"

    family_id: Mapped[str] = mapped_column(ID, primary_key=True)
    mission_id: Mapped[str] = mapped_column(MISSION_ID, _mission_fk(), index=True)
    client_id: Mapped[str] = mapped_column(ID)
    dpop_jkt: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class RefreshToken(Base):
    """An opaque refresh token (stored as a hash), rotated on every use."""

    __tablename__ = "refresh_tokens"

    token_hash: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    family_id: Mapped[str] = mapped_column(
        ID, ForeignKey("refresh_token_families.family_id"), index=True
    )
    mission_id: Mapped[str] = mapped_column(MISSION_ID, _mission_fk(), index=True)
    client_id: Mapped[str] = mapped_column(ID)
    dpop_jkt: Mapped[str | None] = mapped_column(String(128))
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class IssuedToken(Base):
    """Every token the AS minted, by ``jti`` (joins RS logs to issuance: issuance digest 12)."""

    __tablename__ = "issued_tokens"

    jti: Mapped[str] = mapped_column(ID, primary_key=True)
    # No foreign key: a Resource AS records local tokens of Missions held by their origin
    # (migration 0003). The issuer writes a row only under the gate's lock on its Mission.
    mission_id: Mapped[str] = mapped_column(MISSION_ID, index=True)
    client_id: Mapped[str] = mapped_column(ID)
    kind: Mapped[str] = mapped_column(String(32))
    # A string or an array, exactly as the token's "aud" claim.
    aud: Mapped[Any] = mapped_column(JSONColumn, nullable=True)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    # RFC 7009: an access token revoked before it expires (introspection then says inactive).
    revoked_at: Mapped[datetime | None]
    # The grant it came from (its refresh token family): a replayed code or refresh token
    # revokes every token of that grant (RFC 6749 section 4.1.2, PROFILE.md section 8).
    grant_id: Mapped[str | None] = mapped_column(ID, index=True)


class RemoteMission(Base):
    """Resource AS role: the last state an origin's signed Mission Status reported for one
    of its Missions (docs/cross-domain.md). Never a Mission record: the origin alone holds
    that. Updated only forward by ``version``, so an older answer never regresses it."""

    __tablename__ = "remote_missions"

    origin: Mapped[str] = mapped_column(ID, primary_key=True)
    mission_id: Mapped[str] = mapped_column(MISSION_ID, primary_key=True)
    state: Mapped[str] = mapped_column(STATE)
    version: Mapped[int] = mapped_column(Integer)
    mission_expiry: Mapped[datetime | None]
    checked_at: Mapped[datetime]


class ServerSecret(Base):
    """Random secrets every replica must share (session and CSRF MACs, DPoP nonces): made
    once by whichever replica asks first, never leaving the database."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class SingleUseId(Base):
    """Exactly-once values (DPoP ``jti``, ID-JAG ``jti``, nonces): the primary key does it."""

    __tablename__ = "single_use_ids"

    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class AuditRecord(Base):
    """PROFILE.md section 15: one link of the hash-chained audit log (see missionbound.audit).

    ``seq`` is assigned by the appender (never by the database) so that a deleted record
    shows as a gap; ``mission_seq`` numbers the records of one Mission."""

    __tablename__ = "audit_records"
    __table_args__ = (
        UniqueConstraint("mission_id", "mission_seq"),
        # The writer's tamper check reads a Mission's last lifecycle record without walking
        # back through its token and decision records.
        Index(None, "mission_id", "event", "mission_seq"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    mission_id: Mapped[str | None] = mapped_column(MISSION_ID)
    mission_seq: Mapped[int | None] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(64))
    actor: Mapped[dict[str, Any] | None]
    proposal_hash: Mapped[str | None] = mapped_column(DIGEST)
    consent_rendering_hash: Mapped[str | None] = mapped_column(DIGEST)
    authority_hash: Mapped[str | None] = mapped_column(DIGEST)
    policy_version: Mapped[str | None] = mapped_column(String(255))
    data: Mapped[dict[str, Any]]
    at: Mapped[datetime]
    prev_hash: Mapped[str | None] = mapped_column(DIGEST)
    mission_prev_hash: Mapped[str | None] = mapped_column(DIGEST)
    record_hash: Mapped[str] = mapped_column(DIGEST)


class AuditChainHead(Base):
    """A single row (id 1): the end of the global chain. Appenders lock it, so the chain
    cannot fork however many replicas write."""

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str | None] = mapped_column(DIGEST)


class OutboxEvent(Base):
    """An event to deliver at least once (SSF push, cache invalidation), written in the
    same transaction as the change it announces (PROFILE.md section 10, "Signals")."""

    __tablename__ = "outbox_events"
    __table_args__ = (Index(None, "delivered_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(128))
    mission_id: Mapped[str | None] = mapped_column(MISSION_ID, index=True)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime]


class LifecycleRequest(Base):
    """A lifecycle endpoint request already answered (PROFILE.md section 10): the ``nonce``
    is the retry key per caller and Mission, so a retransmit is recognised and the same
    nonce with another request is refused (issuance digest 5.4)."""

    __tablename__ = "lifecycle_requests"

    caller: Mapped[str] = mapped_column(ID, primary_key=True)
    mission_id: Mapped[str] = mapped_column(MISSION_ID, primary_key=True)
    nonce: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_digest: Mapped[str] = mapped_column(DIGEST)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class SignalStream(Base):
    """An OpenID Shared Signals stream (SSF 1.0 section 8): one receiver, one delivery method.

    ``client_id`` is the receiver that created it; it receives the events of every Mission
    that client may see. ``next_attempt_at`` and ``attempts`` pace push delivery of the whole
    stream: events go out in order, so a failing receiver holds its own queue, never others'."""

    __tablename__ = "ssf_streams"

    stream_id: Mapped[str] = mapped_column(ID, primary_key=True)
    client_id: Mapped[str] = mapped_column(ID, index=True)
    audience: Mapped[str] = mapped_column(String(2048))
    delivery_method: Mapped[str] = mapped_column(String(64))
    endpoint_url: Mapped[str | None] = mapped_column(String(2048))
    authorization_header: Mapped[str | None] = mapped_column(String(4096))
    events_requested: Mapped[list[Any]]
    description: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(1024))


class SignalDelivery(Base):
    """One Security Event Token owed to one stream (RFC 8935 push or RFC 8936 poll), written
    in the transaction that fans an outbox event out, removed from the queue when the
    receiver acknowledged it (``delivered_at``). ``claims`` is the SET payload; it is signed
    when sent, with the key current then."""

    __tablename__ = "ssf_deliveries"
    __table_args__ = (Index(None, "stream_id", "delivered_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(
        ID, ForeignKey("ssf_streams.stream_id", ondelete="CASCADE")
    )
    jti: Mapped[str] = mapped_column(ID, unique=True)
    event_type: Mapped[str] = mapped_column(String(255))
    mission_id: Mapped[str | None] = mapped_column(MISSION_ID)
    claims: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(1024))


# -- Level 4 runtime (PROFILE.md section 12): migration 0004 ----------------------------------
# The PDP's operational tables carry no foreign key to ``missions``: on PostgreSQL inserting a
# referencing row takes a key-share lock on the Mission row, so every permit would queue behind
# any lifecycle transaction holding it (FOR UPDATE); the PDP reads the state separately anyway.


class PolicyArtifact(Base):
    """The policy artifact compiled at approval (PROFILE.md section 12, "Policy artifact"):
    the PDP evaluates what was approved, even after the catalog changed. Written in the
    approval transaction, which already holds the Mission row."""

    __tablename__ = "policy_artifacts"

    mission_id: Mapped[str] = mapped_column(MISSION_ID, _mission_fk(), primary_key=True)
    policy_version: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    artifact: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class MeterCounter(Base):
    """One consumption bound of one Mission entry (runtime-digest 7.3, ``counter_scope``
    mission): ``used`` counts what is reserved or committed, exact decimal text (calls and
    seconds are integers, money a decimal string in ``currency``)."""

    __tablename__ = "meter_counters"

    mission_id: Mapped[str] = mapped_column(MISSION_ID, primary_key=True)
    entry_digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    bound: Mapped[str] = mapped_column(String(32), primary_key=True)
    limit_value: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str | None] = mapped_column(String(3))
    used: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]


class MeterReservation(Base):
    """What one permit (``evaluation_id``) reserved on one counter, and how it settled
    (runtime-digest 7.4): ``reserved`` until execution evidence commits or releases it."""

    __tablename__ = "meter_reservations"

    evaluation_id: Mapped[str] = mapped_column(ID, primary_key=True)
    entry_digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    bound: Mapped[str] = mapped_column(String(32), primary_key=True)
    mission_id: Mapped[str] = mapped_column(MISSION_ID, index=True)
    amount: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    lease_until: Mapped[datetime]
    settled_at: Mapped[datetime | None]


class IdempotencyClaim(Base):
    """An idempotency key claimed for one operation (runtime-digest 4.6): the key's scope
    (Mission, subject, actor, audience, action, resource) as a digest, the operation it names
    and the permit issued for it, kept as a tombstone until ``expires_at``."""

    __tablename__ = "idempotency_claims"

    mission_id: Mapped[str] = mapped_column(MISSION_ID, primary_key=True)
    scope_digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    operation_digest: Mapped[str] = mapped_column(DIGEST)
    evaluation_id: Mapped[str] = mapped_column(ID)
    permit: Mapped[str] = mapped_column(String())
    valid_until: Mapped[datetime]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


# -- Runtime evidence (runtime-digest sections 5.1-5.5): migration 0005 -------------------------
EVIDENCE_CHAIN = String(300)  # a mission_id, or "emitter:" + an emitter id (at most 255)


class EvidenceRecord(Base):
    """One signed evidence record (Decision Evidence, Refusal Record or Execution Evidence),
    stored whole with its ``evidence_envelope`` (runtime-digest 5.4). Records of one chain
    (a Mission, or the records of one emitter that name no Mission) carry ``sequence``
    1, 2, ... and ``prev_hash``, the ``record_hash`` of the one before (section 5.5).
    No foreign key to ``missions``, for the reason given above for the runtime tables."""

    __tablename__ = "evidence_records"
    __table_args__ = (UniqueConstraint("chain_id", "sequence"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(EVIDENCE_CHAIN)
    sequence: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    record_id: Mapped[str] = mapped_column(String(64), unique=True)
    mission_id: Mapped[str | None] = mapped_column(MISSION_ID)
    evaluation_id: Mapped[str | None] = mapped_column(ID, index=True)
    recorded_at: Mapped[datetime]
    record: Mapped[dict[str, Any]]
    record_hash: Mapped[str] = mapped_column(DIGEST)
    prev_hash: Mapped[str | None] = mapped_column(DIGEST)


class EvidenceChainHead(Base):
    """The last record of each evidence chain, locked by every append (it serializes one
    chain, never two) and compared by the verifier, so a record cut from a chain's end is
    noticed like one cut from its middle."""

    __tablename__ = "evidence_chain_heads"

    chain_id: Mapped[str] = mapped_column(EVIDENCE_CHAIN, primary_key=True)
    last_sequence: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(DIGEST)

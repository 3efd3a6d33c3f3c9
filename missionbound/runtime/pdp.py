"""The co-located Mission PDP: the AuthZEN Authorization API 1.0 decisions of PROFILE.md
section 12 against the Missions this AS holds (runtime-digest sections 1.4-1.10, 3.2-3.7,
4.4-4.6, 7.4-7.5).

One evaluation is one store transaction, in the order of runtime-digest section 1.10:

1. read the request (:func:`~missionbound.runtime.request.request_from_authzen`, 400 when
   malformed) and check the caller speaks for its ``resource.properties.audience`` (403);
2. the Mission: its record through the process's Mission state cache when the cache can vouch
   for it (store/mission_cache.py), else the database; clock first (a Mission past
   ``mission_expiry`` is ``expired``, as at introspection); the policy artifact compiled at
   approval, parsed once per process and kept by ``(mission_id, policy_version)`` (it never
   changes: a new authority is a new version);
3. :func:`~missionbound.runtime.decision.decide`, pure;
4. for a permit: the idempotency claim (a retransmission gets the prior decision unchanged,
   section 1.8), the metering reservation (all or nothing, section 7.4; a bound exhausted is
   ``quota_exceeded``), the ``evaluation_id``, and for a parameter-bound class the
   ``conditions`` and the signed permit (section 3.5);
5. Decision Evidence for every decision on a gated class, permit or deny, in the same
   transaction: nothing is answered without its record (section 5.1).

A deny is HTTP 200 ``{"decision": false, "context": {"evaluation_id", "reason"}}``; the
policy, the failing constraint and the detail stay in the evidence (denial-oracle
minimisation, section 1.6). A Mission this PDP does not hold is denied like a Mission
reference that does not match (``view_inconsistent``), never a 404 (decision M110).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from missionbound.issuer.introspection import read_mission
from missionbound.issuer.keys import SignerKey
from missionbound.mission.catalog import Catalog
from missionbound.mission.errors import InvalidState
from missionbound.mission.lifecycle import State, effective_state
from missionbound.mission.record import MISSION_ID, MissionRecord, format_instant
from missionbound.protocol.jose_segments import b64url_decode
from missionbound.protocol.tool_manifest import tool_id
from missionbound.runtime import idempotency, metering, mission_search
from missionbound.runtime.authzen import run_batch
from missionbound.runtime.classification import classify, is_gated
from missionbound.runtime.compiler import (
    CompiledPolicy,
    PolicyArtifact,
    PolicyCache,
    PolicyCompileError,
    load_policy,
)
from missionbound.runtime.decision import (
    Charge,
    Decision,
    MissionView,
    ResourcePolicy,
    StateView,
    decide,
)
from missionbound.runtime.errors import (
    CallerForbidden,
    MalformedRequest,
    MissionContextMissing,
)
from missionbound.runtime.evidence import EvidenceLog
from missionbound.runtime.permits import PermitWindowTooShort, mint_permit
from missionbound.runtime.reasons import Reason
from missionbound.runtime.request import MAX_NAME, DecisionRequest, request_from_authzen
from missionbound.store import runtime as runtime_rows
from missionbound.store.mission_cache import MissionStateCache
from missionbound.store.models import Mission
from missionbound.store.transactions import Store

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer

# runtime-digest 3.5: 1*64(ALPHA / DIGIT / "-" / "_") with >= 128 bits of entropy; "dec_"
# + 24 base64url characters carries 144.
EVALUATION_ID_PREFIX: Final = "dec_"
EVALUATION_ID_BYTES: Final = 18
# A transient deny (stale_state) asks the PEP to come back after this many seconds. The
# co-located PDP reads the authoritative store, so a version mismatch is the PEP's view
# lagging: one second is enough for its cache to catch up (decision M116).
RETRY_AFTER_SECONDS: Final = 1
POLICY_CACHE_ENTRIES: Final = 4096
# The counter name of a Mission-wide consumption bound (one per Mission and bound).
MISSION_WIDE_COUNTER: Final = "mission"
# The Refusal Record reason of an evaluation that names no Mission (runtime-digest 3.8).
MISSION_CONTEXT_MISSING: Final = "mission_context_missing"


@dataclass(frozen=True, slots=True)
class PepCaller:
    """An authenticated PEP (web/authzen.py): its client id and the resources it speaks
    for. It may only ask about its own audiences."""

    client_id: str
    audiences: frozenset[str]


# The Mission row, share-locked to the end of the evaluation's transaction: a revoke (which
# locks it FOR UPDATE) waits for every evaluation that read the Mission active, and an
# evaluation that starts after it reads the revoke, so a revoke acknowledged is never followed
# by a permit (DESIGN.md "Atomic truth"). Evaluations do not wait for each other. SQLite has
# no row locks: its BEGIN IMMEDIATE already serialises the two transactions.
_MISSION_VERSION_SHARED: Final = (
    select(Mission.version)
    .where(Mission.mission_id == bindparam("mission_id"))
    .with_for_update(read=True)
)


def _share_lock(session: Session, mission_id: str) -> int | None:
    version = session.connection().execute(
        _MISSION_VERSION_SHARED, {"mission_id": mission_id}).scalar()
    return version if isinstance(version, int) else None


def new_evaluation_id() -> str:
    return EVALUATION_ID_PREFIX + secrets.token_urlsafe(EVALUATION_ID_BYTES)


class _Unanswerable(Exception):
    """A Mission the PDP cannot evaluate against: denied with ``reason`` before decide()."""

    def __init__(self, reason: Reason, record: MissionRecord | None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.record = record


class MissionPDP:
    """The Mission PDP of this AS (``app.state.mission_pdp``). Thread-safe: FastAPI calls it
    from its thread pool; what it keeps per process (compiled policies by content
    digest) never changes once written."""

    def __init__(
        self,
        *,
        issuer: MissionIssuer,
        mission_cache: MissionStateCache | None,
        evidence: EvidenceLog,
        tenants: Mapping[str, ResourcePolicy],
        permit_lifetime_seconds: int = 60,
        policy_cache: PolicyCache | None = None,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not 1 <= permit_lifetime_seconds <= 60:
            # PROFILE.md section 12: a permit lives at most 60 s.
            raise ValueError("permit_lifetime_seconds must be 1 to 60")
        self._issuer = issuer
        self._store = issuer.store
        self._catalog: Catalog = issuer.tenant.catalog
        self._cache = mission_cache
        self._evidence = evidence
        self._tenants = tenants
        self._permit_lifetime = timedelta(seconds=permit_lifetime_seconds)
        self._policies = policy_cache or PolicyCache(max_entries=POLICY_CACHE_ENTRIES)
        # Told of every decision once committed (web/metrics.py counts them).
        self._on_decision = on_decision or _uncounted

    @property
    def issuer_url(self) -> str:
        return str(self._issuer.issuer)

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(self, body: dict[str, Any], caller: PepCaller) -> dict[str, Any]:
        """One access evaluation (AuthZEN 1.0 section 6) as a decision object. Raises
        :class:`~missionbound.runtime.errors.AuthZenError` for a request it cannot evaluate
        (400 malformed, 403 another PEP's audience); every decision, deny included, is
        HTTP 200."""
        try:
            request = request_from_authzen(body)
        except MissionContextMissing:
            self._refuse_without_mission(body, caller)
            raise
        check_audience(request.audience, caller)
        # The signing key is read before the transaction opens (issuer/server.py run: on
        # SQLite a second transaction inside this one must not wait for the write lock);
        # the evidence log's own signer() then answers from the issuer's cache.
        signer = self._issuer.signer()
        now = self._issuer.clock()
        with self._store.begin() as session:
            answer = self._evaluate(session, request, signer, now)
        self._on_decision(answer)
        return answer

    def evaluate_batch(self, items: list[dict[str, Any]], caller: PepCaller,
                       semantic: str) -> list[dict[str, Any]]:
        """Access evaluations (AuthZEN 1.0 section 7): each item is evaluated, metered and
        recorded on its own, in request order, in its own transaction; an item that cannot
        be evaluated is a deny carrying its error (section 7.2). Under a short-circuit
        ``semantic`` the items after the deciding one are neither evaluated nor returned
        (section 7.1.2)."""
        return run_batch(items, semantic, lambda item: self.evaluate(item, caller))

    def _evaluate(self, session: Session, request: DecisionRequest, signer: SignerKey,
                  now: datetime) -> dict[str, Any]:
        try:
            record, policy, state = self._establish(session, request, now)
        except _Unanswerable as refused:
            return self._refuse(session, request, refused, now)
        decision = decide(policy, MissionView.of(record), state, request,
                          catalog=self._catalog, now=now, resource_policies=self._tenants,
                          permit_lifetime=self._permit_lifetime)
        evaluation_id = new_evaluation_id()
        if not decision.allowed:
            return self._deny(session, record, policy, request, decision, evaluation_id, now)
        return self._permit(session, record, policy, request, decision, evaluation_id,
                            signer, now)

    def _establish(self, session: Session, request: DecisionRequest,
                   now: datetime) -> tuple[MissionRecord, CompiledPolicy, StateView]:
        """The Mission's record, compiled policy and effective state, or _Unanswerable."""
        if request.mission_issuer != self.issuer_url or not MISSION_ID.fullmatch(
                request.mission_id):
            raise _Unanswerable(Reason.VIEW_INCONSISTENT, None)
        try:
            record = read_mission(session, request.mission_id, self._cache)
            if record is not None and _share_lock(session, record.mission_id) != record.version:
                # Changed since the cache filled (or is changing): the row as locked.
                record = read_mission(session, request.mission_id)
        except InvalidState:
            # An unreadable record or unknown stored state permits nothing.
            raise _Unanswerable(Reason.MISSION_INACTIVE, None) from None
        if record is None:
            raise _Unanswerable(Reason.VIEW_INCONSISTENT, None)
        # Clock first, on a cached record too (as introspection does).
        state = effective_state(record.state, now=now, mission_expiry=record.mission_expiry,
                                created_at=record.created_at,
                                policy=self._issuer.lifecycle_policy)
        policy = self._policy(session, record)
        if policy is None:
            # Never approved (pending, rejected, expired before approval) or approved
            # before this build compiled artifacts: nothing to evaluate against.
            if record.authority_hash not in (None, request.authority_hash):
                raise _Unanswerable(Reason.VIEW_INCONSISTENT, record)
            raise _Unanswerable(Reason.MISSION_INACTIVE if state is not State.ACTIVE
                                else Reason.VIEW_INCONSISTENT, record)
        # Co-located: the state was read from the authoritative store (or a cache entry it
        # vouches for) just now, so its validity ends now (staleness bound 0, PROFILE.md
        # section 12 "Freshness"); the permit window is then bounded by the permit lifetime.
        return record, policy, StateView(state=state.value, version=record.version,
                                         valid_through=now)

    def _policy(self, session: Session, record: MissionRecord) -> CompiledPolicy | None:
        """The artifact compiled at approval, parsed (once per process), or None when the
        Mission has none (never approved, or approved before this build compiled
        artifacts) or it does not load: nothing to evaluate against, nothing permitted."""
        if record.authority_hash is None:
            return None
        mission_id, version = record.mission_id, record.policy_version

        def load() -> CompiledPolicy:
            stored = runtime_rows.load_policy_artifact(session, mission_id, version)
            if stored is None:
                raise PolicyCompileError("the Mission has no policy artifact")
            return load_policy(PolicyArtifact.from_json(stored))

        try:
            # The key is the artifact's content digest (the record's policy_version since
            # approval): an entry can never go stale, so it is kept without a freshness check.
            return self._policies.get(mission_id, version, load)
        except PolicyCompileError:
            return None

    # -- answers --------------------------------------------------------------------------

    def _permit(self, session: Session, record: MissionRecord, policy: CompiledPolicy,
                request: DecisionRequest, decision: Decision, evaluation_id: str,
                signer: SignerKey, now: datetime) -> dict[str, Any]:
        gated = is_gated(decision.action_class)
        valid_until = decision.valid_until or now + self._permit_lifetime
        permit: str | None = None
        if decision.parameter_bound:
            try:
                permit = self._mint(record, policy, request, decision, evaluation_id, signer,
                                    now, valid_until)
            except PermitWindowTooShort:
                return self._deny(session, record, policy, request,
                                  _denied(decision, _window_reason(request, valid_until)),
                                  evaluation_id, now)
        elif gated and int(valid_until.timestamp()) <= int(now.timestamp()):
            # The same rule as a permit's: a window that ends within this second is useless.
            return self._deny(session, record, policy, request,
                              _denied(decision, _window_reason(request, valid_until)),
                              evaluation_id, now)
        owned: idempotency.Claim | None = None
        if permit is not None and request.idempotency_key is not None:
            claimed = self._claim(session, record, request, decision, evaluation_id, permit,
                                  valid_until, now)
            if claimed.status is idempotency.ClaimStatus.REPLAY:
                if not _replay_fits(claimed.permit, request):
                    # The prior permit is bound to another key or outlives this credential:
                    # handing it out would widen this caller; a second permit for the same
                    # key would run the operation twice. Neither: a terminal conflict.
                    return self._deny(session, record, policy, request,
                                      _denied(decision, Reason.IDEMPOTENCY_CONFLICT),
                                      evaluation_id, now)
                # Section 1.8: the prior decision, same evaluation_id and permit; it was
                # recorded and metered when it was made.
                return _permit_answer(claimed.evaluation_id, decision, claimed.valid_until,
                                      claimed.permit)
            if claimed.status is not idempotency.ClaimStatus.NEW:
                return self._deny(session, record, policy, request,
                                  _denied(decision, Reason(claimed.status.value)),
                                  evaluation_id, now)
            owned = claimed
        if decision.charges:
            refused = self._reserve(session, record, decision, evaluation_id, valid_until, now)
            if refused is not None:
                if owned is not None:
                    idempotency.abandon(session, owned)
                return self._deny(session, record, policy, request, refused, evaluation_id,
                                  now)
        if gated:
            self._evidence.record_decision(session, mission=record, request=request,
                                           decision=decision, evaluation_id=evaluation_id,
                                           now=now, policy_version=policy.policy_version)
            return _permit_answer(evaluation_id, decision, valid_until, permit)
        return {"decision": True, "context": {"evaluation_id": evaluation_id}}

    def _mint(self, record: MissionRecord, policy: CompiledPolicy, request: DecisionRequest,
              decision: Decision, evaluation_id: str, signer: SignerKey, now: datetime,
              valid_until: datetime) -> str:
        assert decision.parameter_digest is not None  # decide() requires it when bound
        confirmation = request.confirmation or {}
        jkt = confirmation.get("jkt")
        return mint_permit(
            signer=signer, issuer=self.issuer_url, audience=request.audience,
            evaluation_id=evaluation_id,
            mission={"id": record.mission_id, "origin": record.origin,
                     "authority_hash": record.authority_hash or ""},
            policy_version=policy.policy_version,
            tool_id=tool_id(request.audience, request.action_name),
            action=request.action_name, parameter_digest=decision.parameter_digest,
            subject=request.subject_id, client_id=_client_id(request, record),
            act=_nested_act(request.act), jkt=jkt if isinstance(jkt, str) else None,
            use_limit=decision.use_limit, now=now, valid_until=valid_until)

    def _claim(self, session: Session, record: MissionRecord, request: DecisionRequest,
               decision: Decision, evaluation_id: str, permit: str, valid_until: datetime,
               now: datetime) -> idempotency.Claim:
        assert request.idempotency_key is not None
        resource = {"type": request.resource_type, "id": request.resource_id}
        if len(request.idempotency_key) > idempotency.MAX_KEY_LENGTH:
            raise MalformedRequest("action.properties.idempotency_key is longer than "
                                   f"{idempotency.MAX_KEY_LENGTH} characters")
        return idempotency.claim(
            session, mission_id=record.mission_id,
            scope_digest=idempotency.scope_digest(
                mission_id=record.mission_id,
                subject={"type": request.subject_type, "id": request.subject_id},
                actor={"client_id": _client_id(request, record), "act": list(request.act)},
                audience=request.audience, action=request.action_name, resource=resource),
            key=request.idempotency_key,
            operation_digest=idempotency.operation_digest(
                action=request.action_name, resource=resource,
                parameter_digest=decision.parameter_digest),
            evaluation_id=evaluation_id, permit=permit, valid_until=valid_until,
            keep_until=record.mission_expiry, now=now)

    def _reserve(self, session: Session, record: MissionRecord, decision: Decision,
                 evaluation_id: str, valid_until: datetime, now: datetime) -> Decision | None:
        """None when every charge is reserved; else the deny to answer instead."""
        try:
            reservation = metering.reserve(session, mission_id=record.mission_id,
                                           evaluation_id=evaluation_id,
                                           charges=[_Metered.of(c) for c in decision.charges],
                                           now=now, lease_until=valid_until)
        except metering.MeteringError:
            # A bound this PDP cannot meter (runtime-digest 1.4: unmetered -> refuse).
            return _denied(decision, Reason.CONSTRAINT_UNSUPPORTED)
        if reservation.ok:
            return None
        exhausted = reservation.exhausted
        keys = (exhausted.key,) if exhausted is not None else ()
        return replace(_denied(decision, Reason.QUOTA_EXCEEDED), contributing_constraints=keys)

    def _deny(self, session: Session, record: MissionRecord, policy: CompiledPolicy,
              request: DecisionRequest, decision: Decision, evaluation_id: str,
              now: datetime) -> dict[str, Any]:
        if is_gated(decision.action_class):
            self._evidence.record_decision(session, mission=record, request=request,
                                           decision=decision, evaluation_id=evaluation_id,
                                           now=now, policy_version=policy.policy_version)
        return _deny_answer(evaluation_id, decision.reason or Reason.OUT_OF_AUTHORITY)

    def _refuse(self, session: Session, request: DecisionRequest, refused: _Unanswerable,
                now: datetime) -> dict[str, Any]:
        """A deny without a compiled policy to evaluate (unknown Mission, never approved,
        no artifact). Evidence as for any deny on a gated class: on the Mission's chain when
        this AS holds the Mission, else a Refusal Record on the PDP's own chain (never a
        chain per unknown id a caller invents: decision M111)."""
        evaluation_id = new_evaluation_id()
        classified = classify(self._catalog, request.audience, request.action_name)
        if is_gated(classified.action_class):
            record = refused.record
            if record is not None:
                decision = Decision(allowed=False, reason=refused.reason,
                                    action_class=classified.action_class,
                                    class_source=classified.class_source,
                                    parameter_digest=request.parameter_digest,
                                    detail="no policy artifact to evaluate")
                self._evidence.record_decision(session, mission=record, request=request,
                                               decision=decision, evaluation_id=evaluation_id,
                                               now=now)
            else:
                self._evidence.record_refusal(
                    session, mission_id=None, audience=request.audience,
                    action=request.action_name, reason=refused.reason.value,
                    emitter_id=self.issuer_url, now=now,
                    parameter_digest=_digest_or_none(request.parameter_digest))
        return _deny_answer(evaluation_id, refused.reason)

    def _refuse_without_mission(self, body: dict[str, Any], caller: PepCaller) -> None:
        """runtime-digest 1.6: an evaluation without ``context.mission`` is never evaluated
        against anything else; it is a 400 and a Refusal Record ``mission_context_missing``
        on the PDP's own chain, when the request names one of the caller's audiences and an
        action (else there is nothing to attribute it to: only the 400)."""
        resource = body.get("resource") if isinstance(body, dict) else None
        action = body.get("action") if isinstance(body, dict) else None
        properties = resource.get("properties") if isinstance(resource, dict) else None
        audience = properties.get("audience") if isinstance(properties, dict) else None
        name = action.get("name") if isinstance(action, dict) else None
        if not (isinstance(audience, str) and audience in caller.audiences
                and isinstance(name, str) and 0 < len(name) <= MAX_NAME):
            return
        now = self._issuer.clock()
        self._issuer.signer()  # read before the transaction opens, as in evaluate()
        with self._store.begin() as session:
            self._evidence.record_refusal(
                session, mission_id=None, audience=audience, action=name,
                reason=MISSION_CONTEXT_MISSING, emitter_id=self.issuer_url, now=now)

    # -- search (runtime/mission_search.py) -----------------------------------------------

    def search(self, kind: str, body: dict[str, Any], caller: PepCaller) -> dict[str, Any]:
        """AuthZEN 1.0 search against one Mission: exposure hints, never a decision
        (:func:`missionbound.runtime.mission_search.search`)."""
        return mission_search.search(self, kind, body, caller)

    def active_policy(self, session: Session, mission_id: str, authority_hash: str,
                      now: datetime) -> tuple[MissionRecord, CompiledPolicy] | None:
        """The record and compiled policy of this AS's Mission ``mission_id`` when it is
        effectively active and its ``authority_hash`` matches, else None (read only)."""
        if not MISSION_ID.fullmatch(mission_id):
            return None
        try:
            record = read_mission(session, mission_id, self._cache)
        except InvalidState:
            return None
        if record is None or record.authority_hash != authority_hash:
            return None
        state = effective_state(record.state, now=now, mission_expiry=record.mission_expiry,
                                created_at=record.created_at,
                                policy=self._issuer.lifecycle_policy)
        policy = self._policy(session, record) if state is State.ACTIVE else None
        return None if policy is None else (record, policy)

    @property
    def clock(self) -> Callable[[], datetime]:
        return self._issuer.clock

    @property
    def store(self) -> Store:
        return self._store


# -- helpers ---------------------------------------------------------------------------------


def _uncounted(_answer: dict[str, Any]) -> None:
    """The default ``on_decision``: nobody counts."""


@dataclass(frozen=True, slots=True)
class _Metered:
    """A decision's charge as metering keys it: a Mission-wide bound (``entry_digest``
    None, ``mission_intent.context``) gets its own counter name (decision M117)."""

    key: str
    entry_digest: str
    limit: Any
    amount: Any
    currency: str | None

    @classmethod
    def of(cls, charge: Charge) -> _Metered:
        return cls(charge.key, charge.entry_digest or MISSION_WIDE_COUNTER, charge.limit,
                   charge.amount, charge.currency)


def check_audience(audience: str, caller: PepCaller) -> None:
    # A PEP asks only about the resources it speaks for (decision M47 of the HTTP layer;
    # checked here too, so every caller of the PDP gets the same rule).
    if audience not in caller.audiences:
        raise CallerForbidden("resource.properties.audience is not a resource client "
                              f"{caller.client_id!r} speaks for")


def _denied(decision: Decision, reason: Reason) -> Decision:
    return replace(decision, allowed=False, reason=reason, charges=(), valid_until=None,
                   use_limit=None)


def _window_reason(request: DecisionRequest, valid_until: datetime) -> Reason:
    """Why a permit window closed before it opened: the credential ends now, or else the
    Mission does (decision M115)."""
    if request.credential_expires_at is not None and request.credential_expires_at <= (
            valid_until):
        return Reason.CREDENTIAL_INVALID
    return Reason.MISSION_INACTIVE


def _permit_answer(evaluation_id: str, decision: Decision, valid_until: datetime,
                   permit: str | None) -> dict[str, Any]:
    """Section 3.5: ``conditions`` on every consequential permit; ``parameter_digest`` and
    the signed permit when the class is parameter-bound."""
    conditions: dict[str, Any] = {}
    if decision.parameter_bound and decision.parameter_digest is not None:
        conditions["parameter_digest"] = decision.parameter_digest
    conditions["valid_until"] = format_instant(valid_until)
    if decision.use_limit is not None:
        conditions["use_limit"] = decision.use_limit
    context: dict[str, Any] = {"evaluation_id": evaluation_id, "conditions": conditions}
    if permit is not None:
        context["permit"] = permit
    return {"decision": True, "context": context}


def _deny_answer(evaluation_id: str, reason: Reason) -> dict[str, Any]:
    context: dict[str, Any] = {"evaluation_id": evaluation_id, "reason": reason.value}
    if reason is Reason.STALE_STATE:
        # Section 3.5: a transient deny tells the PEP when to ask again.
        context["next_action"] = "retry"
        context["retry_after"] = RETRY_AFTER_SECONDS
    return {"decision": False, "context": context}


def _client_id(request: DecisionRequest, record: MissionRecord) -> str:
    """The client the caller's token was issued to: ``context.actor.client_id``, else the
    immediate actor of the ``act`` chain, else (undelegated) the Mission's client."""
    if request.client_id is not None:
        return request.client_id
    if request.act:
        return request.act[-1]["sub"]
    return record.client_id


def _nested_act(chain: tuple[dict[str, str], ...]) -> dict[str, Any] | None:
    """RFC 8693 section 4.1 ``act`` from AuthZEN's root -> leaf list: the immediate actor
    outermost, each prior actor nested in it."""
    nested: dict[str, Any] | None = None
    for actor in chain:
        member: dict[str, Any] = dict(actor)
        if nested is not None:
            member["act"] = nested
        nested = member
    return nested


def _digest_or_none(value: str | None) -> str | None:
    return value if value is not None and len(value) <= 128 else None


def _replay_fits(permit: str, request: DecisionRequest) -> bool:
    """Whether the permit of a retransmission (minted by this PDP, read back from its own
    store) may go to ``request``'s caller: bound to the same key, and not outliving the
    credential the retry presents (PROFILE.md section 12: exp <= the token's exp)."""
    claims = json.loads(b64url_decode(permit.split(".")[1]))
    bound = (claims.get("cnf") or {}).get("jkt")
    presented = (request.confirmation or {}).get("jkt")
    expires_at = request.credential_expires_at
    return bound == presented and (
        expires_at is None or int(claims["exp"]) <= int(expires_at.timestamp()))


__all__ = ["MissionPDP", "PepCaller", "check_audience", "new_evaluation_id"]

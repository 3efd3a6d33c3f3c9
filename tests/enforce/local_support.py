"""What the local tool runner tests share: permits signed by the Authorization Server's real
key from the store (``runtime.permits.mint_permit``) with the Decision Evidence the PDP
records for each, the DB-backed verifier (``runtime.permits.verify_permit``: the ``jti``
spent in ``single_use_ids``), Execution Evidence reported to the PDP's real execution intake
(``runtime.execution.ExecutionIntake.recorder``: recorded and settled in a transaction of its
own), and side effects counted outside the runner (a file, so another process can count too).

The permits are minted here rather than asked of the PDP so that a test can make the ones
the PDP never would (another audience, another tool, a short window);
tests/runtime/test_execution.py reports on the real PDP's permits.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select

from missionbound.enforce.local import DEFAULT_EMITTER, PermitVerifierLike
from missionbound.issuer.keys import ensure_signing_key, public_jwks, signing_key
from missionbound.mission.canonical import digest_json
from missionbound.mission.catalog import ActionClass
from missionbound.mission.record import MissionRecord
from missionbound.protocol import tool_manifest
from missionbound.protocol.jwks import StaticKeys
from missionbound.runtime.decision import Decision
from missionbound.runtime.evidence import EvidenceLog
from missionbound.runtime.execution import ExecutionIntake, ExecutionRecorder
from missionbound.runtime.permits import mint_permit, verify_permit
from missionbound.runtime.request import DecisionRequest
from missionbound.store.models import EvidenceRecord
from missionbound.store.transactions import Store

ISSUER = "https://as.example.test"
TOOLS = f"{ISSUER}/demo/mcp"  # the runner's audience: the tools are this Mission resource's
WIRE = "execute_wire_transfer"
EMAIL = "send_remittance_email"
WIRE_ARGUMENTS: dict[str, Any] = {"invoice_id": "inv-acme-1", "vendor": "acme",
                                  "amount": "120.00", "currency": "USD"}
EMAIL_ARGUMENTS: dict[str, Any] = {"invoice_id": "inv-acme-1", "to": "ap@acme.example"}


def evidence_log(store: Store, now: datetime) -> EvidenceLog:
    ensure_signing_key(store, now)
    return EvidenceLog(issuer_url=ISSUER, signer=lambda: signing_key(store, now))


def recorder(store: Store, now: datetime, *,
             emitter_id: str = DEFAULT_EMITTER) -> ExecutionRecorder:
    """The runner's recorder: the PDP's execution intake, in process."""
    return ExecutionIntake(store, evidence_log(store, now)).recorder(emitter_id, TOOLS)


def db_verifier(store: Store, now: datetime) -> PermitVerifierLike:
    """``runtime.permits.verify_permit`` with the AS's published keys and the store as the
    single-use ledger (what every replica's runner shares)."""
    keys = StaticKeys(public_jwks(store, now))
    verifier: PermitVerifierLike = partial(verify_permit, store, key_for=keys, issuer=ISSUER)
    return verifier


def mint(store: Store, mission: MissionRecord, *, now: datetime, tool_id: str = WIRE,
         arguments: Mapping[str, Any] = WIRE_ARGUMENTS, jkt: str | None = None,
         audience: str = TOOLS, lifetime: timedelta = timedelta(seconds=60),
         evaluation_id: str | None = None, signer_now: datetime | None = None) -> str:
    """A permit for the tool named ``tool_id`` over ``arguments`` (its ``tool_id`` claim is
    ``<audience>#<name>``, as the PDP mints it), signed with the AS's current key, and its
    decision recorded as the PDP records a permit (Decision Evidence)."""
    assert mission.authority_hash is not None and mission.subject is not None
    evaluation_id = evaluation_id or "dec_" + secrets.token_urlsafe(16)
    digest = digest_json(dict(arguments))
    permit = mint_permit(
        signer=signing_key(store, signer_now or now), issuer=ISSUER, audience=audience,
        evaluation_id=evaluation_id,
        mission={"id": mission.mission_id, "origin": mission.origin,
                 "authority_hash": mission.authority_hash},
        policy_version=mission.policy_version, tool_id=tool_manifest.tool_id(audience, tool_id),
        action=tool_id,
        parameter_digest=digest, subject=mission.subject.sub,
        client_id=mission.client_id, act=None, jkt=jkt, use_limit=1, now=now,
        valid_until=now + lifetime)
    request = DecisionRequest(
        subject_type="user", subject_id=mission.subject.sub, subject_iss=ISSUER,
        audience=audience, resource_type="tool", resource_id=tool_id, resource_properties={},
        action_name=tool_id, parameters=dict(arguments), parameter_digest=digest,
        idempotency_key=None, mission_id=mission.mission_id, mission_issuer=mission.origin,
        authority_hash=mission.authority_hash, client_id=mission.client_id)
    decision = Decision(allowed=True, reason=None, action_class=ActionClass.IRREVERSIBLE,
                        class_source="default", parameter_digest=digest, parameter_bound=True,
                        valid_until=now + lifetime, use_limit=1)
    with store.begin() as session:
        evidence_log(store, signer_now or now).record_decision(
            session, mission=mission, request=request, decision=decision,
            evaluation_id=evaluation_id, now=now)
    return permit


def executions(store: Store, evaluation_id: str | None = None) -> list[dict[str, Any]]:
    """The Execution Evidence records stored (of one decision when given), oldest first."""
    with store.read() as session, session.begin():
        statement = select(EvidenceRecord).where(EvidenceRecord.kind == "execution")
        if evaluation_id is not None:
            statement = statement.where(EvidenceRecord.evaluation_id == evaluation_id)
        rows = session.scalars(statement.order_by(EvidenceRecord.id)).all()
        return [dict(row.record) for row in rows]


class SideEffects:
    """A tool's effect, appended to a file: what ran, as many times as it ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def tool(self, name: str) -> Callable[..., dict[str, Any]]:
        def effect(**arguments: Any) -> dict[str, Any]:
            with self.path.open("a") as out:
                out.write(f"{name} {digest_json(arguments)}\n")
            return {"done": name, **arguments}

        return effect

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

"""Runtime evidence (PROFILE.md section 12 "Evidence", runtime-digest 5.1-5.6): each record
kind, signed with the AS key and verifiable with the published JWKS; never a raw parameter;
gap-free per-Mission sequences under concurrency; and tampering found by the offline
verifier and by ``missionbound audit verify``, which name the break. Real databases (SQLite
and PostgreSQL), real signatures."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from missionbound import audit, cli
from missionbound.issuer.keys import (
    NoSigningKey,
    SignerKey,
    ensure_signing_key,
    generate_signing_key,
    public_jwks,
    rotate_signing_key,
    signing_key,
)
from missionbound.mission.canonical import canonicalize
from missionbound.mission.catalog import ActionClass
from missionbound.mission.errors import InvalidRequest
from missionbound.mission.record import MissionRecord
from missionbound.runtime.decision import Charge, Decision
from missionbound.runtime.digests import parameter_digest
from missionbound.runtime.evidence import EvidenceLog, InvalidEvidence, verify_evidence_chain
from missionbound.runtime.evidence_format import (
    EVIDENCE_JWS_TYPE,
    RecordKind,
    record_bytes,
    sign_record,
)
from missionbound.runtime.reasons import Reason
from missionbound.runtime.request import DecisionRequest
from missionbound.store import evidence as evidence_rows
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently
from tests.store.factories import ISSUER, T0

NOW = T0 + timedelta(hours=1)
MCP = f"{ISSUER}/demo/mcp"
PEP = f"{ISSUER}/demo/mcp#gateway"
SECRET = "SECRET-7f3a9c"  # a parameter value that must never reach a record
ARGUMENTS = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00",
             "currency": "USD", "memo": SECRET}
CreateMission = Callable[..., MissionRecord]


@pytest.fixture
def key(store: Store) -> SignerKey:
    ensure_signing_key(store, NOW)
    return signing_key(store, NOW)


@pytest.fixture
def log(key: SignerKey) -> EvidenceLog:
    return EvidenceLog(issuer_url=ISSUER, signer=lambda: key)


def request_for(mission: MissionRecord, **overrides: Any) -> DecisionRequest:
    values: dict[str, Any] = {
        "subject_type": "user", "subject_id": "alice", "subject_iss": ISSUER, "audience": MCP,
        "resource_type": "invoice", "resource_id": "inv-acme-1",
        "resource_properties": {"audience": MCP, "note": SECRET},
        "action_name": "execute_wire_transfer", "parameters": ARGUMENTS,
        "parameter_digest": parameter_digest(ARGUMENTS), "idempotency_key": None,
        "mission_id": mission.mission_id, "mission_issuer": mission.origin,
        "authority_hash": mission.authority_hash or "", "client_id": "demo-agent",
        "act": ({"sub": "demo-agent", "iss": ISSUER}, {"sub": "demo-subagent"}),
    }
    return DecisionRequest(**{**values, **overrides})


def permit(**overrides: Any) -> Decision:
    values: dict[str, Any] = {
        "allowed": True, "reason": None, "action_class": ActionClass.IRREVERSIBLE,
        "class_source": "default", "entry_index": 0, "entry_digest": "sha-256:entry",
        "contributing_constraints": ("max_value", "vendors"),
        "parameter_digest": parameter_digest(ARGUMENTS), "parameter_bound": True,
        "charges": (Charge("max_calls", "sha-256:entry", 10, 1),),
        "valid_until": NOW + timedelta(seconds=60), "use_limit": 1,
        "detail": f"amount within the cap, memo {SECRET}",
    }
    return Decision(**{**values, **overrides})


def deny(reason: Reason = Reason.OUT_OF_AUTHORITY, **overrides: Any) -> Decision:
    values: dict[str, Any] = {"allowed": False, "reason": reason, "contributing_constraints": (),
                              "parameter_digest": None, "charges": (), "valid_until": None,
                              "use_limit": None, "entry_digest": None,
                              "detail": f"refused {SECRET}"}
    return permit(**{**values, **overrides})


def decide_and_record(store: Store, log: EvidenceLog, mission: MissionRecord,
                      decision: Decision | None = None, evaluation_id: str = "dec_1",
                      view: str | None = None, **request: Any) -> dict[str, Any]:
    with store.begin() as session:
        return log.record_decision(session, mission=mission,
                                   request=request_for(mission, **request),
                                   decision=decision or permit(), evaluation_id=evaluation_id,
                                   now=NOW, policy_version=view)


def payload_of(record: dict[str, Any]) -> bytes:
    segment = record["evidence_envelope"]["value"].split(".")[1]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def header_of(record: dict[str, Any]) -> dict[str, Any]:
    segment = record["evidence_envelope"]["value"].split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def stored_chain(store: Store, chain_id: str) -> list[dict[str, Any]]:
    with store.read() as session, session.begin():
        return [row.record for row in evidence_rows.chain_records(session, chain_id)]


# --------------------------------------------------------------------------- record kinds


def test_decision_evidence_of_a_permit_carries_the_join_keys(
    store: Store, log: EvidenceLog, key: SignerKey, active_mission: CreateMission
) -> None:
    mission = active_mission()
    record = decide_and_record(store, log, mission)
    assert record["evidence_id"].startswith("evd_") and len(record["evidence_id"]) >= 26
    assert record["evaluation_id"] == "dec_1"
    assert record["mission"] == {
        "id": mission.mission_id, "issuer": mission.origin, "origin": mission.origin,
        "authority_hash": mission.authority_hash, "proposal_hash": mission.proposal_hash,
        "consent_rendering_hash": mission.consent_rendering_hash,
        "policy_version": mission.policy_version, "policy_view_id": mission.policy_version}
    assert record["decision"] == "permit" and "denial_reason" not in record
    assert record["action"] == {"name": "execute_wire_transfer"}
    assert record["tool_id"] == f"{MCP}#execute_wire_transfer"
    assert record["actor"] == {"client_id": "demo-agent", "act": [
        {"sub": "demo-agent", "iss": ISSUER}, {"sub": "demo-subagent"}]}
    assert record["subject"] == {"type": "user", "id": "alice", "iss": ISSUER}
    assert record["resource"] == {"type": "invoice", "id": "inv-acme-1"}
    assert record["parameter_digest"] == parameter_digest(ARGUMENTS)
    assert "evaluation_request_digest" not in record
    assert record["conditions"] == {"use_limit": 1, "valid_until": "2026-10-15T15:33:11Z"}
    assert record["entry_digest"] == "sha-256:entry"
    assert record["action_class"] == "irreversible" and record["class_source"] == "default"
    assert record["contributing_constraints"] == ["max_value", "vendors"]
    assert record["metering"] == [{"key": "max_calls", "amount": 1}]
    assert record["emitter"] == {"id": ISSUER, "role": "pdp"}
    assert record["sequence"] == 1 and record["prev_hash"] is None
    assert header_of(record) == {"typ": EVIDENCE_JWS_TYPE, "alg": "ES256", "kid": key.kid,
                                 "cty": "application/mission-decision-evidence+json"}
    assert stored_chain(store, mission.mission_id) == [record]
    report = verify_evidence_chain([record], public_jwks(store, NOW))
    assert report.ok and report.records_checked == 1, report


def test_decision_evidence_of_a_deny_names_the_reason_and_digests_the_request(
    store: Store, log: EvidenceLog, active_mission: CreateMission
) -> None:
    mission = active_mission()
    record = decide_and_record(store, log, mission, deny(Reason.PARAMETER_VIOLATION),
                               parameter_digest=None, view="sha-256:view")
    assert record["decision"] == "deny"
    assert record["denial_reason"] == "parameter_violation"
    assert "conditions" not in record and "entry_digest" not in record
    assert "parameter_digest" not in record
    assert record["evaluation_request_digest"].startswith("sha-256:")
    # The view the PDP evaluated, when the caller names it.
    assert record["mission"]["policy_version"] == "sha-256:view"
    assert verify_evidence_chain([record], public_jwks(store, NOW)).ok


def test_refusal_records_with_and_without_a_mission(
    store: Store, log: EvidenceLog, active_mission: CreateMission
) -> None:
    mission = active_mission()
    with store.begin() as session:
        bound = log.record_refusal(session, mission_id=mission.mission_id, audience=MCP,
                                   action="execute_wire_transfer", reason="mission_inactive",
                                   emitter_id=PEP, now=NOW,
                                   parameter_digest=parameter_digest(ARGUMENTS))
        unbound = log.record_refusal(session, mission_id=None, audience=MCP,
                                     action="get_invoice", reason="credential_invalid",
                                     emitter_id=PEP, now=NOW)
    assert bound["refusal_id"].startswith("ref_")
    assert bound["decision"] == "deny" and bound["denial_reason"] == "mission_inactive"
    assert bound["mission"]["id"] == mission.mission_id
    assert bound["mission"]["authority_hash"] == mission.authority_hash
    assert bound["mission"]["origin"] == mission.origin
    assert bound["emitter"] == {"id": PEP, "role": "pep"}
    assert bound["parameter_digest"] == parameter_digest(ARGUMENTS)
    assert header_of(bound)["cty"] == "application/mission-refusal-record+json"
    # No Mission established: the emitter's own chain, and a digest of what was asked.
    assert "mission" not in unbound and unbound["sequence"] == 1
    assert unbound["evaluation_request_digest"].startswith("sha-256:")
    assert stored_chain(store, "emitter:" + PEP) == [unbound]
    jwks = public_jwks(store, NOW)
    assert verify_evidence_chain([bound], jwks).ok
    assert verify_evidence_chain([unbound], jwks).ok


def test_execution_evidence_joins_its_decision_and_flags_a_deviation(
    store: Store, log: EvidenceLog, active_mission: CreateMission
) -> None:
    mission = active_mission()
    decision = decide_and_record(store, log, mission, evaluation_id="dec_9")
    authorized = parameter_digest(ARGUMENTS)
    changed = parameter_digest({**ARGUMENTS, "amount": "499.00"})
    with store.begin() as session:
        done = log.record_execution(
            session, mission_id=mission.mission_id, evaluation_id="dec_9", audience=MCP,
            authorized_parameter_digest=authorized, effective_parameter_digest=authorized,
            outcome="completed", error=None, emitter_id=PEP, now=NOW)
        suppressed = log.record_execution(
            session, mission_id=mission.mission_id, evaluation_id="dec_9", audience=MCP,
            authorized_parameter_digest=authorized, effective_parameter_digest=changed,
            outcome="suppressed", error="parameter_mismatch", emitter_id=PEP, now=NOW,
            tool_id="execute_wire_transfer")
        deviated = log.record_execution(
            session, mission_id=mission.mission_id, evaluation_id="dec_9", audience=MCP,
            authorized_parameter_digest=authorized, effective_parameter_digest=changed,
            outcome="completed", error=None, emitter_id=PEP, now=NOW, emitter_role="executor")
    assert done["execution_id"].startswith("exe_")
    assert done["mission"] == decision["mission"] and done["mission_id"] == mission.mission_id
    assert done["actor"] == decision["actor"] and done["action"] == decision["action"]
    assert done["tool_id"] == f"{MCP}#execute_wire_transfer"
    assert done["outcome"] == "completed" and "unauthorized_execution" not in done
    assert suppressed["error"] == "parameter_mismatch"
    assert "unauthorized_execution" not in suppressed
    assert deviated["unauthorized_execution"] is True
    assert deviated["emitter"] == {"id": PEP, "role": "executor"}
    assert [r["sequence"] for r in (decision, done, suppressed, deviated)] == [1, 2, 3, 4]
    assert header_of(done)["cty"] == "application/mission-execution-evidence+json"
    chain = stored_chain(store, mission.mission_id)
    assert chain == [decision, done, suppressed, deviated]
    assert verify_evidence_chain(chain, public_jwks(store, NOW)).ok


def test_no_raw_parameter_anywhere_in_the_stored_record_or_its_signature(
    store: Store, engine: Engine, log: EvidenceLog, active_mission: CreateMission
) -> None:
    mission = active_mission()
    records = [decide_and_record(store, log, mission, evaluation_id="dec_p"),
               decide_and_record(store, log, mission, deny(), evaluation_id="dec_d")]
    with store.begin() as session:
        records.append(log.record_execution(
            session, mission_id=mission.mission_id, evaluation_id="dec_p", audience=MCP,
            authorized_parameter_digest=parameter_digest(ARGUMENTS),
            effective_parameter_digest=parameter_digest(ARGUMENTS), outcome="completed",
            error=None, emitter_id=PEP, now=NOW))
    with engine.connect() as connection:
        stored = [str(raw) for raw in connection.execute(
            text("SELECT CAST(record AS TEXT) FROM evidence_records")).scalars()]
    assert len(stored) == 3
    for raw in stored + [payload_of(record).decode() for record in records]:
        assert SECRET not in raw
        assert "parameters" not in raw and "120.00" not in raw and "inv-acme-1\", \"vendor" \
            not in raw
        assert "memo" not in raw and "properties" not in raw


def test_cross_kind_reuse_of_a_signature_is_refused(
    store: Store, log: EvidenceLog, key: SignerKey, active_mission: CreateMission
) -> None:
    mission = active_mission()
    record = decide_and_record(store, log, mission)
    content = {k: v for k, v in record.items() if k != "evidence_envelope"}
    relabelled, _ = sign_record(content, RecordKind.REFUSAL, key)
    report = verify_evidence_chain([relabelled], public_jwks(store, NOW))
    assert not report.ok
    assert "cty is not application/mission-decision-evidence+json" in str(report.first_break)


def test_a_signer_outage_fails_closed_and_writes_nothing(
    store: Store, active_mission: CreateMission
) -> None:
    mission = active_mission()

    def no_key() -> SignerKey:
        raise NoSigningKey("no current signing key")

    outage = EvidenceLog(issuer_url=ISSUER, signer=no_key)
    with pytest.raises(NoSigningKey):
        decide_and_record(store, outage, mission)
    assert stored_chain(store, mission.mission_id) == []


@pytest.mark.parametrize("bad", [
    {"outcome": "done"}, {"error": "Not A Code"}, {"now": NOW.replace(tzinfo=None)},
    {"emitter_role": "agent"}, {"emitter_id": ""}])
def test_malformed_execution_requests_are_refused(
    store: Store, log: EvidenceLog, active_mission: CreateMission, bad: dict[str, Any]
) -> None:
    mission = active_mission()
    arguments: dict[str, Any] = {
        "mission_id": mission.mission_id, "evaluation_id": "dec_1", "audience": MCP,
        "authorized_parameter_digest": None, "effective_parameter_digest": None,
        "outcome": "failed", "error": "parameter_mismatch", "emitter_id": PEP, "now": NOW}
    with store.begin() as session, pytest.raises(InvalidEvidence):
        log.record_execution(session, **{**arguments, **bad})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=6))
def test_the_signed_bytes_are_the_jcs_form(record: dict[str, Any]) -> None:
    """The serializer of the signed payload agrees with RFC 8785 (rfc8785, which the
    verifiers use) on every value, or refuses what JCS refuses."""
    try:
        expected = canonicalize(record)
    except InvalidRequest:
        with pytest.raises(InvalidRequest):
            record_bytes(record)
        return
    assert record_bytes(record) == expected


# --------------------------------------------------------------------------- concurrency


def test_sequences_are_gap_free_under_concurrent_appends(
    store: Store, log: EvidenceLog, active_mission: CreateMission
) -> None:
    first, second = active_mission(), active_mission()
    threads, each = 8, 4

    def work(index: int) -> None:
        # Every thread starts on chains that have no head yet: the first records race.
        for round_ in range(each):
            mission = first if (index + round_) % 2 == 0 else second
            with store.begin() as session:
                log.record_decision(session, mission=mission, request=request_for(mission),
                                    decision=permit(), evaluation_id=f"dec_{index}_{round_}",
                                    now=NOW)
                log.record_refusal(session, mission_id=None, audience=MCP, action="get_invoice",
                                   reason="credential_invalid", emitter_id=PEP, now=NOW)

    results = run_concurrently(threads, work)
    assert [r for r in results if isinstance(r, BaseException)] == []
    jwks = public_jwks(store, NOW)
    total = 0
    for chain_id in (first.mission_id, second.mission_id, "emitter:" + PEP):
        chain = stored_chain(store, chain_id)
        assert [r["sequence"] for r in chain] == list(range(1, len(chain) + 1))
        assert verify_evidence_chain(chain, jwks).ok
        total += len(chain)
    assert total == 2 * threads * each
    report = audit.verify(store.engine)
    assert report.ok and report.evidence_checked == total, report


# --------------------------------------------------------------------------- tampering


@pytest.fixture
def chain(store: Store, log: EvidenceLog, active_mission: CreateMission
          ) -> tuple[MissionRecord, list[dict[str, Any]]]:
    """Four records of one Mission: a permit, its execution, a deny, a refusal."""
    mission = active_mission()
    decide_and_record(store, log, mission, evaluation_id="dec_a")
    with store.begin() as session:
        log.record_execution(
            session, mission_id=mission.mission_id, evaluation_id="dec_a", audience=MCP,
            authorized_parameter_digest=parameter_digest(ARGUMENTS),
            effective_parameter_digest=parameter_digest(ARGUMENTS), outcome="completed",
            error=None, emitter_id=PEP, now=NOW)
    decide_and_record(store, log, mission, deny(), evaluation_id="dec_b")
    with store.begin() as session:
        log.record_refusal(session, mission_id=mission.mission_id, audience=MCP,
                           action="execute_wire_transfer", reason="mission_inactive",
                           emitter_id=PEP, now=NOW)
    records = stored_chain(store, mission.mission_id)
    assert verify_evidence_chain(records, public_jwks(store, NOW)).ok
    assert audit.verify(store.engine).ok
    return mission, records


def _set_record(engine: Engine, sequence: int, mission_id: str, record: dict[str, Any],
                **columns: Any) -> None:
    cast = "CAST(:v AS JSON)" if engine.dialect.name == "postgresql" else ":v"
    sets = "".join(f", {name} = :{name}" for name in columns)
    with engine.begin() as connection:
        connection.execute(
            text(f"UPDATE evidence_records SET record = {cast}{sets} "
                 "WHERE chain_id = :c AND sequence = :s"),
            {"v": json.dumps(record), "c": mission_id, "s": sequence, **columns})


def _execute(engine: Engine, statement: str, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text(statement), values)


def _forged(record: dict[str, Any], signer: SignerKey) -> dict[str, Any]:
    content = {k: v for k, v in record.items() if k != "evidence_envelope"}
    return sign_record(content, RecordKind(
        "decision" if "evidence_id" in record else "execution" if "execution_id" in record
        else "refusal"), signer)[0]


def _tamper(how: str, engine: Engine, mission_id: str, records: list[dict[str, Any]]) -> None:
    where = {"c": mission_id}
    if how == "content":
        # Turn the deny into a permit after the fact.
        _set_record(engine, 3, mission_id, {**records[2], "decision": "permit"})
    elif how == "deleted":
        _execute(engine, "DELETE FROM evidence_records WHERE chain_id = :c AND sequence = 2",
                 **where)
    elif how == "reordered":
        _execute(engine, "UPDATE evidence_records SET sequence = -sequence "
                 "WHERE chain_id = :c AND sequence IN (2, 3)", **where)
        _execute(engine, "UPDATE evidence_records SET sequence = 5 + sequence "
                 "WHERE chain_id = :c AND sequence IN (-2, -3)", **where)
    elif how == "re-signed":
        other = generate_signing_key()
        forged = _forged({**records[2], "decision": "permit"},
                         SignerKey(other.kid, other.alg, _private(other.private_jwk)))
        _set_record(engine, 3, mission_id, forged)
    elif how == "forged kid":
        other = generate_signing_key()
        kid = header_of(records[0])["kid"]
        forged = _forged({**records[2], "decision": "permit"},
                         SignerKey(kid, other.alg, _private(other.private_jwk)))
        _set_record(engine, 3, mission_id, forged)
    elif how == "tail removed":
        _execute(engine, "DELETE FROM evidence_records WHERE chain_id = :c AND sequence = 4",
                 **where)
    else:  # pragma: no cover
        raise AssertionError(how)


def _private(jwk: dict[str, Any]) -> Any:
    from joserfc.jwk import JWKRegistry
    return JWKRegistry.import_key(jwk)


TAMPERING = {
    # how: (what audit verify says, what the offline verifier says; None: it cannot see it)
    "content": ("decision evidence 3", "content differs from what was signed"),
    "deleted": ("record 2 of the chain is missing", "record 2 of the chain is missing"),
    "reordered": ("records were renumbered", "out of order"),
    "re-signed": ("which its issuer does not publish", "which its issuer does not publish"),
    "forged kid": ("signature does not verify", "signature does not verify"),
    "tail removed": ("its head names record 4 but the chain ends at record 3", None),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_is_found_and_named(
    how: str, store: Store, engine: Engine,
    chain: tuple[MissionRecord, list[dict[str, Any]]]
) -> None:
    mission, records = chain
    _tamper(how, engine, mission.mission_id, records)
    by_audit, offline = TAMPERING[how]
    report = audit.verify(engine)
    assert not report.ok
    assert f"evidence chain of mission {mission.mission_id}" in str(report.first_break)
    assert by_audit in str(report.first_break), report.first_break
    with store.read() as session, session.begin():
        rows = evidence_rows.chain_records(session, mission.mission_id)
        listed = [row.record for row in rows]
    offline_report = verify_evidence_chain(listed, public_jwks(store, NOW))
    if offline is None:
        assert offline_report.ok  # records cut from the end: only the chain head knows
    else:
        assert not offline_report.ok
        assert offline in str(offline_report.first_break), offline_report.first_break


def test_audit_verify_command_names_the_broken_evidence_record(
    database_url: str, engine: Engine, chain: tuple[MissionRecord, list[dict[str, Any]]]
) -> None:
    mission, records = chain
    runner = CliRunner()
    intact = runner.invoke(cli.app, ["audit", "verify", "--database-url", database_url])
    assert intact.exit_code == 0, intact.output
    assert "4 evidence records verified" in intact.stdout
    _tamper("content", engine, mission.mission_id, records)
    broken = runner.invoke(cli.app, ["audit", "verify", "--database-url", database_url])
    assert broken.exit_code == 1, broken.output
    assert broken.stderr.startswith("error: audit log broken: evidence chain of mission "
                                    f"{mission.mission_id}, decision evidence 3")
    assert "content differs from what was signed" in broken.stderr
    assert "2 evidence records verified" in broken.stderr  # the two before the break


def test_retired_keys_still_verify_and_an_auditor_may_bring_the_jwks(
    tmp_path: Any, database_url: str, store: Store,
    chain: tuple[MissionRecord, list[dict[str, Any]]]
) -> None:
    published_then = public_jwks(store, NOW)
    rotate_signing_key(store, NOW + timedelta(minutes=1))
    later = NOW + timedelta(days=30)  # long past the retired key's publication window
    assert {k["kid"] for k in public_jwks(store, later)["keys"]} & {
        k["kid"] for k in published_then["keys"]} == set()
    # The database keeps every key: the chain still verifies.
    assert audit.verify(store.engine).ok
    runner = CliRunner()
    kept = tmp_path / "jwks-then.json"
    kept.write_text(json.dumps(published_then))
    now_only = tmp_path / "jwks-now.json"
    now_only.write_text(json.dumps(public_jwks(store, later)))
    ok = runner.invoke(cli.app, ["audit", "verify", "--database-url", database_url,
                                 "--jwks", str(kept)])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(cli.app, ["audit", "verify", "--database-url", database_url,
                                      "--jwks", str(now_only)])
    assert refused.exit_code == 1
    assert "which its issuer does not publish" in refused.stderr

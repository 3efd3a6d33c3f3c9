"""The local tool runner (missionbound/enforce/local.py) on SQLite and PostgreSQL: a
consequential tool runs only under a permit for exactly it and exactly its arguments,
presented by the bound key, once; every refusal leaves the tool uncalled and Execution
Evidence ``suppressed`` with its error (PROFILE.md section 12, runtime-digest 4.5, 5.3).

Permits are signed with the AS's real key (runtime.permits.mint_permit), verified by the
DB-backed runtime.permits.verify_permit, evidence reported to the PDP's real execution intake
(runtime.execution: recorded, and the permit settled).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey
from sqlalchemy import select

from missionbound.enforce.local import (
    ExecutionSuppressed,
    LocalToolRunner,
    PermitRequired,
    ToolHandle,
    UnknownTool,
    jwt_permit_verifier,
)
from missionbound.issuer.keys import (
    SignerKey,
    ensure_signing_key,
    generate_signing_key,
    public_jwks,
)
from missionbound.mission.canonical import digest_json
from missionbound.mission.record import MissionRecord
from missionbound.protocol.jose_segments import read_compact
from missionbound.protocol.jwks import StaticKeys
from missionbound.runtime.permits import PermitConsumer, mint_permit
from missionbound.store.models import EvidenceRecord
from missionbound.store.transactions import Store
from tests.enforce.local_support import (
    EMAIL,
    EMAIL_ARGUMENTS,
    ISSUER,
    TOOLS,
    WIRE,
    WIRE_ARGUMENTS,
    SideEffects,
    db_verifier,
    executions,
    mint,
    recorder,
)
from tests.protocol.proofs import generate_key
from tests.store.factories import T0

NOW = T0 + timedelta(hours=1)
READ = "get_invoice"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def mission(active_mission: Callable[..., MissionRecord]) -> MissionRecord:
    return active_mission()


@pytest.fixture
def effects(tmp_path: Path) -> SideEffects:
    return SideEffects(tmp_path / "effects.log")


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def keyed_runner(store: Store, effects: SideEffects, key: Any) -> LocalToolRunner:
    """A runner executing for the agent holding ``key`` (its private DPoP key)."""
    built = LocalToolRunner(TOOLS, db_verifier(store, NOW), recorder(store, T0),
                            presenter_key=key, clock=lambda: NOW)
    built.register(WIRE, effects.tool(WIRE))
    return built


def test_the_presenter_key_must_be_private(store: Store) -> None:
    with pytest.raises(ValueError, match="private key"):
        LocalToolRunner(TOOLS, db_verifier(store, NOW), None,
                        presenter_key=ECKey.import_key(generate_key().as_dict(private=False)))


@pytest.fixture
def runner(store: Store, effects: SideEffects, clock: Clock) -> LocalToolRunner:
    records = recorder(store, T0)  # first: it makes the AS's signing key the verifier reads
    built = LocalToolRunner(TOOLS, db_verifier(store, NOW), records, clock=clock)
    built.register(WIRE, effects.tool(WIRE))
    built.register(EMAIL, effects.tool(EMAIL))
    built.register(READ, effects.tool(READ), consequential=False)
    return built


def evaluation_id_of(permit: str) -> str:
    _, claims = read_compact(permit, "permit", ValueError, max_length=65536)
    return str(claims["jti"])


def assert_suppressed(store: Store, permit: str, error: str, *,
                      effective: dict[str, Any], authorized: dict[str, Any]) -> None:
    records = executions(store, evaluation_id_of(permit))
    assert len(records) == 1, records
    record = records[0]
    assert record["outcome"] == "suppressed" and record["error"] == error, record
    assert record["authorized_parameter_digest"] == digest_json(authorized)
    assert record["effective_parameter_digest"] == digest_json(effective)


# -- the one way to run a consequential tool --------------------------------------------


def test_a_permit_for_exactly_this_call_runs_the_tool_once_and_records_it(
        store: Store, runner: LocalToolRunner, effects: SideEffects,
        mission: MissionRecord) -> None:
    key = generate_key()
    permit = mint(store, mission, now=NOW, jkt=key.thumbprint())
    runner = keyed_runner(store, effects, key)
    result = runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert result == {"done": WIRE, **WIRE_ARGUMENTS}
    assert effects.lines() == [f"{WIRE} {digest_json(WIRE_ARGUMENTS)}"]
    [record] = executions(store, evaluation_id_of(permit))
    assert record["outcome"] == "completed" and record.get("error") is None, record
    assert record["authorized_parameter_digest"] == digest_json(WIRE_ARGUMENTS)
    assert record["effective_parameter_digest"] == digest_json(WIRE_ARGUMENTS)


def test_a_permit_for_tool_x_does_not_run_tool_y(
        store: Store, runner: LocalToolRunner, effects: SideEffects,
        mission: MissionRecord) -> None:
    permit = mint(store, mission, now=NOW, tool_id=WIRE, arguments=EMAIL_ARGUMENTS)
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(EMAIL, dict(EMAIL_ARGUMENTS), permit=permit)
    assert refused.value.error == "binding_mismatch"
    assert effects.lines() == []
    assert_suppressed(store, permit, "binding_mismatch", effective=EMAIL_ARGUMENTS,
                      authorized=EMAIL_ARGUMENTS)


@pytest.mark.parametrize("changed", [{"amount": "120.01"}, {"vendor": "globex"},
                                     {"note": "extra"}])
def test_one_changed_argument_is_refused(
        store: Store, runner: LocalToolRunner, effects: SideEffects, mission: MissionRecord,
        changed: dict[str, str]) -> None:
    permit = mint(store, mission, now=NOW)
    arguments = {**WIRE_ARGUMENTS, **changed}
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(WIRE, arguments, permit=permit)
    assert refused.value.error == "parameter_mismatch"
    assert effects.lines() == []
    assert_suppressed(store, permit, "parameter_mismatch", effective=arguments,
                      authorized=WIRE_ARGUMENTS)


def test_a_replayed_permit_is_refused(
        store: Store, runner: LocalToolRunner, effects: SideEffects,
        mission: MissionRecord) -> None:
    permit = mint(store, mission, now=NOW)
    runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert refused.value.error == "permit_consumed"
    assert len(effects.lines()) == 1
    outcomes = [(r["outcome"], r.get("error")) for r in executions(store,
                                                                    evaluation_id_of(permit))]
    assert outcomes == [("completed", None), ("suppressed", "permit_consumed")]


def test_an_expired_permit_is_refused(
        store: Store, runner: LocalToolRunner, effects: SideEffects, mission: MissionRecord,
        clock: Clock) -> None:
    permit = mint(store, mission, now=NOW, lifetime=timedelta(seconds=30))
    clock.now = NOW + timedelta(seconds=36)  # past exp and the 5 s leeway
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert refused.value.error == "permit_expired"
    assert effects.lines() == []
    assert_suppressed(store, permit, "permit_expired", effective=WIRE_ARGUMENTS,
                      authorized=WIRE_ARGUMENTS)


@pytest.mark.parametrize("presenter", ["other-key", None])
def test_a_permit_presented_by_another_key_is_refused(
        store: Store, runner: LocalToolRunner, effects: SideEffects, mission: MissionRecord,
        presenter: str | None) -> None:
    """The runner's key is fixed when it is built: a runner holding another agent's key, or
    none, cannot run a permit bound to this one (the caller cannot name the key per call)."""
    bound = generate_key()
    permit = mint(store, mission, now=NOW, jkt=bound.thumbprint())
    if presenter:
        runner = keyed_runner(store, effects, generate_key())
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert refused.value.error == "binding_mismatch"
    assert effects.lines() == []
    assert_suppressed(store, permit, "binding_mismatch", effective=WIRE_ARGUMENTS,
                      authorized=WIRE_ARGUMENTS)


def test_a_permit_for_another_audience_is_refused(
        store: Store, runner: LocalToolRunner, effects: SideEffects,
        mission: MissionRecord) -> None:
    """Another resource's permit is no decision for this runner: its refusal is a Refusal
    Record on the Mission's chain, never Execution Evidence of the other's permit."""
    permit = mint(store, mission, now=NOW, audience=f"{ISSUER}/demo/erp")
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert refused.value.error == "binding_mismatch"
    assert effects.lines() == []
    assert executions(store, evaluation_id_of(permit)) == []
    with store.read() as session, session.begin():
        [refusal] = session.scalars(select(EvidenceRecord.record).where(
            EvidenceRecord.kind == "refusal",
            EvidenceRecord.mission_id == mission.mission_id)).all()
    assert refusal["denial_reason"] == "binding_mismatch" and refusal["audience"] == TOOLS
    assert refusal["emitter"] == {"id": "local-tool-runner", "role": "executor"}


def test_a_refused_permit_is_retired_by_its_suppressed_evidence(
        store: Store, runner: LocalToolRunner, effects: SideEffects,
        mission: MissionRecord) -> None:
    """The verifier does not spend a permit it refuses; the intake does, when the
    ``suppressed`` evidence settles it (its reservation given back): the corrected call
    needs a fresh permit (decision M141)."""
    permit = mint(store, mission, now=NOW)
    with pytest.raises(ExecutionSuppressed):
        runner.run(WIRE, {**WIRE_ARGUMENTS, "amount": "999.00"}, permit=permit)
    with pytest.raises(ExecutionSuppressed) as again:
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert again.value.error == "permit_consumed"
    assert effects.lines() == []
    fresh = mint(store, mission, now=NOW)
    runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=fresh)
    assert len(effects.lines()) == 1


def test_without_a_recorder_a_refused_permit_is_not_spent(
        store: Store, effects: SideEffects, mission: MissionRecord) -> None:
    """The verifier alone spends a permit last, after every check passed."""
    ensure_signing_key(store, T0)
    bare = LocalToolRunner(TOOLS, db_verifier(store, NOW), None, clock=lambda: NOW)
    bare.register(WIRE, effects.tool(WIRE))
    permit = mint(store, mission, now=NOW)
    with pytest.raises(ExecutionSuppressed):
        bare.run(WIRE, {**WIRE_ARGUMENTS, "amount": "999.00"}, permit=permit)
    bare.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert len(effects.lines()) == 1


def test_a_permit_not_signed_by_the_pdp_runs_nothing_and_names_no_mission(
        store: Store, runner: LocalToolRunner, effects: SideEffects,
        mission: MissionRecord) -> None:
    forged_key = generate_signing_key()
    signer = SignerKey(forged_key.kid, forged_key.alg,
                       ECKey.import_key(forged_key.private_jwk))
    assert mission.authority_hash is not None and mission.subject is not None
    forged = mint_permit(
        signer=signer, issuer=ISSUER, audience=TOOLS, evaluation_id="dec_forged",
        mission={"id": mission.mission_id, "origin": mission.origin,
                 "authority_hash": mission.authority_hash},
        policy_version="p", tool_id=f"{TOOLS}#{WIRE}", action=WIRE,
        parameter_digest=digest_json(WIRE_ARGUMENTS), subject="alice",
        client_id="demo-agent", act=None, jkt=None, use_limit=1, now=NOW,
        valid_until=NOW + timedelta(seconds=60))
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=forged)
    assert refused.value.error == "permit_invalid"
    assert effects.lines() == []
    assert executions(store, "dec_forged") == []  # no verified Mission to record against


def test_a_consequential_tool_without_a_permit_does_not_run(
        runner: LocalToolRunner, effects: SideEffects) -> None:
    with pytest.raises(PermitRequired):
        runner.run(WIRE, dict(WIRE_ARGUMENTS))
    with pytest.raises(PermitRequired):
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit="")
    assert effects.lines() == []


def test_a_non_consequential_tool_runs_without_a_permit(
        store: Store, runner: LocalToolRunner, effects: SideEffects) -> None:
    assert runner.run(READ, {"invoice_id": "inv-acme-1"}) == {"done": READ,
                                                              "invoice_id": "inv-acme-1"}
    assert len(effects.lines()) == 1
    assert executions(store) == []


def test_a_tool_that_fails_is_recorded_failed(
        store: Store, runner: LocalToolRunner, mission: MissionRecord) -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("the connector is down")

    runner.register("broken", broken)
    permit = mint(store, mission, now=NOW, tool_id="broken")
    with pytest.raises(RuntimeError, match="connector"):
        runner.run("broken", dict(WIRE_ARGUMENTS), permit=permit)
    [record] = executions(store, evaluation_id_of(permit))
    assert record["outcome"] == "failed", record


def test_the_tool_gets_the_verified_arguments_not_the_callers_object(
        store: Store, runner: LocalToolRunner, mission: MissionRecord) -> None:
    """The object checked is a copy the caller cannot reach: changing the caller's dict
    from inside (or alongside) the call cannot change what runs."""
    arguments = dict(WIRE_ARGUMENTS)
    seen: list[dict[str, Any]] = []

    def sneaky(**received: Any) -> None:
        arguments["amount"] = "999999.00"  # the orchestrator's object, changed mid-call
        seen.append(dict(received))

    runner.register("sneaky", sneaky)
    permit = mint(store, mission, now=NOW, tool_id="sneaky")
    runner.run("sneaky", arguments, permit=permit)
    assert seen == [WIRE_ARGUMENTS]


# -- the surface --------------------------------------------------------------------------


def test_the_runner_hands_out_no_callable(runner: LocalToolRunner,
                                          effects: SideEffects) -> None:
    handle = runner.register("another", effects.tool("another"))
    assert isinstance(handle, ToolHandle)
    assert not hasattr(handle, "fn") and not hasattr(handle, "__dict__")
    public = {name: getattr(runner, name) for name in dir(runner) if not name.startswith("_")}
    assert set(public) == {"audience", "emitter_id", "register", "run", "tools"}
    assert runner.tools == {WIRE: True, EMAIL: True, READ: False, "another": True}
    with pytest.raises(PermitRequired):
        handle({"x": 1})
    assert effects.lines() == []


def test_a_tool_is_registered_once_and_unknown_tools_are_refused(
        runner: LocalToolRunner, effects: SideEffects) -> None:
    with pytest.raises(ValueError, match="already registered"):
        runner.register(WIRE, effects.tool("impostor"))
    with pytest.raises(UnknownTool):
        runner.run("rm_rf", {})


def test_the_protocol_verifier_with_a_consume_callable(
        store: Store, effects: SideEffects, mission: MissionRecord) -> None:
    """protocol.permits.verify_permit_jwt + runtime.permits.PermitConsumer (the parts an
    enforcement point outside the runtime package composes)."""
    ensure_signing_key(store, T0)
    verifier = jwt_permit_verifier(key_for=StaticKeys(public_jwks(store, NOW)), issuer=ISSUER,
                                   consume=PermitConsumer(store))
    runner = LocalToolRunner(TOOLS, verifier, None, clock=lambda: NOW)
    runner.register(WIRE, effects.tool(WIRE))
    permit = mint(store, mission, now=NOW)
    runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    with pytest.raises(ExecutionSuppressed) as refused:
        runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
    assert refused.value.error == "permit_consumed"
    assert len(effects.lines()) == 1

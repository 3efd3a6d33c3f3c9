"""The per-Mission checks of ``missionbound audit verify`` (PROFILE.md section 15): a stored
Mission against what the audit log committed for it. :mod:`missionbound.audit.verify` walks
the log and calls these; each raises :class:`Break` naming the Mission and what differs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from missionbound.audit.log import ANCHOR_NAMES
from missionbound.mission.canonical import digest_json
from missionbound.mission.intent import parse_instant
from missionbound.mission.record import format_instant

# A row of verify's Mission columns (attribute access by column name).
MissionRow = Any

# ``data.event`` of the lifecycle audit record of an approval: the one event that may set
# the anchors and change the record (``missionbound.mission.lifecycle.Event.APPROVE``).
APPROVE_EVENT = "approve"


class Break(Exception):
    """The first break found; ``description`` is what ``audit verify`` prints."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass
class MissionChain:
    last_seq: int
    last_hash: str
    # The anchors last committed to the log for this Mission, and the record that did.
    anchors: dict[str, str] | None = None
    anchors_seq: int | None = None
    # The Mission's mission.created record, and its last lifecycle record with its data
    # and anchors.
    created_seq: int | None = None
    lifecycle_seq: int | None = None
    lifecycle_data: Any = None
    lifecycle_policy_version: str | None = None
    lifecycle_anchors: dict[str, str | None] | None = None


@dataclass(frozen=True)
class HistoryTail:
    entries: int
    highest: int
    to_state: str


def record_of(row: MissionRow) -> dict[str, Any]:
    """The stored record, parsed; raises (and so names the Mission) when it is not a JSON
    object whose anchors are strings."""
    mission_id = row.mission_id
    try:
        record = json.loads(row.record)
    except (TypeError, ValueError) as exc:
        raise Break(f"record of {mission_id} cannot be read: not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise Break(f"record of {mission_id} cannot be read: not a JSON object")
    for name in ANCHOR_NAMES:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise Break(
                f"record of {mission_id} cannot be read: {name} is {shown(value)}, not a string"
            )
    if record.get("mission_id") != mission_id:
        raise Break(
            f"mission {mission_id}: the stored record is that of mission "
            f"{shown(record.get('mission_id'))}"
        )
    return record


def check_lifecycle(
    mission_id: str, row: MissionRow, chain: MissionChain, tail: HistoryTail | None
) -> None:
    """The columns the gate reads, against the log (authenticated) and then the history."""
    data = chain.lifecycle_data if isinstance(chain.lifecycle_data, dict) else {}
    logged = f"its last lifecycle audit record (audit record {chain.lifecycle_seq})"
    if row.state != data.get("state"):
        raise Break(
            f"mission {mission_id}: stored state is {shown(row.state)} but {logged} "
            f"says {shown(data.get('state'))}"
        )
    if row.version != data.get("version"):
        raise Break(
            f"mission {mission_id}: stored version is {shown(row.version)} but {logged} "
            f"says {shown(data.get('version'))}"
        )
    entries, highest = (0, 0) if tail is None else (tail.entries, tail.highest)
    if tail is None or entries != row.version or highest != row.version:
        raise Break(
            f"mission {mission_id}: lifecycle history has {entries} "
            f"entries up to version {highest} but the Mission is at "
            f"version {row.version}"
        )
    if tail.to_state != row.state:
        raise Break(
            f"mission {mission_id}: stored state is {shown(row.state)} but its last "
            f"lifecycle history entry (version {tail.highest}) says {shown(tail.to_state)}"
        )


def check_lifecycle_step(label: str, chain: MissionChain, row: dict[str, Any]) -> None:
    """One lifecycle audit record of a Mission against the Mission's previous one (in log
    order), so that a record rewritten between two events is caught even when the later
    event committed the rewritten record: the anchors are set once, at the approval, and
    never change afterwards; ``record_digest`` is present on every lifecycle record and
    changes only at the approval (the record is immutable otherwise)."""
    data = row["data"] if isinstance(row["data"], dict) else {}
    event = data.get("event")
    approval = event == APPROVE_EVENT
    previous = chain.lifecycle_seq
    before = chain.lifecycle_anchors or dict.fromkeys(ANCHOR_NAMES)
    # The approval may set the anchors, once: only when none was set before.
    may_set = approval and all(value is None for value in before.values())
    for name in ANCHOR_NAMES:
        if row[name] == before[name] or may_set:
            continue
        if previous is None:
            raise Break(
                f"{label}: {name} is set at event {shown(event)}, before any approval "
                "(anchors are set once, at approval)"
            )
        raise Break(
            f"{label}: {name} differs from the one audit record {previous} committed, at "
            f"event {shown(event)} (anchors are set once, at approval, and never change)"
        )
    digest = data.get("record_digest")
    if not isinstance(digest, str):
        raise Break(f"{label}: lifecycle audit record has no record_digest")
    if previous is not None and not approval:
        committed = chain.lifecycle_data.get("record_digest")
        if digest != committed:
            raise Break(
                f"{label}: record_digest differs from the one audit record {previous} "
                f"committed, at event {shown(event)} (a Mission's record changes only at "
                "approval)"
            )


def check_record_digest(mission_id: str, record: dict[str, Any], chain: MissionChain) -> None:
    """The stored record is the one the last lifecycle audit record committed to: a member
    rewritten afterwards (with its filter column rewritten to match) is caught here."""
    data = chain.lifecycle_data if isinstance(chain.lifecycle_data, dict) else {}
    if "record_digest" not in data:
        raise Break(
            f"mission {mission_id}: its last lifecycle audit record (audit record "
            f"{chain.lifecycle_seq}) has no record_digest"
        )
    if data.get("record_digest") != digest_json(record):
        raise Break(
            f"mission {mission_id}: stored record does not match the record_digest committed "
            f"by audit record {chain.lifecycle_seq}"
        )


def check_policy_version(mission_id: str, record: dict[str, Any], chain: MissionChain) -> None:
    """Every lifecycle record carries the record's ``policy_version`` of its time; it only
    changes at approval, which writes a lifecycle record."""
    if record.get("policy_version") != chain.lifecycle_policy_version:
        raise Break(
            f"mission {mission_id}: stored policy_version "
            f"{shown(record.get('policy_version'))} differs from the one committed by "
            f"audit record {chain.lifecycle_seq}"
        )


def check_copied_columns(mission_id: str, row: MissionRow, record: dict[str, Any]) -> None:
    """The filter columns are copies of record members; the gate and the clock read the
    columns, so a column moved away from the record (``mission_expiry`` pushed out) is a
    break. Times compare in the record's format (whole seconds)."""
    copies: tuple[tuple[str, Any, Any], ...] = (
        ("subject_sub", row.subject_sub, (record.get("subject") or {}).get("sub")),
        ("client_id", row.client_id, record["client_id"]),
        ("created_at", instant(row.created_at), record["created_at"]),
        ("mission_expiry", instant(row.mission_expiry), record["mission_expiry"]),
        ("activated_at", instant(row.activated_at), record.get("activated_at")),
        ("approval_event_id", row.approval_event_id, record.get("approval_event_id")),
    )
    for column, stored, member in copies:
        if stored != member:
            raise Break(
                f"mission {mission_id}: the {column} column ({shown(stored)}) differs from "
                f"the record's {column} ({shown(member)})"
            )
    # The intent is anchored by proposal_hash; the AS may shorten the asked expiry, never
    # extend it. Catches an expiry pushed out in the record and the column together.
    asked = parse_instant(record["mission_intent"]["mission_expiry"], "mission_expiry")
    if parse_instant(record["mission_expiry"], "mission_expiry") > asked:
        raise Break(
            f"mission {mission_id}: mission_expiry {record['mission_expiry']} is later than "
            f"the {format_instant(asked)} its mission_intent asked for"
        )


def instant(value: datetime | None) -> str | None:
    return None if value is None else format_instant(value)


def shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 80 else text[:77] + "..."

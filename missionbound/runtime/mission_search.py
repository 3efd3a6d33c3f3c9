"""The AuthZEN 1.0 search endpoints of the Mission PDP (section 8): hints of what one
Mission's approved authority exposes, never a decision (decision M118). A search names its
Mission in ``context.mission`` like an evaluation; nothing is written.

* ``action``: the actions the Mission's entries grant at the asked audience;
* ``resource``: the audiences (among the caller's) where the entries grant the asked action,
  as ``{"type": <asked type>, "id": <audience>}``;
* ``subject``: the Mission's Subject, when its entries grant the action there.

Empty for a Mission that is not effectively active, not this AS's, or whose reference
(``id``, ``issuer``, ``authority_hash``) does not match; the subject must be the Mission's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from missionbound.mission.record import MissionRecord
from missionbound.runtime.authzen import (
    ACTION,
    RESOURCE,
    SEARCH_KINDS,
    SUBJECT,
    Search,
    parse_search,
    search_response,
)
from missionbound.runtime.errors import MalformedRequest

if TYPE_CHECKING:
    from missionbound.runtime.pdp import MissionPDP, PepCaller


def search(pdp: MissionPDP, kind: str, body: dict[str, Any],
           caller: PepCaller) -> dict[str, Any]:
    """One search of ``kind`` (``subject``, ``resource`` or ``action``)."""
    from missionbound.runtime.pdp import check_audience

    if kind not in SEARCH_KINDS:
        raise MalformedRequest(f"no search kind {kind[:32]!r}")
    asked = parse_search(body, kind)
    mission_id, issuer, authority_hash = _mission_reference(asked.context)
    audience = None
    if asked.resource is not None and kind != RESOURCE:
        audience = asked.resource.properties.get("audience")
        if not isinstance(audience, str) or not audience:
            raise MalformedRequest("resource.properties.audience is required (a "
                                   "non-empty string)")
        check_audience(audience, caller)
    held = None
    if issuer == pdp.issuer_url:
        with pdp.store.begin_read() as session:
            held = pdp.active_policy(session, mission_id, authority_hash, pdp.clock())
    matches: list[dict[str, Any]] = []
    if held is not None:
        record, policy = held
        grants: dict[str, list[str]] = {}
        for entry in policy.entries:
            names = grants.setdefault(entry.resource, [])
            names.extend(name for name in entry.actions if name not in names)
        subject_ok = asked.subject is None or kind == SUBJECT or (
            record.subject is not None and asked.subject.id == record.subject.sub)
        if subject_ok:
            matches = _matches(kind, asked, record, grants, audience, caller)
    return search_response(asked, matches)


def _mission_reference(context: Mapping[str, Any]) -> tuple[str, str, str]:
    mission = context.get("mission")
    if not isinstance(mission, dict):
        raise MalformedRequest("context.mission is required: a search names its Mission")
    values = []
    for member in ("id", "issuer", "authority_hash"):
        value = mission.get(member)
        if not isinstance(value, str) or not value:
            raise MalformedRequest(f"context.mission.{member} is required (a non-empty string)")
        values.append(value)
    return values[0], values[1], values[2]


def _matches(kind: str, asked: Search, record: MissionRecord,
             grants: dict[str, list[str]], audience: str | None,
             caller: PepCaller) -> list[dict[str, Any]]:
    if kind == ACTION:
        assert audience is not None
        return [{"name": name} for name in grants.get(audience, [])]
    assert asked.action is not None
    action = asked.action.name
    if kind == RESOURCE:
        assert asked.resource is not None
        kind_of = asked.resource.type
        return [{"type": kind_of, "id": uri} for uri in sorted(grants)
                if uri in caller.audiences and action in grants[uri]]
    assert audience is not None and asked.subject is not None
    if record.subject is None or action not in grants.get(audience, []):
        return []
    subject: dict[str, Any] = {"type": asked.subject.type, "id": record.subject.sub}
    return [subject] if asked.subject.type == "user" else []

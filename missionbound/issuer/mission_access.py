"""Who may see a Mission and what they may do to it (PROFILE.md sections 7 and 10).

One place for the rules every governance surface applies: the lifecycle endpoint, the
console, the CLI, Mission Status and Shared Signals streams. Nothing here reads the database;
callers pass the record they loaded.

- A **person** signed in (console, lifecycle endpoint with a session) holds the roles
  ``subject`` (the Mission is theirs), ``approver`` (they approved it) and ``admin`` (a
  deployment administrator) as the tenant and the record say.
- A **client** holds ``client`` for the Missions approved for it and nothing else: it may
  complete its own Mission, never suspend, resume or revoke one (section 7, column "Who").
- A client **sees** a Mission (status, events) when it is the Mission's client, or when it
  speaks for a Resource Server the Mission's authority names (its configured ``audiences``),
  and then only the entries for those resources. Anyone else sees nothing, and is told the
  same thing as for a Mission that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from missionbound.mission.lifecycle import Role
from missionbound.mission.record import MissionRecord
from missionbound.tenant import User


def roles_of_user(user: User, record: MissionRecord) -> frozenset[Role]:
    """The lifecycle roles a signed-in person holds on ``record``."""
    roles: set[Role] = set()
    if record.subject is not None and record.subject.sub == user.username:
        roles.add(Role.SUBJECT)
    if record.approver is not None and record.approver.sub == user.username:
        roles.add(Role.APPROVER)
    if user.is_admin:
        roles.add(Role.ADMIN)
    return frozenset(roles)


def user_may_see(user: User, record: MissionRecord) -> bool:
    """A person sees the Missions they hold a role on (an administrator sees every one)."""
    return bool(roles_of_user(user, record))


def roles_of_client(client_id: str, record: MissionRecord) -> frozenset[Role]:
    """The lifecycle roles an authenticated client holds on ``record``."""
    return frozenset({Role.CLIENT}) if client_id == record.client_id else frozenset()


def mission_resources(record: MissionRecord) -> frozenset[str]:
    """The resources the Mission's authority names (the requested set while it is pending,
    the approved one after)."""
    return frozenset(_resources(record.authority_set))


def visible_resources(
    client_id: str, client_audiences: Iterable[str], record: MissionRecord
) -> frozenset[str]:
    """The resources of ``record`` this client may be told about: all of them for the
    Mission's own client, else the ones it serves. Empty means it may not see the Mission."""
    resources = mission_resources(record)
    if client_id == record.client_id:
        return resources
    return resources & frozenset(client_audiences)


def project_authority(record: MissionRecord, resources: Iterable[str]) -> list[Any]:
    """The Authority Set cut down to ``resources`` (audience minimization, section 10), in
    the record's order."""
    wanted = frozenset(resources)
    return [
        entry
        for entry in record.authority_set
        if isinstance(entry, dict) and entry.get("resource") in wanted
    ]


def _resources(entries: Iterable[Any]) -> Iterable[str]:
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), str):
            yield entry["resource"]

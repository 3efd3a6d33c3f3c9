"""Narrowing one token at the token endpoint (issuance digest 6.4): RFC 8707 ``resource``,
``scope`` and RFC 9396 section 6.2 ``authorization_details``.

A code redemption or refresh may ask for less than the Mission's Authority Set, never
more: ``resource`` picks the entries of those resources and sets ``aud``; ``scope`` keeps
only the named actions; ``authorization_details`` must name entries each within one entry
of what is left (the subset rule, PROFILE.md section 4), and the token carries exactly
those. Anything broader is refused at once, with nothing issued.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from missionbound.mission.authority import (
    is_subset_of_set,
    parse_authorization_details,
    sort_authority_set,
)
from missionbound.mission.canonical import parse_strict
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import InvalidAuthorizationDetails, InvalidRequest, InvalidTarget

# The largest authorization_details parameter read at the token endpoint.
MAX_AUTHORIZATION_DETAILS = 16384


class InvalidScope(InvalidRequest):
    """RFC 6749 section 5.2: the scope leaves nothing of the Mission's authority."""

    error = "invalid_scope"


@dataclass(frozen=True)
class TokenNarrowing:
    resources: tuple[str, ...] = ()
    scope: str | None = None
    # The parsed JSON of the authorization_details parameter, or None.
    authorization_details: Any = field(default=None)

    @classmethod
    def from_parameters(
        cls, resources: Sequence[str], scope: str | None, authorization_details: str | None
    ) -> TokenNarrowing:
        parsed = None
        if authorization_details is not None:
            parsed = parse_strict(authorization_details, max_size=MAX_AUTHORIZATION_DETAILS,
                                  what="authorization_details")
        return cls(tuple(resources), scope or None, parsed)

    def apply(
        self, authority_set: Sequence[dict[str, Any]], registry: ConstraintRegistry,
        *, scope_reference: Sequence[dict[str, Any]] | None = None,
    ) -> tuple[list[dict[str, Any]], str | list[str]]:
        """The token's entries and its ``aud``.

        ``scope_reference`` is what decides whether a scope value is a Mission action at all
        (default: ``authority_set``). A delegation narrows only what the delegate may
        receive, but a scope naming an action left out of it must be refused, not ignored
        as if it were ``openid``; so it passes the whole delegating token's entries."""
        entries = select_resources(authority_set, self.resources)
        if self.scope is not None:
            entries = keep_scope(entries, self.scope,
                                 authority_set if scope_reference is None else scope_reference)
        if self.authorization_details is not None:
            entries = within(entries, self.authorization_details, registry)
        return entries, audience_of(entries)


def select_resources(
    authority_set: Sequence[dict[str, Any]], resources: Sequence[str]
) -> list[dict[str, Any]]:
    """RFC 8707 section 2: the entries of the requested resources (all without any); a
    resource outside the Authority Set is ``invalid_target``."""
    granted = {entry["resource"] for entry in authority_set}
    for uri in resources:
        if uri not in granted:
            raise InvalidTarget(f"resource {uri!r} is not in the Mission's authority")
    wanted = set(resources) or granted
    return [copy.deepcopy(entry) for entry in authority_set if entry["resource"] in wanted]


def keep_scope(entries: list[dict[str, Any]], scope: str,
               authority_set: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the actions ``scope`` names. As at PAR, scope values that are no action of the
    Mission (``openid``, say) are not Mission authority and change nothing; a scope naming
    Mission actions none of which the selected entries hold is ``invalid_scope``."""
    requested = set(scope.split())
    if not requested & {action for entry in authority_set for action in entry["actions"]}:
        return entries
    kept = []
    for entry in entries:
        actions = [action for action in entry["actions"] if action in requested]
        if actions:
            kept.append({**entry, "actions": actions})
    if not kept:
        raise InvalidScope("the scope names no action of the requested resources")
    return kept


def within(
    entries: list[dict[str, Any]], raw: Any, registry: ConstraintRegistry
) -> list[dict[str, Any]]:
    """RFC 9396 section 6.2: the requested entries, each a subset of one entry left."""
    requested = parse_authorization_details(raw, registry)
    for i, entry in enumerate(requested):
        if not is_subset_of_set(entry, entries, registry):
            raise InvalidAuthorizationDetails(
                f"authorization_details[{i}] is not within the Mission's authority for this "
                "token"
            )
    return sort_authority_set(requested)


def audience_of(entries: Sequence[dict[str, Any]]) -> str | list[str]:
    """RFC 9068 section 2.2: ``aud`` names the resources of the token's entries, a string
    when there is one (issuance digest 16.29: never an audience without an entry)."""
    resources = list(dict.fromkeys(entry["resource"] for entry in entries))
    return resources[0] if len(resources) == 1 else resources

"""Delegation inside a Mission (PROFILE.md section 9, issuance digest 6.8): the ``act`` chain
of a delegated token and which of its entries a delegate may receive.

Pure: the issuer's token exchange (``issuer/delegation.py``) calls it with the delegating
token's claims and the authenticated delegate.

* The chain: ``act`` is the outermost, immediate actor; earlier actors nest inside it
  (``act.act``) back toward the approved agent, whose own token has no ``act`` (depth 0).
  The depth of a token is the number of actors in its chain.
* An entry goes to the delegate only if it carries ``delegation``, the new token's depth is
  at most its ``max_depth``, and ``allowed_delegates`` names the delegate. An entry without
  ``allowed_delegates`` goes to nobody: the profile leaves that case to AS policy, and a
  blank cheque is never this AS's policy (decision X3). Kept entries keep their
  ``delegation`` member, so the next hop is judged the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from missionbound.mission.authority import Entry

# Deeper chains are refused as malformed: no catalog allows them, and parsing stays bounded.
MAX_CHAIN_LENGTH = 16
ACTOR_MEMBERS = frozenset({"sub", "iss", "act"})


class InvalidActorChain(ValueError):
    """A token's ``act`` claim is not a chain of actors this AS writes."""


@dataclass(frozen=True)
class Actor:
    sub: str
    iss: str


def actor_chain(act: Any) -> tuple[Actor, ...]:
    """The actors of an ``act`` claim, outermost (the immediate actor) first; () for none."""
    chain: list[Actor] = []
    current = act
    while current is not None:
        if len(chain) == MAX_CHAIN_LENGTH:
            raise InvalidActorChain(f"the act chain is longer than {MAX_CHAIN_LENGTH}")
        if not isinstance(current, dict) or set(current) - ACTOR_MEMBERS:
            raise InvalidActorChain('every act must be {"sub", "iss"[, "act"]}')
        sub, iss = current.get("sub"), current.get("iss")
        if not isinstance(sub, str) or not sub or not isinstance(iss, str) or not iss:
            raise InvalidActorChain("every act needs a non-empty sub and iss")
        chain.append(Actor(sub, iss))
        current = current.get("act")
    return tuple(chain)


def with_actor(act: Any, delegate: Actor) -> dict[str, Any]:
    """The ``act`` claim of the delegated token: ``delegate`` outermost, the delegating
    token's chain nested inside it (copied, so the two never share a dict)."""
    claim: dict[str, Any] = {"sub": delegate.sub, "iss": delegate.iss}
    if act is not None:
        actor_chain(act)  # refuse a malformed chain rather than nest it
        claim["act"] = _copy_chain(act)
    return claim


def _copy_chain(act: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = {"sub": act["sub"], "iss": act["iss"]}
    if act.get("act") is not None:
        copied["act"] = _copy_chain(act["act"])
    return copied


class Exclusion(StrEnum):
    """Why an entry of the delegating token does not go to the delegate."""

    NOT_DELEGABLE = "not_delegable"  # no delegation member
    DELEGATE_NOT_ALLOWED = "delegate_not_allowed"  # allowed_delegates does not name it
    DEPTH_EXCEEDED = "depth_exceeded"  # the new token would be deeper than max_depth


@dataclass(frozen=True)
class DelegableEntries:
    """The entries the delegate may receive and, for each other entry, why not."""

    kept: list[Entry]
    excluded: list[tuple[Entry, Exclusion]]

    @property
    def only_depth_stopped(self) -> bool:
        """Nothing kept, and at least one entry named this delegate but is out of depth:
        the chain is too long (``invalid_grant``), not the wrong delegate (``invalid_target``)."""
        return not self.kept and any(
            reason is Exclusion.DEPTH_EXCEEDED for _, reason in self.excluded)


def delegable_entries(entries: Sequence[Entry], *, delegate_client_id: str,
                      depth: int) -> DelegableEntries:
    """Issuance digest 6.8's per-entry filter for a token of depth ``depth`` (after the
    delegate is appended) issued to ``delegate_client_id``."""
    kept: list[Entry] = []
    excluded: list[tuple[Entry, Exclusion]] = []
    for entry in entries:
        reason = _exclusion(entry, delegate_client_id, depth)
        if reason is None:
            kept.append(entry)
        else:
            excluded.append((entry, reason))
    return DelegableEntries(kept, excluded)


def _exclusion(entry: Entry, delegate_client_id: str, depth: int) -> Exclusion | None:
    delegation = entry.get("delegation")
    if not isinstance(delegation, dict):
        return Exclusion.NOT_DELEGABLE
    allowed = {matcher.get("client_id") for matcher in delegation.get("allowed_delegates", [])
               if isinstance(matcher, dict)}
    if delegate_client_id not in allowed:
        return Exclusion.DELEGATE_NOT_ALLOWED
    max_depth = delegation.get("max_depth")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or depth > max_depth:
        return Exclusion.DEPTH_EXCEEDED
    return None

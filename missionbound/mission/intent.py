"""Mission Intent intake: PROFILE.md section 3, member by member.

Every refusal is an :class:`InvalidRequest` naming the member and the rule. Catalog
membership of ``resources`` is checked at derivation, where it is an
``invalid_authorization_details`` (the intent is well-formed; the authority is not derivable).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from missionbound.mission.canonical import parse_strict
from missionbound.mission.catalog import Catalog
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import InvalidRequest

DEFAULT_MAX_SIZE = 16384
GOAL_MAX = 4096
MAX_ITEMS = 32
ITEM_MAX = 1024
URI_MAX = 2048

TOP_LEVEL = frozenset(
    {"goal", "resources", "constraints", "success_criteria", "purpose", "mission_expiry",
     "context"}
)
REQUIRED = ("goal", "resources", "mission_expiry")
CONTEXT_SCALARS = frozenset({"acr"})
RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
# C0 controls other than tab and newlines have no place in text shown to an approver.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class MissionIntent:
    """A validated intent. ``value`` is the parsed object exactly as sent: it is what
    ``proposal_hash`` commits to, so it is never rebuilt from the typed fields."""

    value: dict[str, Any]
    goal: str
    resources: tuple[str, ...]
    mission_expiry: datetime
    purpose: str | None
    context: dict[str, Any]

    @property
    def max_derivations(self) -> int | None:
        value = self.context.get("max_derivations")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def acr(self) -> str | None:
        value = self.context.get("acr")
        return value if isinstance(value, str) else None

    def mission_constraints(self) -> dict[str, Any]:
        """Mission-level Common Constraints carried in ``context``."""
        return {k: v for k, v in self.context.items()
                if k not in CONTEXT_SCALARS and k != "max_derivations" and not k.startswith("x_")}


def parse_instant(value: Any, member: str) -> datetime:
    """An RFC 3339 date-time with seconds and an explicit offset, as an aware UTC datetime."""
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise InvalidRequest(
            f"{member} must be an RFC 3339 date-time such as 2026-12-31T23:59:59Z"
        )
    try:
        return datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):  # month 13, or year 9999 with a negative offset
        raise InvalidRequest(f"{member} is not a valid date-time: {value!r}") from None


def check_resource_uri(value: Any, where: str) -> str:
    """An absolute http(s) URI without a fragment (RFC 8707 section 2)."""
    if not isinstance(value, str) or not value or len(value) > URI_MAX:
        raise InvalidRequest(f"{where} must be an absolute URI of at most {URI_MAX} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidRequest(f"{where} must be an absolute http(s) URI: {value!r}")
    if "#" in value:
        raise InvalidRequest(f"{where} must not contain a fragment: {value!r}")
    return value


def _text(value: Any, where: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string")
    if not value.strip():
        raise InvalidRequest(f"{where} must not be empty")
    if len(value) > max_len:  # code points, not octets (PROFILE.md section 3: "chars")
        raise InvalidRequest(f"{where} is {len(value)} characters; the limit is {max_len}")
    if CONTROL.search(value):
        raise InvalidRequest(f"{where} contains a control character")
    return value


def _text_list(value: Any, member: str) -> None:
    if not isinstance(value, list):
        raise InvalidRequest(f"{member} must be an array of strings")
    if len(value) > MAX_ITEMS:
        raise InvalidRequest(f"{member} has {len(value)} items; the limit is {MAX_ITEMS}")
    for i, item in enumerate(value):
        _text(item, f"{member}[{i}]", ITEM_MAX)


def _context(value: Any, registry: ConstraintRegistry) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest("context must be a JSON object")
    for key, item in value.items():
        where = f"context.{key}"
        if key.startswith("x_"):
            continue  # extension members: hashed, never authority
        if item is None:
            raise InvalidRequest(f"{where} must not be null")
        if key == "acr":
            _text(item, where, URI_MAX)
        elif key == "max_derivations":
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                raise InvalidRequest(
                    "context.max_derivations must be an integer >= 1 (to stop a Mission, revoke it)"
                )
        elif registry.knows(key):
            registry.validate(key, item, where="context", error=InvalidRequest)
        else:
            raise InvalidRequest(f"unknown context member {key!r} (a bound the AS does not "
                                 "understand is refused, not dropped)")
    return value


def validate_intent(
    raw: str | bytes,
    *,
    catalog: Catalog,
    now: datetime,
    max_size: int = DEFAULT_MAX_SIZE,
    client_purposes: frozenset[str] | None = None,
) -> MissionIntent:
    """Validate the ``mission_intent`` PAR parameter (PROFILE.md section 3).

    ``client_purposes`` is the client's ``mission_purposes_registered`` (``None`` when the
    client declares none).
    """
    value = parse_strict(raw, max_size=max_size, what="mission_intent")
    if not isinstance(value, dict):
        raise InvalidRequest("mission_intent must be a JSON object")
    for member in value:
        if member not in TOP_LEVEL and not member.startswith("x_"):
            raise InvalidRequest(f"unknown mission_intent member {member!r}")
    for member in REQUIRED:
        if member not in value:
            raise InvalidRequest(f"mission_intent.{member} is required")
    for member, item in value.items():
        if item is None and not member.startswith("x_"):
            # an optional member is absent or has a value, never null
            raise InvalidRequest(f"mission_intent.{member} must not be null")

    goal = _text(value["goal"], "mission_intent.goal", GOAL_MAX)

    resources = value["resources"]
    if not isinstance(resources, list) or not resources:
        raise InvalidRequest("mission_intent.resources must be a non-empty array of URIs")
    if len(resources) > MAX_ITEMS:
        raise InvalidRequest(f"mission_intent.resources has more than {MAX_ITEMS} items")
    for i, uri in enumerate(resources):
        check_resource_uri(uri, f"mission_intent.resources[{i}]")
    if len(set(resources)) != len(resources):
        raise InvalidRequest("mission_intent.resources lists a resource twice")

    for member in ("constraints", "success_criteria"):
        if member in value:
            _text_list(value[member], f"mission_intent.{member}")

    purpose = value.get("purpose")
    if purpose is not None:
        if not isinstance(purpose, str) or not urlsplit(purpose).scheme or len(purpose) > URI_MAX:
            raise InvalidRequest("mission_intent.purpose must be an absolute URI")
        if purpose not in catalog.purposes:
            raise InvalidRequest(f"purpose {purpose!r} is not in the deployment purpose registry")
        if client_purposes is not None and purpose not in client_purposes:
            raise InvalidRequest(f"purpose {purpose!r} is not registered for this client")

    expiry = parse_instant(value["mission_expiry"], "mission_intent.mission_expiry")
    if expiry <= now:
        raise InvalidRequest("mission_intent.mission_expiry must be in the future")

    context = _context(value.get("context", {}), catalog.constraints)

    return MissionIntent(
        value=value,
        goal=goal,
        resources=tuple(resources),
        mission_expiry=expiry,
        purpose=purpose,
        context=dict(context),
    )


def client_purposes_of(metadata: Mapping[str, Any]) -> frozenset[str] | None:
    """``mission_purposes_registered`` from client metadata, or None when not declared."""
    purposes = metadata.get("mission_purposes_registered")
    return frozenset(purposes) if isinstance(purposes, list) else None

"""One decision request, as the PDP evaluates it, and its reading from an AuthZEN
Authorization API 1.0 evaluation envelope (runtime-digest sections 3.2 and 3.3).

The envelope binding: ``subject`` is the token's ``sub`` (never the agent);
``resource.properties.audience`` is the PEP's resource, matched to the entry's ``resource``
(``resource.type``/``id`` name the fine-grained object, for resource policy only);
``action.name`` is the action or tool name, ``action.properties`` carries ``parameters``,
``parameter_digest`` and ``idempotency_key``; ``context.mission`` names the Mission
(``id``, ``issuer``, ``authority_hash``, optional ``policy_version``) and never its state;
``context.mission_state_observation`` is the PEP's optional state observation (a floor, never
a substitute); ``context.actor`` is ``client_id`` and the ``act`` chain root -> leaf;
``context.credential`` is ``issuer``, ``expires_at`` (RFC 3339), ``confirmation``;
``context.capability_source`` is the tool the PEP is about to invoke and the digest of its
definition as the PEP sees it (runtime-digest 5.8; read only where approval recorded a
binding, but checked for shape on every request).

Reading is strict about what it uses: a missing required member or a member of the wrong type
is :class:`~missionbound.runtime.errors.MalformedRequest` (HTTP 400) naming the member.
Unknown members are ignored (AuthZEN section 12: receivers ignore unknown fields). Whether the
caller may ask at all is not checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from missionbound.mission.errors import InvalidRequest
from missionbound.mission.intent import parse_instant
from missionbound.protocol.tool_manifest import CapabilitySource
from missionbound.runtime.errors import MalformedRequest, MissionContextMissing

ACT_MEMBERS = frozenset({"sub", "iss"})
MAX_ACT_LENGTH = 16
# Longest member values read (characters): identifiers, names and URIs of a request. The
# evidence log stores these members, so they are bounded before anything else sees them.
MAX_TEXT = 1024
MAX_NAME = 255
MAX_URI = 2048
MAX_DIGEST = 128
# A tool id is the Mission resource URI, "#", the tool name (protocol/tool_manifest.py).
MAX_TOOL_ID = MAX_URI + 1 + MAX_NAME
# An MCP tool's operation_ref is "tools/<name>" (protocol/tool_manifest.py).
MAX_OPERATION_REF = len("tools/") + MAX_NAME


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    subject_type: str
    subject_id: str
    subject_iss: str | None
    audience: str
    resource_type: str
    resource_id: str
    resource_properties: dict[str, Any]
    action_name: str
    parameters: dict[str, Any] | None
    parameter_digest: str | None
    idempotency_key: str | None
    mission_id: str
    mission_issuer: str
    authority_hash: str
    policy_version: str | None = None
    observed_state: str | None = None
    observed_version: int | None = None
    client_id: str | None = None
    act: tuple[dict[str, str], ...] = ()  # root -> leaf; the leaf is the immediate actor
    credential_issuer: str | None = None
    credential_expires_at: datetime | None = None
    confirmation: dict[str, Any] | None = None
    capability_source: CapabilitySource | None = None


def _object(parent: Mapping[str, Any], key: str, where: str, *,
            required: bool = True) -> dict[str, Any] | None:
    if key not in parent:
        if required:
            raise MalformedRequest(f"{where}{key} is required (a JSON object)")
        return None
    value = parent[key]
    if not isinstance(value, dict):
        raise MalformedRequest(f"{where}{key} must be a JSON object")
    return value


def _text(parent: Mapping[str, Any], key: str, where: str, *,
          required: bool = True, max_length: int = MAX_TEXT) -> str | None:
    if key not in parent and not required:
        return None
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        what = "is required and must be" if key not in parent else "must be"
        raise MalformedRequest(f"{where}{key} {what} a non-empty string")
    if len(value) > max_length:
        # Bounded here, so nothing longer reaches the evidence or the logs.
        raise MalformedRequest(f"{where}{key} is longer than {max_length} characters")
    return value


def _need_text(parent: Mapping[str, Any], key: str, where: str, *,
               max_length: int = MAX_TEXT) -> str:
    value = _text(parent, key, where, max_length=max_length)
    assert value is not None
    return value


def _actors(actor: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
    if "act" not in actor:
        return ()
    chain = actor["act"]
    if not isinstance(chain, list) or not chain:
        raise MalformedRequest("context.actor.act must be a non-empty array of actors, root "
                               "first, the immediate actor last")
    if len(chain) > MAX_ACT_LENGTH:
        raise MalformedRequest(f"context.actor.act is longer than {MAX_ACT_LENGTH} actors")
    out: list[dict[str, str]] = []
    for i, item in enumerate(chain):
        where = f"context.actor.act[{i}]."
        if not isinstance(item, dict) or set(item) - ACT_MEMBERS:
            raise MalformedRequest(f'context.actor.act[{i}] must be {{"sub"[, "iss"]}}')
        member = {"sub": _need_text(item, "sub", where)}
        iss = _text(item, "iss", where, required=False)
        if iss is not None:
            member["iss"] = iss
        out.append(member)
    return tuple(out)


def _instant(parent: Mapping[str, Any], key: str, where: str) -> datetime | None:
    if key not in parent:
        return None
    try:
        return parse_instant(parent[key], f"{where}{key}")
    except InvalidRequest as exc:
        raise MalformedRequest(exc.description) from None


def _required_instant(parent: Mapping[str, Any], key: str, where: str) -> datetime:
    """``context.credential.expires_at`` is required: every Mission-bound access token is an
    RFC 9068 token with ``exp`` (runtime-digest 3.3: "REQUIRED when the token has exp"),
    and a permit must never outlive it (PROFILE.md section 12)."""
    value = _instant(parent, key, where)
    if value is None:
        raise MalformedRequest(f"{where}{key} is required: the access token's exp, "
                               "RFC 3339")
    return value


def _capability_source(context: Mapping[str, Any]) -> CapabilitySource | None:
    source = _object(context, "capability_source", "context.", required=False)
    if source is None:
        return None
    where = "context.capability_source."
    return CapabilitySource(
        tool_id=_need_text(source, "tool_id", where, max_length=MAX_TOOL_ID),
        source_digest=_text(source, "source_digest", where, required=False,
                            max_length=MAX_DIGEST),
        source_uri=_text(source, "source_uri", where, required=False, max_length=MAX_URI),
        operation_ref=_text(source, "operation_ref", where, required=False,
                            max_length=MAX_OPERATION_REF),
    )


def request_from_authzen(body: Any) -> DecisionRequest:
    """Read one AuthZEN evaluation request (after batch defaults are merged, if any)."""
    if not isinstance(body, dict):
        raise MalformedRequest("the request body must be a JSON object")
    subject = _object(body, "subject", "")
    resource = _object(body, "resource", "")
    action = _object(body, "action", "")
    context = _object(body, "context", "")
    assert subject is not None and resource is not None and action is not None
    assert context is not None
    subject_properties = _object(subject, "properties", "subject.", required=False) or {}
    resource_properties = _object(resource, "properties", "resource.")
    assert resource_properties is not None
    action_properties = _object(action, "properties", "action.", required=False) or {}
    if "mission" not in context:
        raise MissionContextMissing("context.mission is required: every evaluation names "
                                    "its Mission (mission_context_missing)")
    mission = _object(context, "mission", "context.")
    assert mission is not None
    parameters = _object(action_properties, "parameters", "action.properties.",
                         required=False)
    observation = _object(context, "mission_state_observation", "context.",
                          required=False) or {}
    observed_version = observation.get("version")
    if observed_version is not None and (
            isinstance(observed_version, bool) or not isinstance(observed_version, int)):
        raise MalformedRequest("context.mission_state_observation.version must be an integer")
    actor = _object(context, "actor", "context.", required=False) or {}
    credential = _object(context, "credential", "context.", required=False) or {}
    return DecisionRequest(
        subject_type=_need_text(subject, "type", "subject."),
        subject_id=_need_text(subject, "id", "subject."),
        subject_iss=_text(subject_properties, "iss", "subject.properties.", required=False),
        audience=_need_text(resource_properties, "audience", "resource.properties.",
                            max_length=MAX_URI),
        resource_type=_need_text(resource, "type", "resource."),
        resource_id=_need_text(resource, "id", "resource."),
        resource_properties=resource_properties,
        action_name=_need_text(action, "name", "action.", max_length=MAX_NAME),
        parameters=parameters,
        parameter_digest=_text(action_properties, "parameter_digest", "action.properties.",
                               required=False, max_length=MAX_DIGEST),
        idempotency_key=_text(action_properties, "idempotency_key", "action.properties.",
                              required=False),
        mission_id=_need_text(mission, "id", "context.mission.", max_length=MAX_NAME),
        mission_issuer=_need_text(mission, "issuer", "context.mission.", max_length=MAX_URI),
        authority_hash=_need_text(mission, "authority_hash", "context.mission.",
                                  max_length=MAX_DIGEST),
        policy_version=_text(mission, "policy_version", "context.mission.", required=False),
        observed_state=_text(observation, "state", "context.mission_state_observation.",
                             required=bool(observation)),
        observed_version=observed_version,
        client_id=_text(actor, "client_id", "context.actor.", required=False),
        act=_actors(actor),
        credential_issuer=_text(credential, "issuer", "context.credential.", required=False),
        credential_expires_at=_required_instant(credential, "expires_at",
                                                "context.credential."),
        confirmation=_object(credential, "confirmation", "context.credential.",
                             required=False),
        capability_source=_capability_source(context),
    )

"""The Mission's authority over one request (PROFILE.md sections 4, 6 and 9; step 4 of
:meth:`MissionGuard.authorize <missionbound.enforce.rs.guard.MissionGuard.authorize>`).

An entry of ``authorization_details`` for this resource; for a delegated token, only entries
whose ``delegation`` allows the immediate actor read from ``act`` (never ``client_id``) at
the chain's depth; one that grants the action; every constraint of that entry evaluated
against the request (:mod:`missionbound.enforce.rs.constraints`), unknown or unevaluable keys
refused. The request facts the constraints read, the JSON body among them, are gathered
here, the body never read past the resource's limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from typing import Any, cast

from starlette.requests import Request

from missionbound.enforce.rs.constraints import PARAMETER_INVALID, check_constraints
from missionbound.enforce.rs.errors import (
    BodyTooLarge,
    InsufficientScopeRefusal,
    InvalidRequestRefusal,
)
from missionbound.enforce.rs.pdp_client import without_metered
from missionbound.enforce.rs.request import MISSING, Extractor, RequestFacts, parse_json_body
from missionbound.mission.authority import ENTRY_TYPE, Entry
from missionbound.mission.delegation import delegable_entries
from missionbound.mission.errors import InvalidRequest
from missionbound.protocol.access_tokens import AccessToken

_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


class AuthorityCheck:
    """Step 4 for one resource: which ``authorization_details`` entry, if any, allows a
    request, and the facts of the request it was checked against."""

    def __init__(self, *, resource: str, max_body_bytes: int) -> None:
        self.resource = resource
        self.max_body_bytes = max_body_bytes

    async def check(
        self, request: Request, token: AccessToken, action: str | None,
        bind: Mapping[str, Extractor], labels: tuple[str, ...],
        path_params: Mapping[str, str] | None, parameters: Extractor | None = None,
    ) -> tuple[Mapping[str, Any], RequestFacts]:
        """The entry that allows ``request`` to perform ``action``, and the facts it was
        checked against; raises the refusal otherwise. With ``parameters`` (RS-D) the
        consumption bounds are left to the PDP, which meters them."""
        entries: Sequence[Mapping[str, Any]] = [
            entry for entry in token.authorization_details
            if entry.get("type") == ENTRY_TYPE and entry.get("resource") == self.resource]
        if not entries:
            raise InsufficientScopeRefusal("resource_not_granted", "the Mission grants nothing "
                                           f"at {self.resource}")
        if token.actors:
            # PROFILE.md section 9: the actor is read from act, never from client_id.
            entries = delegable_entries(cast(list[Entry], entries),
                                        delegate_client_id=token.actors[0].sub,
                                        depth=len(token.actors)).kept
            if not entries:
                raise InsufficientScopeRefusal(
                    "delegation_not_permitted", f"the Mission does not let "
                    f"{token.actors[0].sub[:100]!r} act at this resource at delegation depth "
                    f"{len(token.actors)}")
        if action is None:
            raise InsufficientScopeRefusal("route_not_declared", f"no Mission action is "
                                           f"declared for {request.method} {request.url.path}: "
                                           "refused (fail closed)")
        granting = [entry for entry in entries if _grants(entry, action)]
        if not granting:
            raise InsufficientScopeRefusal("action_not_granted", f"the Mission does not grant "
                                           f"{action!r} at this resource")
        readers = [*bind.values(), *([parameters] if parameters is not None else [])]
        facts = await self._facts(request, readers, path_params)
        first_refusal = None
        for entry in granting:
            # RS-D: the PDP meters consumption bounds; every other key is checked here too.
            checked = without_metered(entry) if parameters is not None else entry
            refusal = check_constraints(checked, bindings=bind, facts=facts, labels=labels)
            if refusal is None:
                return entry, facts
            first_refusal = first_refusal or refusal
        assert first_refusal is not None
        wire = (InvalidRequestRefusal if first_refusal.reason == PARAMETER_INVALID
                else InsufficientScopeRefusal)
        raise wire(first_refusal.reason, first_refusal.description)

    async def _facts(self, request: Request, readers: Sequence[Extractor],
                     path_params: Mapping[str, str] | None) -> RequestFacts:
        body: Any = MISSING
        if any(extractor.needs_json_body for extractor in readers):
            body = await self._json_body(request)
        return RequestFacts(
            method=request.method, path=request.url.path,
            path_params=dict(request.path_params if path_params is None else path_params),
            query=_single_values(request.query_params.multi_items()),
            headers=_single_values(request.headers.items()), json_body=body)

    async def _json_body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not _CONTENT_LENGTH.fullmatch(declared):
                raise InvalidRequestRefusal("malformed_content_length",
                                            "the Content-Length header is not a length")
            if int(declared) > self.max_body_bytes:
                raise self._too_large()
        raw = await self._bounded_body(request)
        if not raw:
            return MISSING
        try:
            return parse_json_body(raw)
        except InvalidRequest as exc:
            raise InvalidRequestRefusal("invalid_body", exc.description) from None

    async def _bounded_body(self, request: Request) -> bytes:
        """The body, never read past ``max_body_bytes``: a chunked body declares no length,
        and ``request.body()`` would buffer whatever the client keeps sending."""
        received = bytearray()
        async with aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                received += chunk
                if len(received) > self.max_body_bytes:
                    raise self._too_large()
        body = bytes(received)
        # Where Request.body() keeps what it read: the route (FastAPI) and the middleware,
        # which hands the body on to the application, read it from there again.
        request._body = body
        return body

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge("body_too_large", f"the body is larger than "
                            f"{self.max_body_bytes} bytes")


def _single_values(items: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Each name's value; a name sent more than once maps to the list of its values, which no
    constraint accepts (parameter_invalid): the guard must never check one value while the
    application uses another."""
    out: dict[str, Any] = {}
    for name, value in items:
        if name in out:
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


def _grants(entry: Mapping[str, Any], action: str) -> bool:
    actions = entry.get("actions")
    return isinstance(actions, list) and action in actions


__all__ = ["AuthorityCheck"]

"""The AuthZEN Authorization API 1.0 wire format, framework-free: request bodies, the batch
(``evaluations``) envelope, the search shapes with pagination, decision objects and the PDP
metadata document. The Mission PDP and the resource-policy tenants both speak it; the HTTP
routes (``web/authzen.py``) only read bytes, call in here and send what comes back.

Plain ``dict`` handling on purpose: this is the hot path of every PEP call (DESIGN.md
"Fast": >= 1,500 evaluations/s over HTTP on 2 cores), so no model classes are built per
request. Receivers ignore unknown members (AuthZEN 1.0 section 12).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from missionbound.mission.canonical import parse_strict
from missionbound.mission.errors import InvalidRequest
from missionbound.runtime.errors import AuthZenError, BatchTooLarge, MalformedRequest

JSON_MEDIA_TYPE: Final = "application/json"
# Deep enough for action.properties.parameters carrying nested tool arguments.
MAX_JSON_DEPTH: Final = 32
# runtime-digest section 3.7: a PDP may bound a batch; oversize is 413 and the PEP splits.
MAX_BATCH_ITEMS: Final = 100
# Search results per page when the request names no page.limit, and the most it may ask.
MAX_PAGE_LIMIT: Final = 1000

EXECUTE_ALL: Final = "execute_all"
DENY_ON_FIRST_DENY: Final = "deny_on_first_deny"
PERMIT_ON_FIRST_PERMIT: Final = "permit_on_first_permit"
# AuthZEN 1.0 section 7.1.2.
EVALUATIONS_SEMANTICS: Final = frozenset({EXECUTE_ALL, DENY_ON_FIRST_DENY, PERMIT_ON_FIRST_PERMIT})

# The members an evaluations item may carry, each a default at the top level (section 7.1.1).
ENVELOPE_MEMBERS: Final = ("subject", "action", "resource", "context")

MISSION_RUNTIME_CAPABILITY: Final = "urn:ietf:params:authzen:mission-runtime"

SUBJECT: Final = "subject"
RESOURCE: Final = "resource"
ACTION: Final = "action"
SEARCH_KINDS: Final = (SUBJECT, RESOURCE, ACTION)


# -- the body --------------------------------------------------------------------------------


def parse_body(raw: bytes, content_type: str | None, *, max_size: int) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`MalformedRequest` (400).

    AuthZEN 1.0 section 12: every request is ``POST`` with ``Content-Type: application/json``.
    The body is read strictly (mission/canonical.py): a duplicate member name could make the
    PEP and the PDP read two different requests from the same bytes, so it is refused, as are
    non-integer numbers (decimals travel as strings in this project: PROFILE.md section 3).
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise MalformedRequest(f"the request body must be {JSON_MEDIA_TYPE}")
    try:
        body = parse_strict(raw, max_size=max_size, what="the request body",
                            max_depth=MAX_JSON_DEPTH)
    except InvalidRequest as error:
        raise MalformedRequest(error.description) from None
    if not isinstance(body, dict):
        raise MalformedRequest("the request body must be a JSON object")
    return body


# -- entities ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entity:
    """A subject or resource (AuthZEN 1.0 sections 5.1 and 5.2): ``type`` and ``id`` are
    non-empty strings; ``properties`` an object (empty when absent)."""

    type: str
    id: str
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Action:
    """AuthZEN 1.0 section 5.3: ``name`` is required."""

    name: str
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One access evaluation request (section 6.1), validated as a generic AuthZEN request:
    nothing here knows about Missions."""

    subject: Entity
    action: Action
    resource: Entity
    context: Mapping[str, Any]


_EMPTY: Mapping[str, Any] = {}


def _object(body: Mapping[str, Any], member: str, where: str) -> dict[str, Any]:
    value = body.get(member)
    if value is None:
        raise MalformedRequest(f"{where}{member} is required")
    if not isinstance(value, dict):
        raise MalformedRequest(f"{where}{member} must be an object")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedRequest(f"{name} must be a non-empty string")
    return value


def _properties(entity: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    properties = entity.get("properties")
    if properties is None:
        return _EMPTY
    if not isinstance(properties, dict):
        raise MalformedRequest(f"{name}.properties must be an object")
    return properties


def parse_entity(body: Mapping[str, Any], member: str, *, with_id: bool = True) -> Entity:
    """``subject`` or ``resource`` of ``body``; ``with_id=False`` for the searched entity
    of a search request, whose ``id`` is what the PDP finds (any ``id`` sent is ignored)."""
    entity = _object(body, member, "")
    kind = _string(entity.get("type"), f"{member}.type")
    ident = _string(entity.get("id"), f"{member}.id") if with_id else ""
    return Entity(kind, ident, _properties(entity, member))


def parse_action(body: Mapping[str, Any]) -> Action:
    action = _object(body, ACTION, "")
    return Action(_string(action.get("name"), "action.name"), _properties(action, ACTION))


def parse_context(body: Mapping[str, Any]) -> Mapping[str, Any]:
    context = body.get("context")
    if context is None:
        return _EMPTY
    if not isinstance(context, dict):
        raise MalformedRequest("context must be an object")
    return context


def parse_evaluation(body: Mapping[str, Any]) -> Evaluation:
    """An access evaluation request (AuthZEN 1.0 section 6.1) or 400."""
    return Evaluation(parse_entity(body, SUBJECT), parse_action(body),
                      parse_entity(body, RESOURCE), parse_context(body))


# -- decisions -------------------------------------------------------------------------------


def decision(allowed: bool, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A decision object (section 6.2); ``context`` only when there is something in it."""
    if context:
        return {"decision": allowed, "context": dict(context)}
    return {"decision": allowed}


def item_error(status: int, message: str) -> dict[str, Any]:
    """A batch item that could not be evaluated: a deny carrying the error (section 7.2)."""
    return {"decision": False, "context": {"error": {"status": status, "message": message}}}


# -- batches ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """An access evaluations request (section 7.1): ``items`` are complete request bodies,
    each item's members over the top-level defaults; ``items is None`` when the request has
    no ``evaluations`` (or an empty one): then it is a single evaluation of the top level
    (section 7.1, backwards compatibility) and is answered as one."""

    items: list[dict[str, Any]] | None
    semantic: str
    top_level: dict[str, Any]


def parse_batch(body: Mapping[str, Any], *, max_items: int = MAX_BATCH_ITEMS) -> Batch:
    """The evaluations envelope, or 400 (malformed, unknown semantic) / 413 (too many)."""
    semantic = EXECUTE_ALL
    options = body.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise MalformedRequest("options must be an object")
        sent = options.get("evaluations_semantic", EXECUTE_ALL)
        if sent not in EVALUATIONS_SEMANTICS:
            # Unknown is refused rather than read as execute_all: a PEP asking for a
            # short circuit we do not know must not get a different batch than it expects.
            raise MalformedRequest(
                "options.evaluations_semantic must be one of "
                + ", ".join(sorted(EVALUATIONS_SEMANTICS)))
        semantic = sent
    defaults = {name: body[name] for name in ENVELOPE_MEMBERS if name in body}
    evaluations = body.get("evaluations")
    if evaluations is None or evaluations == []:
        return Batch(None, semantic, dict(body))
    if not isinstance(evaluations, list):
        raise MalformedRequest("evaluations must be an array")
    if len(evaluations) > max_items:
        raise BatchTooLarge(f"evaluations has {len(evaluations)} items; the limit is "
                            f"{max_items}: split the batch")
    items = []
    for index, item in enumerate(evaluations):
        if not isinstance(item, dict):
            raise MalformedRequest(f"evaluations[{index}] must be an object")
        # Section 7.1.1: an item's member replaces the default as a whole (no deep merge).
        merged = dict(defaults)
        merged.update(item)
        items.append(merged)
    return Batch(items, semantic, dict(body))


def stops_after(semantic: str, answer: Mapping[str, Any]) -> bool:
    """Whether a short-circuit ``semantic`` ends the batch after ``answer`` (section 7.1.2):
    the deciding item is the last one returned; an item error counts as a deny."""
    if semantic == DENY_ON_FIRST_DENY:
        return answer.get("decision") is not True
    if semantic == PERMIT_ON_FIRST_PERMIT:
        return answer.get("decision") is True
    return False


def run_batch(items: list[dict[str, Any]], semantic: str,
              evaluate: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate ``items`` in request order under ``semantic``. ``evaluate`` answers one
    body; an :class:`~missionbound.runtime.errors.AuthZenError` it raises becomes that
    item's error (section 7.2), never the whole request's."""
    answers: list[dict[str, Any]] = []
    for item in items:
        try:
            answer = evaluate(item)
        except AuthZenError as error:
            answer = item_error(error.status, error.message)
        answers.append(answer)
        if stops_after(semantic, answer):
            break
    return answers


# -- search ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """``page`` of a search request (AuthZEN 1.0 section 8): where to start, how many."""

    offset: int
    limit: int


@dataclass(frozen=True, slots=True)
class Search:
    """A search request: ``kind`` is the searched member (subject, resource or action).
    The searched entity keeps its ``type`` and ``properties`` with an empty ``id``; the
    action is None in an action search."""

    kind: str
    subject: Entity | None
    action: Action | None
    resource: Entity | None
    context: Mapping[str, Any]
    page: Page
    fingerprint: str


def parse_search(body: Mapping[str, Any], kind: str) -> Search:
    """A subject, resource or action search request (sections 8.4-8.6), or 400."""
    if kind not in SEARCH_KINDS:
        raise ValueError(kind)
    subject = parse_entity(body, SUBJECT, with_id=kind != SUBJECT)
    resource = parse_entity(body, RESOURCE, with_id=kind != RESOURCE)
    action = parse_action(body) if kind != ACTION else None
    context = parse_context(body)
    fingerprint = _fingerprint(kind, body)
    return Search(kind, subject, action, resource, context,
                  _parse_page(body.get("page"), fingerprint), fingerprint)


def _fingerprint(kind: str, body: Mapping[str, Any]) -> str:
    """What a page token is bound to: the search without its ``page``, so that a token is
    never replayed against another question."""
    question = {name: value for name, value in body.items() if name != "page"}
    text = json.dumps([kind, question], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _parse_page(page: Any, fingerprint: str) -> Page:
    if page is None:
        return Page(0, MAX_PAGE_LIMIT)
    if not isinstance(page, dict):
        raise MalformedRequest("page must be an object")
    limit = page.get("limit", MAX_PAGE_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE_LIMIT:
        raise MalformedRequest(f"page.limit must be an integer from 1 to {MAX_PAGE_LIMIT}")
    token = page.get("token")
    if token is None or token == "":
        return Page(0, limit)
    if not isinstance(token, str):
        raise MalformedRequest("page.token must be a string")
    return Page(_offset_of(token, fingerprint), limit)


def _offset_of(token: str, fingerprint: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        bound, _, offset = text.partition(":")
        value = int(offset)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise MalformedRequest("page.token is not a token this PDP issued") from None
    if bound != fingerprint or value < 0:
        raise MalformedRequest("page.token belongs to another search: repeat the same "
                               "search with it, or start again without a token")
    return value


def page_token(fingerprint: str, offset: int) -> str:
    raw = f"{fingerprint}:{offset}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def search_response(search: Search, matches: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"page": {next_token, count, total}, "results": [...]}`` for the page ``search``
    asked for (section 8.3). ``next_token`` is empty on the last page."""
    start = min(search.page.offset, len(matches))
    end = start + search.page.limit
    results = matches[start:end]
    next_token = page_token(search.fingerprint, end) if end < len(matches) else ""
    return {"page": {"next_token": next_token, "count": len(results), "total": len(matches)},
            "results": results}


# -- metadata --------------------------------------------------------------------------------


def metadata_document(pdp: str, *, capabilities: tuple[str, ...] = ()) -> dict[str, Any]:
    """The PDP metadata (AuthZEN 1.0 section 9.1). ``policy_decision_point`` is the PDP
    identifier the document's URL is built from (a client ignores a document whose value
    differs); the endpoints hang under it."""
    document: dict[str, Any] = {
        "policy_decision_point": pdp,
        "access_evaluation_endpoint": f"{pdp}/access/v1/evaluation",
        "access_evaluations_endpoint": f"{pdp}/access/v1/evaluations",
        "search_subject_endpoint": f"{pdp}/access/v1/search/subject",
        "search_resource_endpoint": f"{pdp}/access/v1/search/resource",
        "search_action_endpoint": f"{pdp}/access/v1/search/action",
    }
    if capabilities:
        document["capabilities"] = list(capabilities)
    return document

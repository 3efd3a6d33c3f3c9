"""The Shared Signals transmitter's management API (OpenID Shared Signals Framework 1.0,
sections 7 and 8; PROFILE.md section 10, "Signals"; issuance digest 8.5).

What a receiver can do, each as one service function on the caller's transaction:

* read the Transmitter Configuration Metadata (:func:`transmitter_configuration`);
* create, read, update (PATCH), replace (PUT) and delete its streams (SSF 1.0 section 8.1.1);
* read and change a stream's status (``enabled`` | ``paused`` | ``disabled``, section 8.1.2);
* ask for a verification event (section 8.1.4).

Who the receiver is: an authenticated confidential client (:func:`authenticate_receiver`:
``client_secret_basic``, or ``private_key_jwt`` with the RFC 7523 client assertion sent as
``Authorization: Bearer <assertion>``, since these requests carry JSON, not a form). A client
sees and changes only its own streams; another client's stream answers exactly like a stream
that does not exist (404). Each stream's audience is its client: ``aud`` of every SET it
carries is that ``client_id`` (one audience per SET), and it carries the events of the
Missions that client may see (:func:`missionbound.issuer.mission_access.visible_resources`).

Input is validated strictly: unknown members, wrong types, unsupported delivery methods or
event types, and transmitter-supplied members that contradict the transmitter are a 400
``invalid_request`` that changes nothing. The SETs themselves (event types, claims,
signing) are :mod:`missionbound.issuer.security_events`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from sqlalchemy.orm import Session

from missionbound.issuer.clients import OAuthClient
from missionbound.issuer.security_events import EVENTS_SUPPORTED, VERIFICATION, queue_set
from missionbound.issuer.server import MissionIssuer, OAuthRequest
from missionbound.mission.errors import InvalidRequest, MissionError
from missionbound.store import signals as rows
from missionbound.store.models import SignalStream
from missionbound.store.signals import POLL_METHOD, PUSH_METHOD, STREAM_STATUSES

# -- vocabulary ----------------------------------------------------------------------------

SPEC_VERSION = "1_0"
WELL_KNOWN_PATH = "/.well-known/ssf-configuration"
CONFIGURATION_PATH = "/ssf/streams"
STATUS_PATH = "/ssf/status"
VERIFICATION_PATH = "/ssf/verify"
POLL_PATH = "/ssf/poll"

# Decisions (docs/signals.md): at most this many streams per client; at most one
# verification request per stream in this many seconds (SSF min_verification_interval,
# refused with 429 otherwise).
MAX_STREAMS_PER_CLIENT = 10
MIN_VERIFICATION_INTERVAL_SECONDS = 10

RECEIVER_AUTH_METHODS = ("client_secret_basic", "private_key_jwt")
ASSERTION_TYPE = JWTBearerClientAssertion.CLIENT_ASSERTION_TYPE
AUTH_ENDPOINT = "ssf"

MAX_ID_LENGTH = 255
MAX_URL_LENGTH = 2048
MAX_HEADER_LENGTH = 4096
MAX_TEXT_LENGTH = 1024

STREAM_MEMBERS_RECEIVER = frozenset({"delivery", "events_requested", "description"})
STREAM_MEMBERS_TRANSMITTER = frozenset(
    {"stream_id", "iss", "aud", "events_supported", "events_delivered",
     "min_verification_interval"}
)
DELIVERY_MEMBERS = frozenset({"method", "endpoint_url", "authorization_header"})


# -- errors --------------------------------------------------------------------------------


class ReceiverUnauthenticated(MissionError):
    """The caller is not an authenticated confidential client (401, RFC 6750/7617 style)."""

    error = "invalid_client"
    status = 401


class StreamNotFound(MissionError):
    """No such stream for this client: unknown and another client's look the same."""

    error = "not_found"
    status = 404

    def __init__(self) -> None:
        super().__init__("no such stream")


class TooManyStreams(MissionError):
    """SSF 1.0 section 8.1.1.1: 409 when the transmitter takes no more streams from this
    receiver."""

    error = "too_many_streams"
    status = 409


class StreamDisabled(MissionError):
    """A verification event asked of a disabled stream, which carries nothing."""

    error = "stream_disabled"
    status = 409


class VerificationTooSoon(MissionError):
    """SSF 1.0 section 8.1.4.2: verification asked more often than
    ``min_verification_interval`` (429)."""

    error = "too_many_requests"
    status = 429

    def __init__(self, retry_after: int, description: str | None = None) -> None:
        super().__init__(
            description
            or f"at most one verification request per {MIN_VERIFICATION_INTERVAL_SECONDS} s; "
            f"try again in {retry_after} s"
        )
        self.retry_after = retry_after


# -- metadata ------------------------------------------------------------------------------


def transmitter_configuration(issuer: str) -> dict[str, Any]:
    """SSF 1.0 section 7.1: the Transmitter Configuration Metadata."""
    base = issuer.rstrip("/")
    return {
        "spec_version": SPEC_VERSION,
        "issuer": issuer,
        "jwks_uri": f"{base}/jwks",
        "delivery_methods_supported": [PUSH_METHOD, POLL_METHOD],
        "configuration_endpoint": f"{base}{CONFIGURATION_PATH}",
        "status_endpoint": f"{base}{STATUS_PATH}",
        "verification_endpoint": f"{base}{VERIFICATION_PATH}",
        # A stream carries every Mission its client may see; no subjects are added or
        # removed by hand (no add_subject_endpoint / remove_subject_endpoint).
        "default_subjects": "ALL",
        "authorization_schemes": [
            # client_secret_basic (HTTP Basic) and private_key_jwt (RFC 7523) assertions.
            {"spec_urn": "urn:ietf:rfc:7617"},
            {"spec_urn": "urn:ietf:rfc:7523"},
        ],
    }


# -- who is asking -------------------------------------------------------------------------


def authenticate_receiver(
    issuer: MissionIssuer, headers: Mapping[str, str], *, method: str, path: str
) -> OAuthClient:
    """The confidential client making this request, or :class:`ReceiverUnauthenticated`.

    Call it before any transaction opens: a ``private_key_jwt`` assertion's ``jti`` is spent
    in a transaction of its own (client_auth.py), which on SQLite must not nest."""
    params: list[tuple[str, str]] = []
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        params = [("client_assertion_type", ASSERTION_TYPE), ("client_assertion", value.strip())]
    request = OAuthRequest(
        method=method,
        url=issuer.endpoint_url(path),
        headers=headers,
        params=params,
        dpop_headers=[],
        now=issuer.clock(),
    )
    try:
        client = issuer.authenticate_client(request, list(RECEIVER_AUTH_METHODS), AUTH_ENDPOINT)
    except OAuth2Error:
        client = None
    if not isinstance(client, OAuthClient):
        raise ReceiverUnauthenticated(
            "authenticate as a confidential client: HTTP Basic (client_secret_basic) or "
            "'Authorization: Bearer <private_key_jwt client assertion>'"
        )
    return client


# -- streams -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSettings:
    """What a receiver may choose about its stream (SSF "Receiver-Supplied" members)."""

    delivery_method: str
    endpoint_url: str | None  # push only; a poll stream's URL is the transmitter's
    authorization_header: str | None
    events_requested: tuple[str, ...]
    description: str | None


def events_delivered(requested: list[str] | tuple[str, ...]) -> list[str]:
    """SSF 1.0 section 8.1.1: the events requested that the transmitter supports."""
    wanted = set(requested)
    return [event for event in EVENTS_SUPPORTED if event in wanted]


def poll_url(issuer: str, stream_id: str) -> str:
    return f"{issuer.rstrip('/')}{POLL_PATH}?stream_id={quote(stream_id, safe='')}"


def stream_configuration(stream: SignalStream, issuer: str) -> dict[str, Any]:
    """SSF 1.0 section 8.1.1: the stream as the receiver reads it. ``authorization_header``
    is write-only: it is a credential of the receiver's, never echoed."""
    endpoint = (
        poll_url(issuer, stream.stream_id)
        if stream.delivery_method == POLL_METHOD
        else stream.endpoint_url
    )
    config: dict[str, Any] = {
        "stream_id": stream.stream_id,
        "iss": issuer,
        "aud": stream.audience,
        "delivery": {"method": stream.delivery_method, "endpoint_url": endpoint},
        "events_supported": list(EVENTS_SUPPORTED),
        "events_requested": list(stream.events_requested),
        "events_delivered": events_delivered(stream.events_requested),
        "min_verification_interval": MIN_VERIFICATION_INTERVAL_SECONDS,
    }
    if stream.description is not None:
        config["description"] = stream.description
    return config


def create_stream(
    session: Session, *, client_id: str, body: Any, issuer: str, now: datetime, may_push: bool
) -> dict[str, Any]:
    """SSF 1.0 section 8.1.1.1: a new stream for ``client_id``, enabled; its configuration.
    ``may_push``: whether this client may have the AS POST to a URL it names (only clients
    the operator configured; a self-registered client polls, decision E12)."""
    settings = parse_stream_request(
        body, client_id=client_id, issuer=issuer, current=None, may_push=may_push
    )
    if rows.count_streams(session, client_id, for_create=True) >= MAX_STREAMS_PER_CLIENT:
        raise TooManyStreams(
            f"a client may have at most {MAX_STREAMS_PER_CLIENT} streams; delete one first"
        )
    stream = rows.add_stream(
        session,
        stream_id="ssf_" + secrets.token_urlsafe(16),
        client_id=client_id,
        audience=client_id,
        delivery_method=settings.delivery_method,
        endpoint_url=settings.endpoint_url,
        authorization_header=settings.authorization_header,
        events_requested=list(settings.events_requested),
        description=settings.description,
        now=now,
    )
    return stream_configuration(stream, issuer)


def read_streams(
    session: Session, *, client_id: str, stream_id: str | None, issuer: str
) -> dict[str, Any] | list[dict[str, Any]]:
    """SSF 1.0 section 8.1.1.2: one stream by ``stream_id``, or all of the client's."""
    if stream_id is None:
        return [stream_configuration(s, issuer) for s in rows.list_streams(session, client_id)]
    return stream_configuration(_own_stream(session, client_id, stream_id), issuer)


def change_stream(
    session: Session,
    *,
    client_id: str,
    body: Any,
    issuer: str,
    now: datetime,
    replace: bool,
    may_push: bool,
) -> dict[str, Any]:
    """SSF 1.0 sections 8.1.1.3 (PATCH: the members sent change) and 8.1.1.4 (PUT: every
    receiver-supplied member is replaced; one left out takes its default)."""
    stream_id = _stream_id_member(body)
    stream = _own_stream(session, client_id, stream_id, for_update=True)
    settings = parse_stream_request(
        body, client_id=client_id, issuer=issuer, current=stream, replace=replace,
        may_push=may_push,
    )
    delivery_changed = (settings.delivery_method, settings.endpoint_url,
                        settings.authorization_header) != (
        stream.delivery_method, stream.endpoint_url, stream.authorization_header)
    stream.delivery_method = settings.delivery_method
    stream.endpoint_url = settings.endpoint_url
    stream.authorization_header = settings.authorization_header
    stream.events_requested = list(settings.events_requested)
    stream.description = settings.description
    stream.updated_at = now
    if delivery_changed:
        # A receiver that fixed its endpoint wants its queue now, not after the backoff; a
        # dispatcher still sending to the old one loses its lease (store.signals fencing).
        stream.attempts = 0
        stream.next_attempt_at = None
    session.flush()
    return stream_configuration(stream, issuer)


def delete_stream(session: Session, *, client_id: str, stream_id: str | None) -> None:
    """SSF 1.0 section 8.1.1.5: the stream and every SET it still owed are gone."""
    rows.remove_stream(session, _own_stream(session, client_id, _query_stream_id(stream_id),
                                            for_update=True))


def read_status(session: Session, *, client_id: str, stream_id: str | None) -> dict[str, Any]:
    """SSF 1.0 section 8.1.2.1."""
    return _status_of(_own_stream(session, client_id, _query_stream_id(stream_id)))


def change_status(session: Session, *, client_id: str, body: Any, now: datetime
                  ) -> dict[str, Any]:
    """SSF 1.0 section 8.1.2.2: ``paused`` holds the stream's events for later; ``disabled``
    drops what was queued and queues nothing until enabled again."""
    data = _object(body, "the status request")
    _only(data, {"stream_id", "status", "reason"}, "the status request")
    stream_id = _stream_id_member(data)
    status = data.get("status")
    if status not in STREAM_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STREAM_STATUSES)}")
    reason = _optional_text(data, "reason")
    stream = _own_stream(session, client_id, stream_id, for_update=True)
    rows.set_status(session, stream, status, reason, now)
    return _status_of(stream)


def request_verification(
    session: Session, *, client_id: str, body: Any, issuer: str, now: datetime
) -> str:
    """SSF 1.0 section 8.1.4.2: queue a verification SET (echoing ``state``) on the stream;
    it goes out like any other (held while the stream is paused). Returns its ``jti``."""
    data = _object(body, "the verification request")
    _only(data, {"stream_id", "state"}, "the verification request")
    stream_id = _stream_id_member(data)
    state = _optional_text(data, "state")
    stream = _own_stream(session, client_id, stream_id, for_update=True)
    if stream.status == rows.STATUS_DISABLED:
        raise StreamDisabled("the stream is disabled: enable it before asking for verification")
    if rows.has_owed_of_type(session, stream.stream_id, VERIFICATION):
        # One undelivered verification at a time: a receiver that never polls must not
        # grow its queue by asking (decision E13).
        raise VerificationTooSoon(
            MIN_VERIFICATION_INTERVAL_SECONDS,
            "the stream's last verification event is still undelivered; receive it first",
        )
    last = rows.last_verification_at(session, stream.stream_id, VERIFICATION)
    interval = timedelta(seconds=MIN_VERIFICATION_INTERVAL_SECONDS)
    if last is not None and now - last < interval:
        raise VerificationTooSoon(max(1, int((last + interval - now).total_seconds() + 0.999)))
    jti = queue_set(
        session,
        stream,
        issuer=issuer,
        subject={"format": "opaque", "id": stream.stream_id},
        event_type=VERIFICATION,
        event={"state": state} if state is not None else {},
        mission_id=None,
        now=now,
    )
    session.flush()
    return jti


# -- parsing -------------------------------------------------------------------------------


def parse_stream_request(
    body: Any,
    *,
    client_id: str,
    issuer: str,
    current: SignalStream | None,
    may_push: bool,
    replace: bool = True,
) -> StreamSettings:
    """The stream settings a create (``current`` None), replace or update request asks for.

    Transmitter-supplied members may be sent back (a receiver PUTs what it read) but must
    equal the transmitter's values; ``stream_id`` is the transmitter's to choose, so a
    create request must not carry one."""
    data = _object(body, "the stream configuration")
    _only(data, STREAM_MEMBERS_RECEIVER | STREAM_MEMBERS_TRANSMITTER, "the stream configuration")
    if current is None and "stream_id" in data:
        raise InvalidRequest("stream_id is assigned by the transmitter; leave it out")
    keep = current is not None and not replace  # PATCH: what is not sent stays
    if "delivery" in data:
        method, endpoint, authorization = _parse_delivery(
            data["delivery"], issuer=issuer, current=current, may_push=may_push
        )
    elif keep:
        assert current is not None
        method, endpoint, authorization = (
            current.delivery_method, current.endpoint_url, current.authorization_header)
    else:
        raise InvalidRequest(
            f"delivery is required: {{\"method\": \"{PUSH_METHOD}\", \"endpoint_url\": ...}} "
            f"or {{\"method\": \"{POLL_METHOD}\"}}"
        )
    if "events_requested" in data:
        requested = _parse_events(data["events_requested"])
    elif keep:
        assert current is not None
        requested = tuple(current.events_requested)
    else:
        requested = EVENTS_SUPPORTED
    if "description" in data:
        description = _optional_text(data, "description")
    elif keep:
        assert current is not None
        description = current.description
    else:
        description = None
    _check_transmitter_members(data, client_id=client_id, issuer=issuer, requested=requested)
    return StreamSettings(method, endpoint, authorization, requested, description)


def _parse_delivery(
    value: Any, *, issuer: str, current: SignalStream | None, may_push: bool
) -> tuple[str, str | None, str | None]:
    delivery = _object(value, "delivery")
    _only(delivery, DELIVERY_MEMBERS, "delivery")
    method = delivery.get("method")
    if method not in (PUSH_METHOD, POLL_METHOD):
        raise InvalidRequest(
            f"delivery.method must be {PUSH_METHOD} (push, RFC 8935) or {POLL_METHOD} "
            "(poll, RFC 8936)"
        )
    if method == POLL_METHOD:
        if "authorization_header" in delivery:
            raise InvalidRequest("authorization_header applies to push delivery only")
        if "endpoint_url" in delivery:
            own = poll_url(issuer, current.stream_id) if current is not None else None
            if delivery["endpoint_url"] != own:
                raise InvalidRequest(
                    "for poll delivery the transmitter supplies delivery.endpoint_url; "
                    "leave it out"
                )
        return method, None, None
    if not may_push:
        # Push makes the AS send requests to a URL the client names: for a client anyone
        # could register, that would let anyone aim the AS at internal addresses.
        raise InvalidRequest(
            f"push delivery is for clients the operator configured; use {POLL_METHOD} (poll)"
        )
    endpoint = delivery.get("endpoint_url")
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidRequest("push delivery needs delivery.endpoint_url, the receiver's URL")
    _check_push_url(endpoint)
    authorization = delivery.get("authorization_header")
    if authorization is not None and (
        not isinstance(authorization, str)
        or not 0 < len(authorization) <= MAX_HEADER_LENGTH
        or any(not 0x20 <= ord(char) <= 0x7E for char in authorization)
    ):
        raise InvalidRequest(
            "delivery.authorization_header must be printable ASCII of 1 to "
            f"{MAX_HEADER_LENGTH} characters (the Authorization header value to send)"
        )
    return method, endpoint, authorization


def _check_push_url(url: str) -> None:
    if len(url) > MAX_URL_LENGTH or any(not 0x21 <= ord(char) <= 0x7E for char in url):
        raise InvalidRequest(
            f"delivery.endpoint_url must be a URL of at most {MAX_URL_LENGTH} characters, "
            "without spaces or non-ASCII characters"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest("delivery.endpoint_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("delivery.endpoint_url must be an absolute http or https URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(
            "delivery.endpoint_url must not carry credentials; use authorization_header"
        )
    if parts.fragment:
        raise InvalidRequest("delivery.endpoint_url must not have a fragment")
    if port == 0:
        raise InvalidRequest("delivery.endpoint_url has no usable port")


def _parse_events(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise InvalidRequest("events_requested must be a non-empty array of event type URIs")
    unknown = [event for event in value if event not in EVENTS_SUPPORTED]
    if unknown:
        raise InvalidRequest(
            f"unsupported event type {unknown[0][:200]!r}; events_supported: "
            + ", ".join(EVENTS_SUPPORTED)
        )
    if len(set(value)) != len(value):
        raise InvalidRequest("events_requested names an event type twice")
    return tuple(value)


def _check_transmitter_members(
    data: dict[str, Any], *, client_id: str, issuer: str, requested: tuple[str, ...]
) -> None:
    expected: dict[str, Any] = {
        "iss": issuer,
        "min_verification_interval": MIN_VERIFICATION_INTERVAL_SECONDS,
    }
    for name, value in expected.items():
        if name in data and data[name] != value:
            raise InvalidRequest(f"{name} is the transmitter's ({value!r}); it cannot be changed")
    if "aud" in data and data["aud"] not in (client_id, [client_id]):
        raise InvalidRequest(f"aud is the receiving client ({client_id!r}); it cannot be changed")
    if "events_supported" in data and (
        not isinstance(data["events_supported"], list)
        or sorted(map(str, data["events_supported"])) != sorted(EVENTS_SUPPORTED)
    ):
        raise InvalidRequest("events_supported is the transmitter's; it cannot be changed")
    if "events_delivered" in data and (
        not isinstance(data["events_delivered"], list)
        or sorted(map(str, data["events_delivered"])) != sorted(events_delivered(requested))
    ):
        raise InvalidRequest(
            "events_delivered is the transmitter's (the requested events it supports); "
            "send events_requested instead"
        )


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _only(data: dict[str, Any], allowed: frozenset[str] | set[str], what: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidRequest(f"{what} has an unknown member {unknown[0][:100]!r}")


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_LENGTH:
        raise InvalidRequest(f"{name} must be a string of at most {MAX_TEXT_LENGTH} characters")
    return value


def _stream_id_member(data: Any) -> str:
    value = _object(data, "the request").get("stream_id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise InvalidRequest("stream_id is required: the id the transmitter gave the stream")
    return value


def _query_stream_id(value: str | None) -> str:
    if value is None or not 0 < len(value) <= MAX_ID_LENGTH:
        raise InvalidRequest("the stream_id query parameter is required")
    return value


def _own_stream(
    session: Session, client_id: str, stream_id: str, *, for_update: bool = False
) -> SignalStream:
    if not 0 < len(stream_id) <= MAX_ID_LENGTH:
        raise InvalidRequest(f"stream_id must be 1 to {MAX_ID_LENGTH} characters")
    stream = rows.get_stream(session, stream_id, client_id=client_id, for_update=for_update)
    if stream is None:
        raise StreamNotFound()
    return stream


def _status_of(stream: SignalStream) -> dict[str, Any]:
    status: dict[str, Any] = {"stream_id": stream.stream_id, "status": stream.status}
    if stream.status_reason is not None:
        status["reason"] = stream.status_reason
    return status


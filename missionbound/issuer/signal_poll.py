"""Polling for Security Event Tokens (RFC 8936, "Poll-Based Security Event Token (SET)
Delivery Using HTTP"; PROFILE.md section 10, "Signals").

The receiver's side of a poll, as the transmitter reads it: the request body, checked
(:func:`parse_poll_request`, RFC 8936 section 2.4: ``ack``, ``setErrs``, ``maxEvents``,
``returnImmediately``), the answer (:class:`PollAnswer`: ``sets`` and ``moreAvailable``),
and the long poll (:func:`long_poll`): ``returnImmediately: false``, the RFC's default, waits
up to :data:`LONG_POLL_SECONDS` for a SET. What a stream owes, acknowledging and signing are
the transmitter's (:meth:`missionbound.issuer.signal_delivery.SignalTransmitter.poll`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from missionbound.mission.errors import InvalidRequest
from missionbound.store import signals as rows

if TYPE_CHECKING:
    from missionbound.issuer.signal_delivery import SignalTransmitter

MAX_POLL_EVENTS = 100  # SETs returned by one poll, at most (and when maxEvents is absent)
MAX_POLL_ACKS = 1000  # ack and setErrs entries in one poll request
LONG_POLL_SECONDS = 10.0  # returnImmediately false: wait this long for a SET, at most
LONG_POLL_STEP_SECONDS = 0.25


@dataclass(frozen=True)
class PollRequest:
    """RFC 8936 section 2.4, checked."""

    max_events: int
    return_immediately: bool
    ack: tuple[str, ...] = ()
    set_errs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PollAnswer:
    sets: dict[str, str]
    more_available: bool

    def as_json(self) -> dict[str, Any]:
        return {"sets": self.sets, "moreAvailable": self.more_available}


def parse_poll_request(body: Any) -> PollRequest:
    """The poll request body (RFC 8936 section 2.4): every member optional; ``maxEvents``
    absent means as many as the transmitter gives at once (:data:`MAX_POLL_EVENTS`), larger
    values are cut to it; ``returnImmediately`` absent means false (the RFC's default)."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidRequest("the poll request must be a JSON object")
    unknown = sorted(set(body) - {"maxEvents", "returnImmediately", "ack", "setErrs"})
    if unknown:
        raise InvalidRequest(f"the poll request has an unknown member {unknown[0][:100]!r}")
    max_events = body.get("maxEvents", MAX_POLL_EVENTS)
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 0:
        raise InvalidRequest("maxEvents must be a non-negative integer")
    immediately = body.get("returnImmediately", False)
    if not isinstance(immediately, bool):
        raise InvalidRequest("returnImmediately must be true or false")
    ack = body.get("ack", [])
    if (
        not isinstance(ack, list)
        or len(ack) > MAX_POLL_ACKS
        or not all(isinstance(j, str) and 0 < len(j) <= 255 for j in ack)
    ):
        raise InvalidRequest(f"ack must be an array of at most {MAX_POLL_ACKS} jti strings")
    errs = body.get("setErrs", {})
    if not isinstance(errs, dict) or len(errs) > MAX_POLL_ACKS:
        raise InvalidRequest("setErrs must be an object of jti -> {err, description}")
    set_errs: dict[str, str] = {}
    for jti, error in errs.items():
        if (
            not 0 < len(jti) <= 255
            or not isinstance(error, dict)
            or set(error) - {"err", "description"}
            or not isinstance(error.get("err"), str)
            or not isinstance(error.get("description", ""), str)
        ):
            raise InvalidRequest(
                "each setErrs entry must be {\"err\": <code>, \"description\": <text>}"
            )
        set_errs[jti] = set_error_text(error["err"], error.get("description"))
    return PollRequest(min(max_events, MAX_POLL_EVENTS), immediately, tuple(ack), set_errs)


def set_error_text(err: str, description: str | None) -> str:
    """An RFC 8935 section 2.3 error (``err``, ``description``) as the text stored with the
    SET it refused, cut to what the store keeps."""
    text = f"{err}: {description}" if description else err
    return text[: rows.MAX_ERROR_LENGTH]


async def long_poll(
    transmitter: SignalTransmitter,
    *,
    client_id: str,
    stream_id: str,
    request: PollRequest,
    run: Callable[..., Any],
    max_wait: float | None = None,
) -> PollAnswer:
    """RFC 8936 section 2.4 ``returnImmediately: false``: if nothing is owed, look again
    every :data:`LONG_POLL_STEP_SECONDS` for up to ``max_wait`` seconds (without holding a
    thread or a transaction while waiting). ``run`` runs a blocking call off the event loop
    (``starlette.concurrency.run_in_threadpool``)."""
    deadline = time.monotonic() + (LONG_POLL_SECONDS if max_wait is None else max_wait)
    answer: PollAnswer = await run(
        transmitter.poll, client_id=client_id, stream_id=stream_id, request=request
    )
    again = PollRequest(request.max_events, request.return_immediately)  # acks done once
    while (
        not answer.sets
        and not request.return_immediately
        and request.max_events > 0
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(LONG_POLL_STEP_SECONDS)
        answer = await run(transmitter.poll, client_id=client_id, stream_id=stream_id,
                           request=again)
    return answer


__all__ = [
    "LONG_POLL_SECONDS",
    "MAX_POLL_ACKS",
    "MAX_POLL_EVENTS",
    "PollAnswer",
    "PollRequest",
    "long_poll",
    "parse_poll_request",
    "set_error_text",
]

"""Delivering Security Event Tokens: the outbox fan-out, RFC 8935 push and RFC 8936 poll
(PROFILE.md section 10, "Signals"; DESIGN.md
"Scale-out": "SSF push delivery runs from the outbox table, so a crash never loses an event").

**Fan-out** (:meth:`SignalTransmitter.fan_out`). In one transaction: take the fan-out lock
(one replica at a time, so every stream's queue is in outbox order), claim the due
``mission.lifecycle`` outbox events (``FOR UPDATE SKIP LOCKED``), and for each event and each
stream that is enabled or paused, whose client may see the Mission
(:func:`~missionbound.issuer.mission_access.visible_resources` non-empty) and that asked for the
event type, queue a SET (a fresh ``jti``; on ``revoked`` also the CAEP ``session-revoked``
SET); then mark the event delivered. A crash before the commit leaves the event to fan out
again; after it, the SETs are queued. Disabled streams get nothing. A stream that already owes
:data:`MAX_OWED_PER_STREAM` SETs is disabled instead (its queue dropped, decision E13).

**Push** (:meth:`SignalTransmitter.push_due`, RFC 8935). Per stream, in queue order. A short
transaction claims a due stream with a lease (its ``next_attempt_at`` set
:data:`LEASE_FACTOR` push timeouts ahead): other dispatchers skip it until then. No
transaction is open during the HTTP call. Each answer is recorded in its own short
transaction, fenced on the lease: 202 marks the SET delivered; 400 with an RFC 8935 error body
``{"err", "description"}`` marks it delivered with that error (the receiver refused this SET
for good; sending it again would be refused again); anything else, or no answer, keeps the
SET and backs the whole stream off (1 s, doubling, at most ``signals_max_backoff_seconds``)
so that its later SETs wait behind it. The mark comes after the answer: a crash in between
sends the SET again (at least once; receivers de-duplicate by ``jti`` and apply by version).
Every call has an overall deadline of one push timeout (:func:`push_client`), a claim is
given back after :data:`CLAIM_BUDGET_FACTOR` push timeouts of sending, and the dispatcher does
not wait for the pushes it starts (``run_once(wait=False)``): a slow receiver holds up neither
the fan-out nor other streams (decision E14).

**Poll** (:meth:`SignalTransmitter.poll`, RFC 8936). The stream's client acknowledges
(``ack``) and rejects (``setErrs``) SETs, and is given up to ``maxEvents`` of the ones still
owed, oldest first, signed when read. Unacknowledged SETs are given again at the next poll.
``returnImmediately: false`` (the RFC's default) waits for a SET
(:func:`missionbound.issuer.signal_poll.long_poll`).

The dispatcher that runs fan-out and push in a serving process is
:mod:`missionbound.issuer.signal_dispatcher`; the poll request and long poll are
:mod:`missionbound.issuer.signal_poll`; the SETs themselves,
:mod:`missionbound.issuer.security_events`.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpcore
import httpx
import structlog
from sqlalchemy import exists, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from missionbound.issuer.clients import OAuthClient
from missionbound.issuer.mission_access import visible_resources
from missionbound.issuer.security_events import (
    SET_MEDIA_TYPE,
    LifecycleEvent,
    queue_set,
    sign_set,
)
from missionbound.issuer.server import MissionIssuer
from missionbound.issuer.signal_poll import PollAnswer, PollRequest, set_error_text
from missionbound.issuer.signals import StreamNotFound, events_delivered
from missionbound.mission.errors import InvalidRequest, MissionError
from missionbound.mission.record import MissionRecord
from missionbound.store import missions, outbox
from missionbound.store import signals as rows
from missionbound.store.models import OutboxEvent, SignalStream
from missionbound.store.signals import POLL_METHOD, STATUS_DISABLED, STATUS_ENABLED, PushClaim

log = structlog.get_logger("missionbound.signals")

FAN_OUT_BATCH = 100  # outbox events per fan-out transaction
FAN_OUT_ROUNDS = 20  # fan-out transactions per dispatcher round, at most
PUSH_PARALLEL = 8  # streams pushed at once by one dispatcher
PUSH_ROUNDS = 4  # claim rounds per run_once(wait=True)
PUSH_BATCH = 50  # SETs read per stream at a time
# A claim is released after this many push timeouts of sending (fairness: a stream with a
# long queue, or a slow receiver, gives its slot back and is claimed again later).
CLAIM_BUDGET_FACTOR = 2
# A claim lasts this many push timeouts: one HTTP call takes at most one (an overall
# deadline, not a per-read timeout), and sending stops once the budget is spent, so a
# claim in use is renewed or released well before its lease lapses.
LEASE_FACTOR = 4
MAX_RESPONSE_BODY = 16_384  # octets of a receiver's answer read (an RFC 8935 error is small)
DELIVERED_RETENTION = timedelta(days=7)  # delivered SETs and outbox events are forgotten after
# A stream owing this many SETs is disabled and its queue dropped (decision E13): a receiver
# that stopped taking them must not make the database grow without end.
MAX_OWED_PER_STREAM = 10_000
OVERFLOW_REASON = (
    f"disabled by the transmitter: more than {MAX_OWED_PER_STREAM} undelivered SETs "
    "(queue dropped); read Mission Status, then enable the stream again"
)
PURGE_EVERY_SECONDS = 600.0



# -- an overall deadline for each push --------------------------------------------------------

# httpx's timeouts bound each read and write, so a receiver that trickles its answer one byte
# at a time could hold a push for hours. Pushes go through a network backend whose every
# connect, read and write waits at most until the calling thread's deadline
# (:func:`_deadline_of_thread`); past it the call fails like any timeout.
_thread_deadline = threading.local()


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    deadline: float | None = getattr(_thread_deadline, "at", None)
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise error("the push's overall deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(
            ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None
                    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(
            host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address,
            socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _clamp(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def push_client(timeout: float) -> httpx.Client:
    """The HTTP client pushes go through: ``timeout`` per phase, no redirects, and every call
    held to the deadline :meth:`SignalTransmitter.send` sets for its thread."""
    transport = httpx.HTTPTransport()
    # httpx builds its httpcore pool without a way to pass a network backend: replace it with
    # one that has ours (same TLS defaults and limits as httpx's own).
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=_DeadlineBackend(),
    )
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False)


# -- outcomes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushAnswer:
    """What one RFC 8935 push came to: ``accepted`` (202), ``rejected`` (400 with an
    RFC 8935 error: recorded, not sent again), or neither (retry with backoff)."""

    accepted: bool
    rejected: bool
    detail: str


@dataclass
class RunReport:
    fanned_out: int = 0  # outbox events fanned out
    accepted: int = 0  # SETs a receiver took (202)
    rejected: int = 0  # SETs a receiver refused (RFC 8935 400)
    failed: int = 0  # push attempts that will be retried
    purged: int = 0


# -- the transmitter -----------------------------------------------------------------------


class SignalTransmitter:
    """Fan-out, push and poll for one serving process. Every replica may run one: the
    database's locks and the stream leases keep them from doing the same work twice.

    ``issuer`` gives the store, the clients (audiences), the signing key, the issuer URL and
    the clock (read at every use: tests move it). ``http`` is the client pushes go through
    (default: a new one, closed by :meth:`close`). ``fan_out_on_poll``: a poll first fans
    out what waits in the outbox, so poll streams do not wait for the dispatcher's next
    round (off where delivery is off: ``signals_delivery_seconds`` 0)."""

    def __init__(
        self,
        issuer: MissionIssuer,
        *,
        push_timeout_seconds: float,
        max_backoff_seconds: float,
        http: httpx.Client | None = None,
        fan_out_on_poll: bool = True,
    ) -> None:
        self.issuer = issuer
        self.fan_out_on_poll = fan_out_on_poll
        self.push_timeout = push_timeout_seconds
        self.max_backoff = timedelta(seconds=max_backoff_seconds)
        self.lease = timedelta(seconds=push_timeout_seconds * LEASE_FACTOR)
        self._given_http = http
        self._http: httpx.Client | None = http
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._last_purge = float("-inf")
        self._in_flight: set[str] = set()  # streams this process is pushing right now
        self._finished = RunReport()  # what pushes started without waiting came to
        # Called (from a push thread) when a stream's push ends: the dispatcher wakes, so
        # the freed slot is used at once.
        self.on_push_done: Callable[[], None] | None = None
        # Set while the server shuts down: rounds stop after the send in flight.
        self.stopping = threading.Event()

    @property
    def store(self) -> Any:
        return self.issuer.store

    def now(self) -> datetime:
        return self.issuer.clock()

    @property
    def http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = push_client(self.push_timeout)
            return self._http

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=PUSH_PARALLEL, thread_name_prefix="ssf-push"
                )
            return self._pool

    def close(self) -> None:
        """Release the push threads and the HTTP client (made again if used later)."""
        with self._lock:
            pool, self._pool = self._pool, None
            http = self._http
            if self._given_http is None:
                self._http = None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if http is not None and self._given_http is None:
            http.close()

    # -- one round -------------------------------------------------------------------------

    def run_once(self, *, wait: bool = True) -> RunReport:
        """Fan out everything due, then push what is due; the dispatcher's round.

        ``wait=False`` (the dispatcher): start pushing the due streams in free push slots and
        return without waiting for them, so that neither the next fan-out nor the other
        streams wait for a slow receiver; the report then counts the pushes that finished
        since the last round. ``wait=True``: push until nothing is due (or
        :data:`PUSH_ROUNDS` claim rounds) and report those pushes."""
        report = RunReport()
        for _ in range(FAN_OUT_ROUNDS):
            count = self.fan_out()
            report.fanned_out += count
            if count < FAN_OUT_BATCH or self.stopping.is_set():
                break
        self.push_due(report, wait=wait)
        if time.monotonic() - self._last_purge >= PURGE_EVERY_SECONDS:
            self._last_purge = time.monotonic()
            before = self.now() - DELIVERED_RETENTION
            with self.store.begin() as session:
                report.purged = rows.purge_delivered(session, before=before)
                report.purged += outbox.purge_delivered(session, before=before)
        return report

    # -- fan-out ---------------------------------------------------------------------------

    def fan_out(self) -> int:
        """One fan-out transaction; returns how many outbox events it handled (0 when none
        was due, or another replica is fanning out right now)."""
        clients: dict[str, OAuthClient | None] = {}
        with self.store.begin() as session:
            if not rows.lock_fan_out(session):
                return 0
            now = self.now()
            events = outbox.claim_due(
                session, now=now, limit=FAN_OUT_BATCH, topic=outbox.LIFECYCLE_TOPIC
            )
            if not events:
                return 0
            streams = rows.streams_receiving(session)
            owed = rows.owed_counts(session)
            for event in events:
                self._fan_out_event(session, event, streams, clients, owed, now)
                outbox.mark_delivered(session, event.id, now=now)
            return len(events)

    def fan_out_if_due(self) -> int:
        """:meth:`fan_out` when an outbox event waits (a cheap read first): a poll sees
        what was committed even where no dispatcher runs."""
        with self.store.read() as session, session.begin():
            due = session.scalar(
                select(
                    exists().where(
                        OutboxEvent.topic == outbox.LIFECYCLE_TOPIC,
                        OutboxEvent.delivered_at.is_(None),  # due at once (outbox.py)
                    )
                )
            )
        return self.fan_out() if due else 0

    def _fan_out_event(
        self,
        session: Session,
        event: OutboxEvent,
        streams: list[SignalStream],
        clients: dict[str, OAuthClient | None],
        owed: dict[str, int],
        now: datetime,
    ) -> None:
        parsed = LifecycleEvent.parse(event)
        if parsed is None:
            # Nothing the AS wrote looks like this; deliver it to nobody (fail closed).
            log.warning("signal_event_unreadable", outbox_id=event.id)
            return
        wanted = [s for s in streams
                  if s.status != STATUS_DISABLED and events_delivered(s.events_requested)]
        if not wanted:
            return
        try:
            record = missions.get(session, parsed.mission_id, with_history=False)
        except MissionError:  # an unreadable record: nobody may be told anything about it
            record = None
        if record is None:
            log.warning("signal_event_mission_unreadable", outbox_id=event.id,
                        mission_id=parsed.mission_id)
            return
        for stream in wanted:
            if not self._may_see(stream.client_id, record, clients):
                continue
            if owed.get(stream.stream_id, 0) >= MAX_OWED_PER_STREAM:
                rows.set_status(session, stream, STATUS_DISABLED, OVERFLOW_REASON, now)
                owed.pop(stream.stream_id, None)
                log.warning("signal_stream_overflow_disabled", stream_id=stream.stream_id,
                            client_id=stream.client_id)
                continue
            delivered = events_delivered(stream.events_requested)
            for event_type, body in parsed.sets_for(delivered, now):
                owed[stream.stream_id] = owed.get(stream.stream_id, 0) + 1
                queue_set(
                    session,
                    stream,
                    issuer=self.issuer.issuer,
                    subject={"format": "opaque", "id": parsed.mission_id},
                    event_type=event_type,
                    event=body,
                    mission_id=parsed.mission_id,
                    now=now,
                )
        session.flush()

    def _may_see(
        self, client_id: str, record: MissionRecord, clients: dict[str, OAuthClient | None]
    ) -> bool:
        if client_id not in clients:
            clients[client_id] = self.issuer.clients.find(client_id)
        client = clients[client_id]
        if client is None:  # the client is gone: its stream carries nothing
            return False
        return bool(visible_resources(client.client_id, client.audiences, record))

    # -- push ------------------------------------------------------------------------------

    def push_due(self, report: RunReport | None = None, *, wait: bool = True) -> RunReport:
        """Claim due push streams, as many as there are free push slots, and send their
        queues, several streams at once, each in a thread of its own. ``wait``: see
        :meth:`run_once`."""
        report = report if report is not None else RunReport()
        if not wait:
            self._start_pushes()
            with self._lock:
                done, self._finished = self._finished, RunReport()
            report.accepted += done.accepted
            report.rejected += done.rejected
            report.failed += done.failed
            return report
        for _ in range(PUSH_ROUNDS):
            started = self._start_pushes()
            if not started:
                break
            wait_for_futures(started)
            for future in started:
                accepted, rejected, failed = future.result()
                report.accepted += accepted
                report.rejected += rejected
                report.failed += failed
        return report

    def _start_pushes(self) -> list[Future[tuple[int, int, int]]]:
        """Claim due streams for the free push slots and start pushing them."""
        if self.stopping.is_set():
            return []
        with self._lock:
            free = PUSH_PARALLEL - len(self._in_flight)
        if free <= 0:
            return []
        now = self.now()
        with self.store.begin() as session:
            # Only clients the operator still configures may be pushed to (decision E12): a
            # client removed from the tenant keeps its queue but no longer gets requests.
            claims = rows.claim_push_streams(
                session, now=now, lease_until=now + self.lease, limit=free,
                push_clients=frozenset(self.issuer.tenant.clients),
            )
        started = []
        executor = self._executor()
        for claim in claims:
            with self._lock:
                self._in_flight.add(claim.stream_id)
            future = executor.submit(self._push_stream, claim)
            future.add_done_callback(functools.partial(self._push_done, claim.stream_id))
            started.append(future)
        return started

    def _push_done(self, stream_id: str, future: Future[tuple[int, int, int]]) -> None:
        with self._lock:
            self._in_flight.discard(stream_id)
            if not future.cancelled() and future.exception() is None:
                accepted, rejected, failed = future.result()
                self._finished.accepted += accepted
                self._finished.rejected += rejected
                self._finished.failed += failed
        callback = self.on_push_done
        if callback is not None and not self.stopping.is_set():
            callback()

    def _push_stream(self, claim: PushClaim) -> tuple[int, int, int]:
        """Send one claimed stream's queue in order until it is empty, the receiver fails,
        the claim's time budget (:data:`CLAIM_BUDGET_FACTOR` push timeouts) is spent, or the
        lease is lost. (accepted, rejected, failed)"""
        accepted = rejected = 0
        budget_ends = time.monotonic() + self.push_timeout * CLAIM_BUDGET_FACTOR
        try:
            while not self.stopping.is_set():  # at least one send per claim
                with self.store.read() as session, session.begin():
                    batch = rows.owed(session, claim.stream_id, limit=PUSH_BATCH)
                if not batch:
                    break
                for item in batch:
                    token = sign_set(item.claims, self.issuer.signer())
                    answer = self.send(claim, token)
                    now = self.now()
                    with self.store.begin() as session:
                        if not (answer.accepted or answer.rejected):
                            backoff = rows.record_push_failure(
                                session, claim, item.id, now=now, error=answer.detail,
                                max_backoff=self.max_backoff,
                            )
                            log.info("signal_push_failed", stream_id=claim.stream_id,
                                     detail=answer.detail,
                                     retry_in=backoff.total_seconds() if backoff else None)
                            return accepted, rejected, 1
                        # The stream row first, then its SET: every writer locks in
                        # that order (a status change locks the stream, then deletes SETs).
                        renewed = rows.renew_lease(session, claim, lease_until=now + self.lease)
                        if answer.rejected and renewed is not None:
                            rows.record_rejection_on_stream(session, renewed, answer.detail)
                        rows.mark_sent(session, item.id, now=now,
                                       error=None if answer.accepted else answer.detail)
                    if answer.accepted:
                        accepted += 1
                    else:
                        rejected += 1
                        log.info("signal_push_rejected", stream_id=claim.stream_id,
                                 jti=item.jti, detail=answer.detail)
                    if renewed is None:
                        return accepted, rejected, 0  # lost the lease: someone else has it
                    claim = renewed
                    if self.stopping.is_set() or time.monotonic() >= budget_ends:
                        break
                if time.monotonic() >= budget_ends:
                    break
            with self.store.begin() as session:
                rows.release_push_stream(session, claim)
        except Exception as exc:
            # The database, or a bug: the lease lapses and the stream is tried again later.
            log.warning("signal_push_error", stream_id=claim.stream_id,
                        error=type(exc).__name__, detail=safe_detail(exc))
        return accepted, rejected, 0

    def send(self, claim: PushClaim, token: str) -> PushAnswer:
        """One RFC 8935 push of ``token`` to the stream's endpoint, held to an overall
        deadline of one push timeout (connect, send and answer together)."""
        headers = {"Content-Type": SET_MEDIA_TYPE, "Accept": "application/json"}
        if claim.authorization_header:
            headers["Authorization"] = claim.authorization_header
        _thread_deadline.at = time.monotonic() + self.push_timeout
        try:
            with self.http.stream(
                "POST", claim.endpoint_url, content=token.encode("ascii"), headers=headers,
                timeout=self.push_timeout,
            ) as response:
                status = response.status_code
                body = b""
                if status == 400:
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > MAX_RESPONSE_BODY:
                            break
        except httpx.HTTPError as exc:
            return PushAnswer(False, False, f"no answer: {type(exc).__name__}")
        finally:
            _thread_deadline.at = None
        if status == 202:
            return PushAnswer(True, False, "accepted")
        if status == 400:
            error = rfc8935_error(body)
            if error is not None:
                return PushAnswer(False, True, error)
            return PushAnswer(False, False, "HTTP 400 without an RFC 8935 error body")
        return PushAnswer(False, False, f"HTTP {status}")

    # -- poll ------------------------------------------------------------------------------

    def poll(self, *, client_id: str, stream_id: str, request: PollRequest) -> PollAnswer:
        """RFC 8936 section 2.4: acknowledge, then hand out what the stream still owes."""
        if not 0 < len(stream_id) <= 255:
            raise InvalidRequest("the stream_id query parameter is required")
        now = self.now()
        if request.ack or request.set_errs:
            with self.store.begin() as session:
                # The stream row first (the lock order of every writer, store/signals.py).
                stream = self._poll_stream(session, client_id, stream_id, for_update=True)
                rows.acknowledge(session, stream.stream_id, request.ack, now=now,
                                 errors=request.set_errs)
        if self.fan_out_on_poll:
            self.fan_out_if_due()
        with self.store.read() as session, session.begin():
            stream = self._poll_stream(session, client_id, stream_id)
            if stream.status != STATUS_ENABLED or request.max_events == 0:
                more = stream.status == STATUS_ENABLED and rows.has_owed(session, stream_id)
                return PollAnswer({}, more)
            batch = rows.owed(session, stream_id, limit=request.max_events + 1)
        signer = self.issuer.signer()
        sets = {item.jti: sign_set(item.claims, signer) for item in batch[: request.max_events]}
        return PollAnswer(sets, len(batch) > request.max_events)

    @staticmethod
    def _poll_stream(session: Session, client_id: str, stream_id: str, *,
                     for_update: bool = False) -> SignalStream:
        stream = rows.get_stream(session, stream_id, client_id=client_id,
                                 for_update=for_update)
        if stream is None:
            raise StreamNotFound()
        if stream.delivery_method != POLL_METHOD:
            raise InvalidRequest("this stream delivers by push (RFC 8935), not by poll")
        return stream


def rfc8935_error(body: bytes) -> str | None:
    """``"<err>: <description>"`` of an RFC 8935 section 2.3 error body, or None."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("err"), str) or not data["err"]:
        return None
    description = data.get("description")
    return set_error_text(data["err"][:100], description if isinstance(description, str) else None)


def safe_detail(exc: BaseException) -> str:
    """The first line of the driver's message (of ``exc`` when no driver raised it), at most
    300 characters: SQLAlchemy's own text adds the statement and its parameters (SET claims,
    Mission ids), which do not belong in a log line."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    detail = lines[0].strip() if lines else ""
    return detail if len(detail) <= 300 else detail[:297] + "..."


__all__ = [
    "PushAnswer",
    "RunReport",
    "SignalTransmitter",
    "rfc8935_error",
    "safe_detail",
]

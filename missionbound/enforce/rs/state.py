"""RS-C: the Mission's state as a Resource Server observes it (PROFILE.md section 2, tiers;
section 10, state surfaces; runtime digest section 1.7, freshness of Mission state).

What each tier guarantees about a Mission that is revoked, suspended or completed:

- **RS-B** checks the access token alone. It acts on a Mission that has left ``active`` until
  the token expires: the exposure is the token lifetime (the AS's
  ``mission_max_stale_seconds``). This module is not used.
- **RS-C** also observes the Mission's state at the AS, within a published **staleness
  bound** (``staleness_seconds`` of :class:`MissionStateView`): an observation older than
  the bound is never used, so a change committed at the AS is seen at the latest
  ``staleness_seconds`` after it commits (plus one round trip to the source). With a Shared
  Signals receiver (``book``, a :class:`~missionbound.enforce.signals.MissionStateBook`) a
  change to a non-active state is seen as soon as its event is applied; events only ever make
  the view stricter, so a missed or late event never extends an observation's validity
  (runtime digest 1.7, "a missed event never extends validity").

Sources (:class:`MissionStateSource`, blocking I/O, called from a worker thread):

- :class:`MissionStatusSource`: the AS's signed Mission Status (PROFILE.md section 10), via
  :mod:`missionbound.protocol.mission_status`, the client the Resource AS role uses too. A
  404 (the AS does not vouch for the Mission to this RS) is the state ``""``: unknown, not
  active (fail closed).
- :class:`IntrospectionSource`: RFC 7662 introspection of the request's access token, read
  for its ``mission`` member (``{id, origin, authority_hash, state, version}``); a bare
  ``{"active": false}`` is the state ``""``.

Either source raises :class:`StateUnavailable` when it cannot say (network, timeout, an HTTP
status, an answer that does not verify): the guard answers 503 (fail closed), and nothing
is cached. Every state but ``active`` refuses; :func:`effective` applies the clock first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from missionbound.enforce.signals import ENDED_STATES, MissionState, MissionStateBook
from missionbound.mission.canonical import parse_strict
from missionbound.mission.errors import InvalidRequest
from missionbound.protocol.jwks import HttpClientOwner, KeySource
from missionbound.protocol.mission_status import (
    MAX_STATE_LENGTH,
    MissionStatusUnavailable,
    MissionStatusUnknown,
    request_mission_status,
    state_to_act_on,
)

__all__ = [
    "DEFAULT_STALENESS_SECONDS",
    "IntrospectionSource",
    "MissionStateSource",
    "MissionStateView",
    "MissionStatusSource",
    "ObservedState",
    "StateUnavailable",
    "effective",
]

ACTIVE = "active"
DEFAULT_STALENESS_SECONDS = 5.0
DEFAULT_TIMEOUT_SECONDS = 3.0
DEFAULT_MAX_MISSIONS = 100_000
# An introspection answer carries one token's claims and its authorization_details for this
# RS's audiences: a few KiB. 256 KiB bounds it generously.
MAX_INTROSPECTION_BYTES = 256 * 1024
_JSON_MEDIA_TYPES = frozenset({"application/json", "application/token-introspection+json"})


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ObservedState:
    """What a source said of one Mission, and when.

    ``state`` is the AS's word (``"active"``, ``"revoked"``...), ``""`` when the Mission is
    unknown to the source or not vouched for (never active). ``version`` is the AS's Mission
    ``version`` (the one lifecycle events carry too), None when the source gave none.
    ``observed_at`` is the view's ``clock()`` when the source answered. ``valid_until``, when
    set, is the ``clock()`` reading past which the answer itself must not be used (a signed
    Mission Status's ``exp``); the staleness bound applies in any case."""

    mission_id: str
    state: str
    version: int | None
    observed_at: float
    mission_expiry: datetime | None = None
    valid_until: float | None = None


def effective(state: ObservedState, now: datetime) -> str:
    """The state to act on at ``now``: ``"active"`` only when the source said ``active``
    and the Mission's ``mission_expiry`` (when known) has not passed (then ``"expired"``:
    PROFILE.md section 7, clock first); a state this software does not know reads as
    ``""`` (fail closed)."""
    return state_to_act_on(state.state, state.mission_expiry, now)


class StateUnavailable(Exception):
    """The source could not say what the Mission's state is: fail closed (503), and ask
    again later. Never cached."""


class MissionStateSource(Protocol):
    """Where an RS-C Resource Server learns a Mission's state. ``observe`` does blocking
    I/O (call it from a worker thread) and raises :class:`StateUnavailable`."""

    def observe(self, mission_id: str, *, access_token: str) -> ObservedState: ...


class MissionStatusSource(HttpClientOwner):
    """The AS's signed Mission Status (PROFILE.md section 10) for ``audience`` (this RS's
    resource identifier), asked as ``client_id`` with HTTP Basic; the answer is verified
    with ``keys`` (the AS's JWK Set, e.g. a
    :class:`~missionbound.protocol.jwks.JwksCache` on its ``jwks_uri``).

    The access token is not sent: the state is the Mission's, asked by the RS's own
    credential. ``client`` is used as given (the caller closes it), else one is made with
    ``timeout_seconds`` and :meth:`close` closes it; each request is bounded by
    ``timeout_seconds`` either way. ``clock`` is the view's monotonic clock;
    ``wall_clock`` the current time for the answer's ``iat`` and ``exp``."""

    def __init__(
        self,
        *,
        issuer: str,
        status_endpoint: str,
        keys: KeySource,
        audience: str,
        client_id: str,
        client_secret: str,
        client: httpx.Client | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.issuer = issuer
        self.status_endpoint = status_endpoint
        self.audience = audience
        self.client_id = client_id
        self._keys = keys
        self._client_secret = client_secret
        self._timeout = timeout_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._hold_client(client, timeout_seconds)

    def observe(self, mission_id: str, *, access_token: str) -> ObservedState:
        now = self._wall_clock()
        try:
            status = request_mission_status(
                self._client, status_endpoint=self.status_endpoint, issuer=self.issuer,
                keys=self._keys, mission_id=mission_id, audience=self.audience,
                client_id=self.client_id, client_secret=self._client_secret, now=now,
                timeout_seconds=self._timeout)
        except MissionStatusUnknown:
            # Unknown and not visible look alike (PROFILE.md section 10): not active.
            return ObservedState(mission_id, "", None, self._clock())
        except MissionStatusUnavailable as exc:
            raise StateUnavailable(exc.description) from exc
        observed_at = self._clock()
        # The signed answer is not to be used past its exp (docs/mission-governance.md).
        lifetime = max(0.0, status.expires_at.timestamp() - now.timestamp())
        return ObservedState(mission_id, status.state, status.version, observed_at,
                             status.mission_expiry, valid_until=observed_at + lifetime)


class IntrospectionSource(HttpClientOwner):
    """RFC 7662 introspection of the request's access token at the AS, as ``client_id``
    (``client_secret_basic``), read for the Mission (PROFILE.md section 10):

    - a ``mission`` member ``{id, origin, authority_hash, state, version}`` (the RS is an
      audience of the token) gives the state and version; its ``id`` must be the Mission
      asked about. ``active`` is composite (token valid and Mission active), so the state
      reads ``active`` only when ``active`` is true too;
    - a bare ``{"active": false}`` (an unknown, expired or revoked token, or one this RS may
      not see) is the state ``""``: not active. This is the token's answer, recorded as the
      Mission's for the staleness bound: stricter, never looser;
    - anything else (another HTTP status, not a JSON object, a malformed ``mission``, the
      network) raises :class:`StateUnavailable`.

    Answers are read up to :data:`MAX_INTROSPECTION_BYTES`, redirects are not followed,
    each request is bounded by ``timeout_seconds``. ``client`` as for
    :class:`MissionStatusSource`."""

    def __init__(
        self,
        *,
        introspection_endpoint: str,
        client_id: str,
        client_secret: str,
        client: httpx.Client | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.introspection_endpoint = introspection_endpoint
        self.client_id = client_id
        self._client_secret = client_secret
        self._timeout = timeout_seconds
        self._clock = clock
        self._hold_client(client, timeout_seconds)

    def observe(self, mission_id: str, *, access_token: str) -> ObservedState:
        body = self._introspect(access_token)
        observed_at = self._clock()
        active = body.get("active")
        if not isinstance(active, bool):
            raise self._unusable('"active" is not a boolean')
        if "mission" not in body:
            if active:
                # An active token always carries its Mission for an audience (section 10).
                raise self._unusable('an active token without its "mission"')
            return ObservedState(mission_id, "", None, observed_at)
        mission = body["mission"]
        if not isinstance(mission, dict):
            raise self._unusable('"mission" is not an object')
        if mission.get("id") != mission_id:
            raise self._unusable(f"the token's Mission is not {mission_id}")
        state, version = mission.get("state"), mission.get("version")
        if not isinstance(state, str) or not 0 < len(state) <= MAX_STATE_LENGTH:
            raise self._unusable('"mission" has no "state"')
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise self._unusable('"mission" "version" is not a positive integer')
        if state == ACTIVE and not active:
            state = ""  # the token is not active: never read it as an active Mission
        return ObservedState(mission_id, state, version, observed_at)

    def _introspect(self, access_token: str) -> dict[str, Any]:
        where = self.introspection_endpoint
        try:
            with self._client.stream(
                "POST", where,
                data={"token": access_token},
                auth=(self.client_id, self._client_secret),
                headers={"Accept": "application/json"},
                follow_redirects=False,
                timeout=self._timeout,
            ) as response:
                if response.status_code != 200:
                    raise StateUnavailable(
                        f"the introspection endpoint {where} answered HTTP "
                        f"{response.status_code}")
                media_type = response.headers.get("content-type", "").split(";")[0]
                media_type = media_type.strip().lower()
                if media_type not in _JSON_MEDIA_TYPES:
                    raise StateUnavailable(
                        f"the introspection endpoint {where} answered "
                        f"{media_type[:80] or 'no Content-Type'}, not JSON")
                raw = bytearray()
                for chunk in response.iter_bytes():
                    raw += chunk
                    if len(raw) > MAX_INTROSPECTION_BYTES:
                        raise StateUnavailable(
                            f"the introspection answer of {where} is too large")
        except httpx.HTTPError as exc:
            raise StateUnavailable(
                f"the introspection endpoint {where} cannot be reached "
                f"({type(exc).__name__})") from exc
        try:
            # Strict (a member named twice could mean one thing here and another to a
            # different parser); floats allowed, as another AS may send them.
            body = parse_strict(bytes(raw), max_size=MAX_INTROSPECTION_BYTES,
                                what="the introspection answer", allow_floats=True)
        except InvalidRequest:
            raise self._unusable("not a JSON document") from None
        if not isinstance(body, dict):
            raise self._unusable("not a JSON object")
        return body

    def _unusable(self, what: str) -> StateUnavailable:
        return StateUnavailable(
            f"the introspection answer of {self.introspection_endpoint} cannot be relied on "
            f"({what}); refusing (fail closed)")


class _Flight:
    """One observation in progress; the callers for the same Mission wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: ObservedState | None = None
        self.error: str | None = None


class MissionStateView:
    """The Mission states an RS-C Resource Server acts on: one cached observation per
    Mission, used for at most ``staleness_seconds`` (the published staleness bound), made
    stricter at once by lifecycle events when a ``book`` is given. Thread-safe.

    - :meth:`cached` never does I/O: a fresh observation (younger than the bound and than
      its own ``valid_until``), or a non-active state the book holds that is at least as new
      (by ``version``), or, for a Mission the book knows has ended, that state even with no
      observation at all. None means "observe first".
    - :meth:`observe` asks the source (blocking) and caches the answer. Concurrent calls for
      one Mission make one source call and share its answer (single flight); a failure is
      shared by the callers that waited for it, raised as :class:`StateUnavailable`, and not
      cached (the next call asks again).
    - With ``book``, an applied event whose state is not ``active`` and whose version is at
      least the cached one's replaces the cached observation at once, so the very next
      request is refused without waiting for the bound; a newer ``active`` drops the cached
      observation (the next request observes again). An event never counts as an
      observation: it can only shorten how long an answer is used, never lengthen it, and
      a Mission the book forgets is simply observed again.
    - At most ``max_missions`` observations are kept; the least recently stored goes first.

    So a revocation is seen at the latest ``staleness_seconds`` after it commits, or as soon
    as its event reaches the receiver. ``clock`` is monotonic seconds (replaceable in
    tests)."""

    def __init__(
        self,
        source: MissionStateSource,
        *,
        staleness_seconds: float = DEFAULT_STALENESS_SECONDS,
        book: MissionStateBook | None = None,
        max_missions: int = DEFAULT_MAX_MISSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not staleness_seconds >= 0:  # NaN too
            raise ValueError("staleness_seconds must be a number of seconds, at least 0")
        if max_missions < 1:
            raise ValueError("max_missions must be at least 1")
        self.source = source
        self.staleness_seconds = float(staleness_seconds)
        self.book = book
        self.max_missions = max_missions
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, ObservedState] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._unsubscribe = book.subscribe(self._on_event) if book is not None else None

    def close(self) -> None:
        """Stop following the book."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __len__(self) -> int:
        return len(self._entries)

    # -- reading -------------------------------------------------------------------------

    def cached(self, mission_id: str) -> ObservedState | None:
        """What to act on without asking the source, or None (observe first). No I/O."""
        with self._lock:
            return self._usable(mission_id, self._entries.get(mission_id))

    def observe(self, mission_id: str, *, access_token: str) -> ObservedState:
        """Ask the source (blocking; one call per Mission at a time), cache the answer and
        return what to act on. A usable answer cached meanwhile (what :meth:`cached` would
        return, e.g. stored by a call that just ended) is returned without asking again.
        Raises :class:`StateUnavailable`."""
        with self._lock:
            flight = self._flights.get(mission_id)
            leader = flight is None
            if flight is None:
                known = self._usable(mission_id, self._entries.get(mission_id))
                if known is not None:
                    return known
                flight = self._flights[mission_id] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.result is None:
                raise StateUnavailable(flight.error or "the Mission's state cannot be had")
            return flight.result
        try:
            observed = self.source.observe(mission_id, access_token=access_token)
            if observed.mission_id != mission_id:
                raise StateUnavailable(
                    f"the state source answered for another Mission than {mission_id}")
            flight.result = self._store(observed)
            return flight.result
        except StateUnavailable as exc:
            flight.error = str(exc)
            raise
        except Exception as exc:
            # A source that breaks its contract still fails closed, for every waiter.
            flight.error = f"the Mission's state source failed ({type(exc).__name__})"
            raise StateUnavailable(flight.error) from exc
        finally:
            with self._lock:
                del self._flights[mission_id]
            flight.done.set()

    # -- internals -----------------------------------------------------------------------

    def _usable(self, mission_id: str, entry: ObservedState | None) -> ObservedState | None:
        """:meth:`cached` on ``entry``, the observation held for ``mission_id``."""
        now = self._clock()
        if entry is not None and not self._is_fresh(entry, now):
            entry = None
        book = self.book
        if book is not None and entry is not None and entry.version is not None:
            held = book.get(mission_id)
            if held is not None and held.state == ACTIVE and held.version > entry.version:
                # A newer activation (a resume) than what was observed: observe again
                # rather than act on the old observation, and never on the event itself.
                return None
        return self._with_book(mission_id, entry, now)

    def _is_fresh(self, entry: ObservedState, now: float) -> bool:
        if now - entry.observed_at >= self.staleness_seconds:
            return False
        return entry.valid_until is None or now < entry.valid_until

    def _store(self, observed: ObservedState) -> ObservedState:
        """Cache ``observed`` unless a newer version is held (an event applied while the
        source was being asked); then what to act on."""
        with self._lock:
            held = self._entries.get(observed.mission_id)
            if held is not None and _newer(held, observed):
                # Versions only grow at the AS: the held one is the later word. Events only
                # put non-active states here, so it is the stricter one too.
                result = held if held.state != ACTIVE else observed
            else:
                self._entries[observed.mission_id] = result = observed
                self._entries.move_to_end(observed.mission_id)
                while len(self._entries) > self.max_missions:
                    self._entries.popitem(last=False)
        stricter = self._with_book(observed.mission_id, result, self._clock())
        assert stricter is not None  # never None when given an observation
        return stricter

    def _with_book(self, mission_id: str, entry: ObservedState | None,
                   now: float) -> ObservedState | None:
        """``entry``, or the book's non-active state when it is at least as new (any ended
        state: nothing leaves those). Without ``entry``, only an ended state (a suspension
        alone is observed first: a missed resume event must not refuse for ever)."""
        book = self.book
        if book is None:
            return entry
        held = book.get(mission_id)
        if held is not None and held.state != ACTIVE:
            if held.state in ENDED_STATES or (entry is not None and (
                    entry.version is None or held.version >= entry.version)):
                return ObservedState(mission_id, held.state, held.version, now,
                                     entry.mission_expiry if entry is not None else None)
        elif held is None and book.has_ended(mission_id):
            if entry is not None and entry.state != ACTIVE:
                return entry
            # Ended and compacted by the book: the exact state is gone, the end is not.
            return ObservedState(mission_id, "", None, now)
        return entry

    def _on_event(self, state: MissionState) -> None:
        """The book applied ``state``: make the cached observation stricter at once."""
        with self._lock:
            entry = self._entries.get(state.mission_id)
            if entry is None:
                return  # nothing cached; cached() reads the book for ended Missions
            newer_or_same = entry.version is None or state.version >= entry.version
            if state.state != ACTIVE and (newer_or_same or state.state in ENDED_STATES):
                self._entries[state.mission_id] = ObservedState(
                    state.mission_id, state.state, state.version, self._clock(),
                    entry.mission_expiry)
            elif state.state == ACTIVE and (entry.version is None
                                            or state.version > entry.version):
                del self._entries[state.mission_id]


def _newer(a: ObservedState, b: ObservedState) -> bool:
    return a.version is not None and b.version is not None and a.version > b.version

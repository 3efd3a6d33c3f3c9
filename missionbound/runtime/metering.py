"""Consumption bounds: ``max_calls``, ``max_total_value``, ``max_duration`` (PROFILE.md
section 12, "Metering"; runtime-digest sections 7.2-7.5).

Each bound of each Authority Set entry is one counter per Mission (``counter_scope``
``mission``), keyed ``(mission_id, entry_digest, bound)``; a Mission-wide bound (in
``mission_intent.context``) has the entry key :data:`MISSION_WIDE`. :func:`reserve` takes a
decision's charges and, in the caller's transaction (the one that issues the permit),
either reserves every one of them or none: the counters are locked in key order, every
``used + amount <= limit`` is checked, then all are written. That is exact under any
concurrency and on any number of replicas (the Exact enforcement profile of section 7.3):
PostgreSQL row locks, or SQLite's single writer.

Amounts are exact decimals (``decimal.Decimal``, never floats): calls and seconds are
integers, money a decimal string in the bound's one currency (no conversion: another
currency is incomparable, so refused).

``max_duration`` reserves the permit's execution lease (the charge's seconds; by default
the permit window), and :func:`settle` applies the execution outcome (section 7.4):
``completed`` commits the measured duration and releases the excess, ``suppressed``
releases everything, ``failed`` stays charged. Settling twice applies once.
"""

from __future__ import annotations

import decimal
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ParamSpec, Protocol, TypeVar

from sqlalchemy.orm import Session

from missionbound.mission.canonical import digest_json
from missionbound.mission.constraints import CURRENCY, DECIMAL, duration_seconds
from missionbound.store import runtime as rows
from missionbound.store.validation import require_aware

MAX_CALLS = "max_calls"
MAX_TOTAL_VALUE = "max_total_value"
MAX_DURATION = "max_duration"
BOUNDS = (MAX_CALLS, MAX_TOTAL_VALUE, MAX_DURATION)
COUNTER_SCOPE = "mission"
# The counter key of a Mission-wide bound (``mission_intent.context``; decision A6), whose
# charges name no entry: one budget for the whole Mission, never one per entry.
MISSION_WIDE = "mission"

OUTCOMES = ("completed", "failed", "suppressed")


class ChargeLike(Protocol):
    """What :func:`reserve` reads of a decision's charge (runtime.decision.Charge)."""

    @property
    def key(self) -> str: ...
    @property
    def entry_digest(self) -> str | None: ...
    @property
    def limit(self) -> Any: ...
    @property
    def amount(self) -> Any: ...
    @property
    def currency(self) -> str | None: ...


class MeteringError(ValueError):
    """A charge this module cannot meter (unknown bound, malformed limit or amount): a bug
    upstream, since the decision refuses ``constraint_unsupported`` first. Fails closed."""


# Amounts and limits carry at most this many digits, and every sum and difference is
# computed in a context that cannot round them: counters stay exact (Decimal's default
# context keeps 28 digits and would round silently past it).
MAX_DIGITS = 40
_EXACT = decimal.Context(prec=2 * MAX_DIGITS + 2,
                         traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation])
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exactly(function: Callable[_P, _R]) -> Callable[_P, _R]:
    @functools.wraps(function)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with decimal.localcontext(_EXACT):
            return function(*args, **kwargs)
    return run


@dataclass(frozen=True)
class Reservation:
    """The outcome of :func:`reserve`. ``ok`` False: nothing was reserved; ``exhausted``
    is the first charge that did not fit (deny ``quota_exceeded``). ``metering`` is the
    Decision Evidence member of runtime-digest 7.3, one object per charge."""

    ok: bool
    exhausted: ChargeLike | None
    metering: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class _Charge:
    key: tuple[str, str]  # (entry_digest, bound)
    limit: Decimal
    amount: Decimal
    currency: str | None  # the bound's (and counter's) currency
    source: ChargeLike
    incomparable: bool = False  # money in another currency than the bound's


def counter_id(mission_id: str, entry_digest: str, bound: str) -> str:
    """The pseudonymous counter id evidence carries (runtime-digest 7.3)."""
    return digest_json({"mission": mission_id, "entry": entry_digest, "bound": bound})


@_exactly
def reserve(
    session: Session,
    *,
    mission_id: str,
    evaluation_id: str,
    charges: Sequence[ChargeLike],
    now: datetime,
    lease_until: datetime,
) -> Reservation:
    """Reserve every charge of one permit (``evaluation_id``), all or nothing.

    ``lease_until`` is when an unsettled reservation becomes a reconciliation case (the
    permit's ``valid_until`` is a good default); a ``max_duration`` charge without an
    amount reserves the seconds until then. Raises :class:`MeteringError` for a charge it
    cannot meter."""
    require_aware(now, "now")
    require_aware(lease_until, "lease_until")
    if not charges:
        return Reservation(True, None, ())
    parsed = _merge([_parse(charge, now, lease_until) for charge in charges])
    counters = rows.lock_counters(session, mission_id, parsed)
    missing = [key for key in sorted(parsed) if key not in counters]
    if missing:
        for key in missing:
            charge = parsed[key]
            rows.create_counter(session, mission_id=mission_id, key=key,
                                limit_value=_text(charge.limit), currency=charge.currency,
                                now=now)
        counters = rows.lock_counters(session, mission_id, parsed)
    metering: list[dict[str, Any]] = []
    exhausted: ChargeLike | None = None
    for key in sorted(parsed):
        charge, counter = parsed[key], counters[key]
        used = Decimal(counter.used)
        remaining = max(charge.limit - used, Decimal(0))
        fits = (used + charge.amount <= charge.limit and not charge.incomparable
                and counter.currency == charge.currency)
        entry = {
            "bound": key[1], "counter_scope": COUNTER_SCOPE,
            "counter_id": counter_id(mission_id, *key), "requested": _text(charge.amount),
            "remaining": _text(remaining),
        }
        if charge.currency is not None:
            entry["currency"] = charge.currency
        metering.append(entry)
        if not fits and exhausted is None:
            exhausted = charge.source
    if exhausted is not None:
        return Reservation(False, exhausted, tuple(metering))
    for key, entry in zip(sorted(parsed), metering, strict=True):
        charge, counter = parsed[key], counters[key]
        used = Decimal(counter.used) + charge.amount
        counter.used = _text(used)
        counter.limit_value = _text(charge.limit)
        counter.updated_at = now
        rows.add_reservation(session, evaluation_id=evaluation_id, mission_id=mission_id,
                             key=key, amount=_text(charge.amount), now=now,
                             lease_until=lease_until)
        entry.update(reserved=_text(charge.amount), remaining=_text(charge.limit - used),
                     settlement_state="reserved")
    session.flush()
    return Reservation(True, None, tuple(metering))


@_exactly
def settle(
    session: Session,
    *,
    evaluation_id: str,
    outcome: str,
    now: datetime,
    measured_duration_seconds: int | None = None,
) -> tuple[dict[str, Any], ...]:
    """Apply an execution outcome to what permit ``evaluation_id`` reserved (section 7.4)
    and return the settled ``metering`` entries (with ``consumed``). Already settled or
    nothing reserved: nothing changes, () is returned (a redelivered outcome)."""
    if outcome not in OUTCOMES:
        raise MeteringError(f"unknown execution outcome {outcome!r}")
    require_aware(now, "now")
    if measured_duration_seconds is not None and (
            isinstance(measured_duration_seconds, bool)
            or not isinstance(measured_duration_seconds, int) or measured_duration_seconds < 0):
        raise MeteringError("measured_duration_seconds must be an integer >= 0")
    reservations = [r for r in rows.lock_reservations(session, evaluation_id)
                    if r.state == "reserved"]
    if not reservations:
        return ()
    mission_id = reservations[0].mission_id
    counters = rows.lock_counters(session, mission_id,
                                  [(r.entry_digest, r.bound) for r in reservations])
    settled: list[dict[str, Any]] = []
    for reservation in reservations:
        key = (reservation.entry_digest, reservation.bound)
        counter = counters[key]
        reserved = Decimal(reservation.amount)
        consumed = _consumed(reservation.bound, reserved, outcome, measured_duration_seconds)
        counter.used = _text(max(Decimal(counter.used) - reserved + consumed, Decimal(0)))
        counter.updated_at = now
        reservation.state = "released" if outcome == "suppressed" else "committed"
        reservation.amount = _text(consumed)
        reservation.settled_at = now
        settled.append({
            "bound": reservation.bound, "counter_scope": COUNTER_SCOPE,
            "counter_id": counter_id(mission_id, *key), "reserved": _text(reserved),
            "consumed": _text(consumed),
            "remaining": _text(max(Decimal(counter.limit_value) - Decimal(counter.used),
                                   Decimal(0))),
            "settlement_state": "committed",
        })
    session.flush()
    return tuple(settled)


def release(session: Session, *, evaluation_id: str, now: datetime) -> tuple[dict[str, Any], ...]:
    """Give back everything permit ``evaluation_id`` reserved: it never ran (suppressed,
    or replaced by a renewed idempotent permit)."""
    return settle(session, evaluation_id=evaluation_id, outcome="suppressed", now=now)


def remaining(session: Session, mission_id: str) -> dict[tuple[str, str], Mapping[str, str]]:
    """Each counter of a Mission: ``{(entry_digest, bound): {limit, used, currency?}}``."""
    out: dict[tuple[str, str], Mapping[str, str]] = {}
    for counter in rows.counters_of(session, mission_id):
        view = {"limit": counter.limit_value, "used": counter.used}
        if counter.currency is not None:
            view["currency"] = counter.currency
        out[(counter.entry_digest, counter.bound)] = view
    return out


# -- parsing ---------------------------------------------------------------------------------


def _consumed(bound: str, reserved: Decimal, outcome: str, measured: int | None) -> Decimal:
    if outcome == "suppressed":
        return Decimal(0)
    if bound == MAX_DURATION and outcome == "completed" and measured is not None:
        # The measured duration counts even past the lease: the time was spent.
        return Decimal(measured)
    return reserved


def _merge(charges: list[_Charge]) -> dict[tuple[str, str], _Charge]:
    """One charge per counter: two charges on one counter add up (limits must agree)."""
    merged: dict[tuple[str, str], _Charge] = {}
    for charge in charges:
        prior = merged.get(charge.key)
        if prior is None:
            merged[charge.key] = charge
            continue
        if prior.limit != charge.limit or prior.currency != charge.currency:
            raise MeteringError(f"two charges on {charge.key[1]} disagree on the bound")
        merged[charge.key] = _Charge(charge.key, charge.limit, prior.amount + charge.amount,
                                     charge.currency, prior.source,
                                     prior.incomparable or charge.incomparable)
    return merged


def _parse(charge: ChargeLike, now: datetime, lease_until: datetime) -> _Charge:
    bound = charge.key
    entry = MISSION_WIDE if charge.entry_digest is None else charge.entry_digest
    if not isinstance(entry, str) or not entry:
        raise MeteringError("a charge names its entry_digest, or None for a Mission-wide bound")
    if bound == MAX_CALLS:
        limit = _count(charge.limit, "max_calls limit")
        amount = Decimal(1) if charge.amount is None else _count(charge.amount, "call count")
        return _Charge((entry, bound), limit, amount, None, charge)
    if bound == MAX_TOTAL_VALUE:
        limit_amount, limit_currency = _money_limit(charge.limit)
        currency = charge.currency if charge.currency is not None else limit_currency
        if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
            raise MeteringError("a max_total_value charge names its ISO 4217 currency")
        amount = _decimal(charge.amount, "max_total_value amount")
        # Another currency is incomparable (runtime-digest 7.1): no conversion, so the
        # charge can never fit and is refused as exhausted.
        return _Charge((entry, bound), limit_amount, amount, limit_currency, charge,
                       incomparable=currency != limit_currency)
    if bound == MAX_DURATION:
        limit = _seconds(charge.limit, "max_duration limit")
        if charge.amount is None:
            lease = math.ceil((lease_until - now).total_seconds())
            amount = Decimal(max(lease, 1))
        else:
            amount = _count(charge.amount, "max_duration seconds", minimum=0)
        return _Charge((entry, bound), limit, amount, None, charge)
    raise MeteringError(f"{bound!r} is not a metered bound")


def _count(value: Any, what: str, minimum: int = 1) -> Decimal:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MeteringError(f"{what} must be an integer >= {minimum}")
    return Decimal(value)


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite() or value < 0:
            raise MeteringError(f"{what} must be a finite decimal >= 0")
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Decimal(value)
    if isinstance(value, str) and DECIMAL.fullmatch(value):
        if len(value.replace(".", "")) > MAX_DIGITS:
            raise MeteringError(f"{what} has more than {MAX_DIGITS} digits")
        try:
            return Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            pass
    raise MeteringError(f"{what} must be a decimal string such as \"120.00\"")


def _money_limit(value: Any) -> tuple[Decimal, str]:
    if isinstance(value, Mapping) and set(value) == {"amount", "currency"}:
        currency = value["currency"]
        if isinstance(currency, str) and CURRENCY.fullmatch(currency):
            return _decimal(value["amount"], "max_total_value limit"), currency
    raise MeteringError('a max_total_value limit is {"amount": "<decimal>", "currency": '
                        '"<ISO 4217>"}')


def _seconds(value: Any, what: str) -> Decimal:
    if isinstance(value, str) and value.startswith("P"):
        try:
            return Decimal(duration_seconds(value))
        except ValueError as exc:
            raise MeteringError(f"{what}: {exc}") from None
    return _count(value, what)


def _text(value: Decimal) -> str:
    """Exact decimal text, never exponent notation ("619.00", "5")."""
    return format(value, "f")


__all__ = [
    "BOUNDS",
    "MAX_CALLS",
    "MAX_DURATION",
    "MAX_TOTAL_VALUE",
    "MISSION_WIDE",
    "ChargeLike",
    "MeteringError",
    "Reservation",
    "counter_id",
    "release",
    "remaining",
    "reserve",
    "settle",
]

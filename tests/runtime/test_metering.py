"""Metering (PROFILE.md section 12; runtime-digest 7.2-7.5): ``max_calls``,
``max_total_value`` and ``max_duration`` reserved atomically at permit time, all or nothing,
in exact decimals, exact under real concurrency on SQLite and PostgreSQL, and settled by
execution outcome (runtime-digest 7.4)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from missionbound.runtime import metering
from missionbound.runtime.decision import Charge
from missionbound.runtime.metering import MeteringError, Reservation, release, reserve, settle
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently
from tests.store.factories import T0

MISSION = "msn_" + "m" * 32
ENTRY = "sha-256:" + "E" * 43
OTHER_ENTRY = "sha-256:" + "F" * 43
USD_600 = {"amount": "600.00", "currency": "USD"}
LEASE = T0 + timedelta(seconds=60)


def calls(limit: int = 5, entry: str | None = ENTRY) -> Charge:
    return Charge("max_calls", entry, limit, 1)


def money(amount: str, limit: dict[str, str] = USD_600, currency: str = "USD") -> Charge:
    return Charge("max_total_value", ENTRY, limit, amount, currency)


def seconds(amount: int | None, limit: str = "PT2M") -> Charge:
    return Charge("max_duration", ENTRY, limit, amount)  # type: ignore[arg-type]


def book(store: Store, evaluation_id: str, *charges: Charge,
         mission_id: str = MISSION) -> Reservation:
    with store.begin() as session:
        return reserve(session, mission_id=mission_id, evaluation_id=evaluation_id,
                       charges=list(charges), now=T0, lease_until=LEASE)


def used(store: Store, bound: str, entry: str = ENTRY) -> str:
    with store.read() as session, session.begin():
        return metering.remaining(session, MISSION)[(entry, bound)]["used"]


def settled(store: Store, evaluation_id: str, outcome: str,
            measured: int | None = None) -> tuple[dict[str, object], ...]:
    with store.begin() as session:
        return settle(session, evaluation_id=evaluation_id, outcome=outcome, now=LEASE,
                      measured_duration_seconds=measured)


def test_20_concurrent_reservations_against_max_calls_5_exactly_5_win(store: Store) -> None:
    results = run_concurrently(20, lambda i: book(store, f"dec_{i}", calls(5)).ok)
    assert [r for r in results if not isinstance(r, bool)] == []
    assert results.count(True) == 5 and results.count(False) == 15
    assert used(store, "max_calls") == "5"


def test_concurrent_spending_never_passes_the_money_bound(store: Store) -> None:
    limit = {"amount": "100.00", "currency": "USD"}
    results = run_concurrently(
        16, lambda i: book(store, f"dec_{i}", money("12.50", limit)).ok)
    assert results.count(True) == 8 and results.count(False) == 8
    assert used(store, "max_total_value") == "100.00"


def test_money_adds_up_in_exact_decimals(store: Store) -> None:
    assert book(store, "dec_1", money("120.00")).ok
    refused = book(store, "dec_2", money("499.00"))
    assert not refused.ok and refused.exhausted is not None
    assert refused.exhausted.key == "max_total_value"
    assert refused.metering[0]["requested"] == "499.00"
    assert refused.metering[0]["remaining"] == "480.00"
    assert book(store, "dec_3", money("480.00")).ok
    assert not book(store, "dec_4", money("0.01")).ok
    assert used(store, "max_total_value") == "600.00"
    tenths = {"amount": "0.3", "currency": "EUR"}
    for index in range(3):  # 0.1 + 0.1 + 0.1 == 0.3 only in decimal arithmetic
        with store.begin() as session:
            assert reserve(session, mission_id=MISSION, evaluation_id=f"dec_e{index}",
                           charges=[Charge("max_total_value", OTHER_ENTRY, tenths, "0.1",
                                           "EUR")], now=T0, lease_until=LEASE).ok


def test_another_currency_never_fits(store: Store) -> None:
    refused = book(store, "dec_1", money("1.00", currency="EUR"))
    assert not refused.ok
    assert book(store, "dec_2", money("1.00")).ok


def test_several_charges_are_all_or_nothing(store: Store) -> None:
    assert book(store, "dec_1", money("590.00")).ok
    refused = book(store, "dec_2", calls(5), money("20.00"))
    assert not refused.ok and refused.exhausted is not None
    assert refused.exhausted.key == "max_total_value"
    assert used(store, "max_calls") == "0"  # the call that fitted was not taken
    assert book(store, "dec_3", calls(5), money("10.00")).ok
    assert (used(store, "max_calls"), used(store, "max_total_value")) == ("1", "600.00")


def test_a_rolled_back_reservation_took_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.begin() as session:
        assert reserve(session, mission_id=MISSION, evaluation_id="dec_1",
                       charges=[calls(1)], now=T0, lease_until=LEASE).ok
        raise RuntimeError("the permit was not issued")
    assert book(store, "dec_2", calls(1)).ok
    assert not book(store, "dec_3", calls(1)).ok


def test_the_metering_evidence_of_a_reservation(store: Store) -> None:
    outcome = book(store, "dec_1", calls(5), money("120.00"))
    assert outcome.ok
    by_bound = {entry["bound"]: entry for entry in outcome.metering}
    assert by_bound["max_calls"] == {
        "bound": "max_calls", "counter_scope": "mission",
        "counter_id": metering.counter_id(MISSION, ENTRY, "max_calls"),
        "requested": "1", "reserved": "1", "remaining": "4", "settlement_state": "reserved"}
    assert by_bound["max_total_value"]["remaining"] == "480.00"
    assert by_bound["max_total_value"]["currency"] == "USD"


def test_mission_wide_bounds_share_one_counter(store: Store) -> None:
    assert book(store, "dec_1", calls(2, entry=None)).ok
    assert book(store, "dec_2", calls(2, entry=None)).ok
    assert not book(store, "dec_3", calls(2, entry=None)).ok
    assert used(store, "max_calls", metering.MISSION_WIDE) == "2"


def test_counters_are_per_mission_and_per_entry(store: Store) -> None:
    assert book(store, "dec_1", calls(1)).ok
    assert book(store, "dec_2", Charge("max_calls", OTHER_ENTRY, 1, 1)).ok
    assert book(store, "dec_3", calls(1), mission_id="msn_" + "n" * 32).ok
    assert not book(store, "dec_4", calls(1)).ok


def test_duration_reserves_the_lease_and_settles_the_measured_time(store: Store) -> None:
    assert book(store, "dec_1", seconds(None)).ok  # the lease: 60 s
    assert book(store, "dec_2", seconds(60)).ok
    assert not book(store, "dec_3", seconds(1)).ok  # PT2M spent
    done = settled(store, "dec_1", "completed", measured=10)
    assert done[0]["reserved"] == "60" and done[0]["consumed"] == "10"
    assert done[0]["remaining"] == "50"
    assert used(store, "max_duration") == "70"
    assert settled(store, "dec_1", "completed", measured=10) == ()  # redelivered: once
    assert book(store, "dec_4", seconds(50)).ok
    assert not book(store, "dec_5", seconds(1)).ok


def test_outcomes_release_or_keep_the_reservation(store: Store) -> None:
    for index in range(3):
        assert book(store, f"dec_{index}", calls(3)).ok
    assert not book(store, "dec_x", calls(3)).ok
    settled(store, "dec_0", "failed")  # stays charged (runtime-digest 7.4 default)
    assert used(store, "max_calls") == "3"
    settled(store, "dec_1", "suppressed")  # never ran: given back
    assert used(store, "max_calls") == "2"
    with store.begin() as session:
        assert release(session, evaluation_id="dec_1", now=LEASE) == ()  # once only
        assert len(release(session, evaluation_id="dec_2", now=LEASE)) == 1
    assert used(store, "max_calls") == "1"
    assert book(store, "dec_y", calls(3)).ok


def test_concurrent_settlement_applies_once(store: Store) -> None:
    assert book(store, "dec_1", calls(5), money("100.00")).ok
    results = run_concurrently(8, lambda _: len(settled(store, "dec_1", "suppressed")))
    assert sorted(results) == [0] * 7 + [2]  # type: ignore[type-var]
    assert (used(store, "max_calls"), used(store, "max_total_value")) == ("0", "0.00")


@pytest.mark.parametrize("charge", [
    Charge("max_budget", ENTRY, 5, 1),
    Charge("max_calls", ENTRY, 0, 1),
    Charge("max_calls", ENTRY, "five", 1),
    Charge("max_total_value", ENTRY, {"amount": "5"}, "1.00", "USD"),
    Charge("max_total_value", ENTRY, USD_600, "1,00", "USD"),
    Charge("max_total_value", ENTRY, USD_600, "-1.00", "USD"),
    Charge("max_duration", ENTRY, "P1M", 10),
])
def test_a_charge_it_cannot_meter_fails_closed(store: Store, charge: Charge) -> None:
    with pytest.raises(MeteringError):
        book(store, "dec_1", charge)
    assert book(store, "dec_2", calls(1)).ok


def test_bad_outcomes_are_refused(store: Store) -> None:
    with store.begin() as session, pytest.raises(MeteringError):
        settle(session, evaluation_id="dec_1", outcome="maybe", now=LEASE)
    with store.begin() as session, pytest.raises(MeteringError):
        settle(session, evaluation_id="dec_1", outcome="completed", now=LEASE,
               measured_duration_seconds=-1)


def test_sums_are_exact_past_28_digits(store: Store) -> None:
    """Decimal's default context keeps 28 digits: 10000000000 + 1e-18 would round to the
    limit and fit. Counters are computed exactly, so it does not; an amount past the
    metered digits is refused as unmeterable (the PDP answers constraint_unsupported)."""
    limit = {"amount": "10000000000", "currency": "USD"}
    assert not book(store, "dec_1", money("10000000000.000000000000000001", limit)).ok
    assert book(store, "dec_2", money("10000000000", limit)).ok
    with pytest.raises(MeteringError):
        book(store, "dec_3", money("1" * 41, limit))

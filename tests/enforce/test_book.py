"""MissionStateBook: apply by version, never regress, exact "active", listeners, bounded size."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from missionbound.enforce.signals import MissionState, MissionStateBook

ORIGIN = "https://as.example"
STATES = ["pending_approval", "active", "suspended", "revoked", "completed", "expired"]


def state(version: int, name: str = "active", mission_id: str = "msn_1",
          origin: str = ORIGIN) -> MissionState:
    return MissionState(mission_id=mission_id, origin=origin, state=name, version=version,
                        committed_at=None)


def test_a_higher_version_is_applied_and_a_lower_or_equal_one_is_not() -> None:
    book = MissionStateBook()
    assert book.get("msn_1") is None and not book.is_active("msn_1")
    assert book.apply(state(2, "active"))
    assert book.is_active("msn_1")
    assert not book.apply(state(1, "pending_approval"))
    assert not book.apply(state(2, "active"))
    assert not book.apply(state(2, "suspended"))  # same version, another state: a conflict
    assert book.get("msn_1") == state(2, "active")
    assert book.apply(state(5, "revoked"))
    assert not book.apply(state(4, "active"))
    assert not book.is_active("msn_1")
    assert len(book) == 1


@pytest.mark.parametrize("name", ["suspended", "revoked", "Active", "ACTIVE", "active ",
                                  "pending_approval", "unknown-future-state", "expired"])
def test_only_the_exact_state_active_is_active(name: str) -> None:
    book = MissionStateBook()
    book.apply(state(3, name))
    assert not book.is_active("msn_1")


@given(st.lists(st.tuples(st.integers(0, 50), st.sampled_from(STATES)), min_size=1,
                max_size=40))
def test_any_order_of_versions_ends_at_the_highest(events: list[tuple[int, str]]) -> None:
    book = MissionStateBook()
    applied = [version for version, name in events if book.apply(state(version, name))]
    top = max(version for version, _ in events)
    held = book.get("msn_1")
    assert held is not None and held.version == top
    # The first state offered at the top version is the one kept.
    assert held.state == next(name for version, name in events if version == top)
    assert applied == sorted(set(applied)), "an applied version was never lower than before"


def test_concurrent_appliers_end_at_the_highest_version() -> None:
    book = MissionStateBook()
    versions = list(range(1, 201))
    batches = [random.sample(versions, len(versions)) for _ in range(8)]
    barrier = threading.Barrier(len(batches))

    def apply_all(batch: list[int]) -> int:
        barrier.wait()
        return sum(book.apply(state(v, "active" if v % 2 else "suspended")) for v in batch)

    with ThreadPoolExecutor(len(batches)) as pool:
        applied = sum(pool.map(apply_all, batches))
    held = book.get("msn_1")
    assert held is not None and held.version == 200 and held.state == "suspended"
    assert 1 <= applied <= 200 * len(batches)


def test_another_origin_never_overrides_a_mission() -> None:
    book = MissionStateBook()
    book.apply(state(2, "revoked"))
    assert not book.apply(state(9, "active", origin="https://evil.example"))
    held = book.get("msn_1")
    assert held is not None and held.state == "revoked"


def test_listeners_hear_each_applied_change_only() -> None:
    book = MissionStateBook()
    heard: list[tuple[str, int]] = []
    stop = book.subscribe(lambda s: heard.append((s.state, s.version)))
    book.apply(state(1, "pending_approval"))
    book.apply(state(2, "active"))
    book.apply(state(2, "active"))  # not newer: not heard
    book.apply(state(1, "pending_approval"))
    assert heard == [("pending_approval", 1), ("active", 2)]
    stop()
    stop()  # twice is harmless
    book.apply(state(3, "revoked"))
    assert heard == [("pending_approval", 1), ("active", 2)]


def test_a_failing_listener_neither_undoes_the_change_nor_silences_others() -> None:
    book = MissionStateBook()
    heard: list[int] = []

    def broken(_: MissionState) -> None:
        raise RuntimeError("boom")

    book.subscribe(broken)
    book.subscribe(lambda s: heard.append(s.version))
    assert book.apply(state(1))
    assert heard == [1] and book.is_active("msn_1")


def test_a_listener_may_read_the_book() -> None:
    book = MissionStateBook()
    seen: list[bool] = []
    book.subscribe(lambda s: seen.append(book.is_active(s.mission_id)))
    book.apply(state(1, "active"))
    assert seen == [True]


def test_a_bounded_book_forgets_active_missions_first() -> None:
    book = MissionStateBook(max_missions=3)
    book.apply(state(3, "revoked", mission_id="m-revoked"))
    book.apply(state(2, "active", mission_id="m-active-old"))
    book.apply(state(2, "suspended", mission_id="m-suspended"))
    book.apply(state(1, "pending_approval", mission_id="m-pending"))
    # Forgetting an active Mission cannot fail open: it reads as not active, and a late
    # older SET brings back at most a state it already had.
    assert book.get("m-active-old") is None
    assert set(book.snapshot()) == {"m-revoked", "m-suspended", "m-pending"}
    book.apply(state(2, "active", mission_id="m-new"))
    assert book.get("m-pending") is None
    book.apply(state(4, "expired", mission_id="m-other"))
    # Even a recently changed active Mission goes before a stopped one.
    assert set(book.snapshot()) == {"m-revoked", "m-suspended", "m-other"}
    book.apply(state(5, "completed", mission_id="m-last"))
    # Nothing active is left: the least recently changed ended Mission is compacted.
    assert set(book.snapshot()) == {"m-suspended", "m-other", "m-last"}
    assert book.has_ended("m-revoked") and not book.is_active("m-revoked")
    assert book.forgotten == 4 and len(book) == 3


def test_a_compacted_ended_mission_is_never_revived() -> None:
    """A redelivered older SET must not bring a revoked Mission back to active after the
    bound pushed it out of the book."""
    book = MissionStateBook(max_missions=2)
    book.apply(state(5, "revoked", mission_id="a"))
    book.apply(state(1, "revoked", mission_id="b"))
    book.apply(state(1, "revoked", mission_id="c"))  # "a" is compacted to its id
    assert book.get("a") is None and book.has_ended("a")
    assert book.apply(state(2, "active", mission_id="a")) is False
    assert not book.is_active("a")


def test_suspended_missions_are_kept_over_the_bound() -> None:
    book = MissionStateBook(max_missions=1)
    book.apply(state(3, "suspended", mission_id="a"))
    book.apply(state(2, "suspended", mission_id="b"))
    assert set(book.snapshot()) == {"a", "b"}  # forgetting either could revive it
    assert book.apply(state(1, "active", mission_id="a")) is False


def test_a_mission_that_changes_moves_to_the_back() -> None:
    book = MissionStateBook(max_missions=2)
    book.apply(state(1, "pending_approval", mission_id="a"))
    book.apply(state(1, "pending_approval", mission_id="b"))
    book.apply(state(2, "active", mission_id="a"))  # a changed last
    book.apply(state(1, "active", mission_id="c"))
    assert set(book.snapshot()) == {"a", "c"}


def test_a_book_of_one_keeps_the_newest() -> None:
    book = MissionStateBook(max_missions=1)
    book.apply(state(1, "revoked", mission_id="a"))
    book.apply(state(1, "active", mission_id="b"))
    assert set(book.snapshot()) == {"b"}
    assert book.has_ended("a")


@pytest.mark.parametrize("bad", [
    MissionState("", ORIGIN, "active", 1, None),
    MissionState("m", "", "active", 1, None),
    MissionState("m", ORIGIN, "", 1, None),
    MissionState("m", ORIGIN, "active", -1, None),
    MissionState("m", ORIGIN, "active", True, None),
])
def test_ill_formed_states_are_programming_errors(bad: MissionState) -> None:
    with pytest.raises(ValueError):
        MissionStateBook().apply(bad)
    with pytest.raises(ValueError):
        MissionStateBook(max_missions=0)

"""Single-use ids are exactly-once under concurrency (DESIGN.md "Atomic truth")."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import SingleUseId
from missionbound.store.single_use import consume_once, purge_expired
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently
from tests.store.factories import T0

EXPIRES = T0 + timedelta(minutes=5)


def consume(store: Store, namespace: str, value: str) -> bool:
    with store.begin() as session:
        return consume_once(session, namespace, value, EXPIRES)


def test_a_value_is_accepted_once_per_namespace(store: Store) -> None:
    assert consume(store, "dpop-jti", "abc") is True
    assert consume(store, "dpop-jti", "abc") is False
    assert consume(store, "id-jag-jti", "abc") is True


def test_the_transaction_stays_usable_after_a_replay(store: Store) -> None:
    # A replay must not poison the caller's transaction (PostgreSQL aborts a transaction
    # on a failed INSERT): the caller still writes its refusal evidence in it.
    with store.begin() as session:
        assert consume_once(session, "dpop-jti", "once", EXPIRES) is True
        assert consume_once(session, "dpop-jti", "once", EXPIRES) is False
        assert consume_once(session, "dpop-jti", "other", EXPIRES) is True
    with store.read() as session:
        assert session.scalar(select(func.count()).select_from(SingleUseId)) == 2


def test_a_rolled_back_consumption_did_not_consume(store: Store) -> None:
    with pytest.raises(RuntimeError), store.begin() as session:
        assert consume_once(session, "dpop-jti", "abc", EXPIRES) is True
        raise RuntimeError("the request failed later")
    assert consume(store, "dpop-jti", "abc") is True


def test_50_threads_consuming_the_same_id_succeed_exactly_once(store: Store) -> None:
    results = run_concurrently(50, lambda _: consume(store, "dpop-jti", "raced"))
    assert [r for r in results if not isinstance(r, bool)] == []
    assert results.count(True) == 1
    assert results.count(False) == 49


def test_purge_forgets_only_expired_values(store: Store) -> None:
    with store.begin() as session:
        consume_once(session, "n", "old", T0)
        consume_once(session, "n", "young", T0 + timedelta(hours=1))
    with store.begin() as session:
        assert purge_expired(session, T0 + timedelta(minutes=1)) == 1
    with store.read() as session:
        assert session.scalars(select(SingleUseId.value)).all() == ["young"]


@pytest.mark.parametrize(
    ("namespace", "value"), [("", "v"), ("n" * 65, "v"), ("n", ""), ("n", "v" * 513)]
)
def test_out_of_range_input_is_refused(store: Store, namespace: str, value: str) -> None:
    with pytest.raises(InvalidRequest), store.begin() as session:
        consume_once(session, namespace, value, EXPIRES)
    with store.begin() as session, pytest.raises(InvalidRequest):
        consume_once(session, "n", "v", EXPIRES.replace(tzinfo=None))

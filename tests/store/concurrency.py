"""Run many real threads against the store at once, each with its own session."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

JOIN_TIMEOUT_S = 120  # a hung lock must fail the test, not the whole run


def run_concurrently(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Start ``count`` threads that call ``work(i)`` as close to the same instant as a
    barrier allows; return each result, or the exception it raised, by index."""
    barrier = threading.Barrier(count)
    results: list[T | BaseException | None] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except BaseException as exc:  # reported to the test, which decides
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
        assert not thread.is_alive(), "a worker thread is stuck"
    return results  # type: ignore[return-value]

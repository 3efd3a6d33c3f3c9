"""Refusing a DPoP proof presented twice (RFC 9449 section 11.1), at a Resource Server.

A proof is accepted for a bounded time (its ``iat`` plus the acceptance window), so its
``jti`` needs remembering only that long. :class:`MemoryReplayCache` keeps them in this
process. Several replicas of one Resource Server each keep their own, so a proof replayed to
another replica inside the window is not caught: such a deployment plugs in a shared
:class:`ReplayCache` (server nonces do not help here: a nonce outlives a proof's window).
The cache is shared by every client: one client sending hundreds of requests a second for
minutes can fill it, and everyone then gets 503 until entries age out (size it, or plug in
a store, for such traffic).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Protocol

DEFAULT_MAX_ENTRIES = 200_000


class ReplayCacheFull(Exception):
    """Every slot holds a jti still inside its window: refuse rather than forget one."""


class ReplayCache(Protocol):
    def first_use(self, key: str, *, remember_seconds: float) -> bool:
        """Record ``key``; True the first time within ``remember_seconds``, False after."""
        ...


class MemoryReplayCache:
    """Thread-safe, bounded. Entries leave once their window has passed; when the cache is
    full of live entries it raises :class:`ReplayCacheFull` (the guard answers 503): a
    forgotten jti would let its proof be used again."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._until: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (forget_at, key)

    def first_use(self, key: str, *, remember_seconds: float) -> bool:
        now = self._clock()
        with self._lock:
            self._forget_expired(now)
            if key in self._until:
                return False
            if len(self._until) >= self.max_entries:
                raise ReplayCacheFull(f"{len(self._until)} DPoP proofs are still in their window")
            forget_at = now + max(remember_seconds, 0.0)
            self._until[key] = forget_at
            heapq.heappush(self._expiry, (forget_at, key))
            return True

    def __len__(self) -> int:
        return len(self._until)

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            forget_at, key = heapq.heappop(self._expiry)
            if self._until.get(key) == forget_at:
                del self._until[key]

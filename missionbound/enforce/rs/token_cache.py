"""Access tokens this resource has already verified, so a token used for many requests is
checked once, not on every request.

An agent uses one access token for all its calls during the token's lifetime (300 s by
default), and verifying it (parsing, an ES256 signature, the claim checks) is half of what
the guard costs per request. The verdict does not change while the token lives, except for
time: a hit is served only while ``exp`` (with the leeway) has not passed, so an expired
token always goes through the full check and gets its precise refusal. What a cache could
otherwise hide is the issuer withdrawing a key from its JWKS: a token remembered here is
accepted for at most ``max_age_seconds`` more, the same time a
:class:`~missionbound.protocol.jwks.JwksCache` keeps serving a set it fetched. Only accepted
tokens are remembered; refusals are recomputed each time (they are cheap or rare).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from missionbound.protocol.access_tokens import AccessToken

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_AGE_SECONDS = 300.0


class VerifiedTokens:
    """Thread-safe and bounded (the oldest entries leave first)."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_age_seconds <= 0:
            raise ValueError("max_entries must be at least 1 and max_age_seconds positive")
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[AccessToken, float]] = OrderedDict()

    def get(self, raw: str, *, now: datetime, leeway: float) -> AccessToken | None:
        """The verified token ``raw``, or None when it must be verified (again)."""
        entry = self._entries.get(raw)
        if entry is None:
            return None
        token, forget_at = entry
        if self._clock() >= forget_at or now.timestamp() >= token.expires_at.timestamp() + leeway:
            with self._lock:
                self._entries.pop(raw, None)
            return None
        return token

    def put(self, raw: str, token: AccessToken) -> None:
        with self._lock:
            self._entries[raw] = (token, self._clock() + self.max_age_seconds)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

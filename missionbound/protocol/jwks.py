"""JWK Sets (RFC 7517 section 5): the public keys a verifier checks signatures with.

A verifier asks a :class:`KeySource` for the key a JWS names in its ``kid`` header. Two
sources:

- :class:`StaticKeys` holds a JWK Set given once (configuration, tests).
- :class:`JwksCache` fetches an issuer's ``jwks_uri`` (RFC 8414 section 2) with httpx and
  caches it. It refetches when the copy is older than ``max_age_seconds``, and once when a
  ``kid`` it does not know is asked for (the issuer rotated its key), but never more than
  once per ``min_refresh_seconds``, so a flood of made-up ``kid`` values cannot turn it into
  a request amplifier against the issuer.

Only public keys are trusted: a JWK Set carrying any private key member is refused whole (a
publisher that leaks private keys is broken, and a symmetric ``k`` would open the door to
HMAC-with-the-public-key confusion). Keys this module cannot use for signatures are skipped,
as RFC 7517 section 5 asks for unknown key types: other ``kty``, ``use`` other than ``sig``,
``key_ops`` without ``verify``, curves joserfc does not know, RSA keys under 2048 bits.

Errors: :class:`KeyNotFound` (the issuer's current set has no such ``kid``: a definite no),
:class:`JwksUnavailable` (no usable set could be had just now: network, HTTP status, media
type, size, or a refetch for an unknown ``kid`` that the rate limit holds back, see
:class:`KeyRefreshThrottled`; asking again later may succeed) and :class:`InvalidJwks` (the
document is not an acceptable JWK Set). All derive from :class:`JwksError`.

This is the one module of :mod:`missionbound.protocol` that does network I/O: DESIGN.md puts
"JWKS fetching and caching" here so the issuer and every enforcement point share it.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable
from urllib.parse import urlsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key, KeySet

# A JWK Set of a few rotating keys is 1-5 KiB; 256 KiB is generous and still bounded.
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 100
DEFAULT_MIN_REFRESH_SECONDS = 30.0
DEFAULT_MAX_AGE_SECONDS = 300.0
DEFAULT_TIMEOUT_SECONDS = 5.0

# RFC 7517 section 8.5.1 registers application/jwk-set+json; most servers (ours included)
# answer application/json, and any structured-syntax "+json" type is JSON too (RFC 6839).
_JSON_MEDIA_TYPES = frozenset({"application/json", "application/jwk-set+json"})
# RFC 7518 sections 6.2.2, 6.3.2 and RFC 8037 section 2: members holding private key
# material, plus "k" (a symmetric key is no public key at all).
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_SIGNATURE_KEY_TYPES = frozenset({"EC", "RSA", "OKP"})
_MIN_RSA_BITS = 2048  # RFC 7518 section 3.3


class JwksError(Exception):
    """Base class of every error of this module."""


class KeyNotFound(JwksError):
    """The key set has no usable key with this ``kid``; with :class:`JwksCache`, a set
    fetched after the question was asked has none either."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"no signature key with kid {kid[:100]!r} in the JWK Set")
        self.kid = kid


class JwksUnavailable(JwksError):
    """No usable JWK Set could be obtained just now; asking again later may succeed."""


class KeyRefreshThrottled(JwksUnavailable):
    """The ``kid`` is unknown to the cached set, and the set was fetched too recently to
    fetch it again (``min_refresh_seconds``): whether the issuer has the key is not known
    yet. ``retry_after`` is the number of seconds until a refetch is allowed."""

    def __init__(self, kid: str, retry_after: float) -> None:
        super().__init__(
            f"no key with kid {kid[:100]!r} in the cached JWK Set, which may be fetched "
            f"again in {retry_after:.1f} s"
        )
        self.kid = kid
        self.retry_after = retry_after


class InvalidJwks(JwksUnavailable, ValueError):
    """The document is not an acceptable JWK Set: not ``{"keys": [...]}``, a private key
    member, two usable keys sharing a ``kid``, or too many keys."""


class UnsuitableKey(JwksError):
    """The key the ``kid`` names cannot make signatures of the JWS's ``alg``, or is
    published for another use or algorithm (RFC 7517 sections 4.2 and 4.4)."""


# The JWS algorithms a verifier here accepts (asymmetric only: never "none", never an HMAC
# a public key could be fed to), each with the key type and curve it needs.
KEY_FOR_ALG: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
    "PS256": ("RSA", None),
    "RS256": ("RSA", None),
}
SIGNATURE_ALGS: tuple[str, ...] = tuple(KEY_FOR_ALG)


@runtime_checkable
class KeySource(Protocol):
    """Where a verifier finds the public keys of one issuer."""

    def key_for(self, kid: str) -> Key:
        """The public signature key named ``kid``. Raises :class:`KeyNotFound`, or
        :class:`JwksUnavailable` when the answer cannot be known just now."""
        ...

    def key_set(self) -> KeySet:
        """Every usable public signature key the source currently holds."""
        ...


def parse_jwks(document: Any) -> KeySet:
    """The usable public signature keys of a JWK Set document (RFC 7517 section 5).

    Raises :class:`InvalidJwks` for anything that is not a JWK Set, for a private key member
    in any key, for two usable keys with the same ``kid`` and for more than
    :data:`MAX_KEYS` keys. Keys without ``kid`` are named by their RFC 7638 thumbprint.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise InvalidJwks('a JWK Set is a JSON object with a "keys" array (RFC 7517 section 5)')
    entries: list[Any] = document["keys"]
    if len(entries) > MAX_KEYS:
        raise InvalidJwks(f"the JWK Set holds {len(entries)} keys; at most {MAX_KEYS} are read")
    keys: list[Key] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise InvalidJwks(f"key {position} of the JWK Set is not a JSON object")
        private = sorted(PRIVATE_JWK_MEMBERS & set(entry))
        if private:
            raise InvalidJwks(
                f"key {position} of the JWK Set contains private key members "
                f"{', '.join(private)}: a published JWK Set holds public keys only"
            )
        key = _signature_key(entry)
        if key is None:
            continue
        key.ensure_kid()
        kid = key.kid
        assert kid is not None  # ensure_kid set it
        if kid in seen:
            raise InvalidJwks(f"two keys of the JWK Set share the kid {kid[:100]!r}")
        seen.add(kid)
        keys.append(key)
    return KeySet(keys)


def _signature_key(entry: Mapping[str, Any]) -> Key | None:
    """The public key of one JWK entry, or None when it is not usable for verifying
    signatures (skipped, as RFC 7517 section 5 asks for key types it does not understand)."""
    if entry.get("kty") not in _SIGNATURE_KEY_TYPES:
        return None
    if "kid" in entry and not isinstance(entry["kid"], str):
        return None
    if entry.get("use", "sig") != "sig":  # RFC 7517 section 4.2: "enc" keys are not ours
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if entry["kty"] == "RSA" and _b64url_int_bits(entry.get("n")) < _MIN_RSA_BITS:
        return None
    try:
        key = JWKRegistry.import_key(dict(entry))
    except (JoseError, ValueError, TypeError, KeyError):
        return None  # an unsupported curve, or a malformed key
    if key.is_private:  # the member check makes this impossible; belt and braces
        return None
    return key


def _b64url_int_bits(value: Any) -> int:
    if not isinstance(value, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return 0
    return int.from_bytes(raw, "big").bit_length()


def _index(key_set: KeySet) -> dict[str, Key]:
    return {key.kid: key for key in key_set.keys if key.kid is not None}


class StaticKeys:
    """A :class:`KeySource` over a JWK Set given once, e.g. from configuration.

    Raises :class:`InvalidJwks` at construction for an unacceptable set."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._key_set = parse_jwks(jwks)
        self._by_kid = _index(self._key_set)

    def key_for(self, kid: str) -> Key:
        key = self._by_kid.get(kid)
        if key is None:
            raise KeyNotFound(kid)
        return key

    def key_set(self) -> KeySet:
        return self._key_set


@dataclass(frozen=True)
class _Snapshot:
    key_set: KeySet
    by_kid: dict[str, Key]
    fetched_at: float  # clock() when the fetch that produced it started


class HttpClientOwner:
    """Mixin for a fetcher holding an HTTP client (this cache; the RFC 8936 poller of
    :mod:`missionbound.enforce.signal_delivery`): the one its caller gave, which the caller
    closes, or one of its own, which :meth:`close` (or leaving its ``with`` block) closes."""

    _client: httpx.Client
    _own_client: bool

    def _hold_client(self, client: httpx.Client | None, timeout_seconds: float) -> None:
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_seconds)

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class JwksCache(HttpClientOwner):
    """A :class:`KeySource` that fetches ``jwks_uri`` with httpx and caches it; thread-safe.

    - The first use fetches. A copy older than ``max_age_seconds`` is fetched again on the
      next use.
    - A ``kid`` missing from the copy triggers one refetch, unless a fetch was attempted in
      the last ``min_refresh_seconds``: then :class:`KeyRefreshThrottled` says "not known
      yet" (a Signals receiver answers "try later", not "rejected").
    - Fetch attempts, successful or not, are at most one per ``min_refresh_seconds``;
      concurrent callers wait for the one fetch in progress instead of starting their own.
    - When a refetch fails, a copy older than ``max_age_seconds`` is still served for
      ``stale_if_error_seconds`` (default 0: fail closed), then :class:`JwksUnavailable`.
    - Only an HTTP 200 answer with a JSON media type, at most ``max_bytes`` long, holding a
      JWK Set of public keys is accepted. Redirects are not followed.

    ``client`` is used as given (its timeouts, proxies, TLS settings); without one the cache
    creates its own, with ``timeout_seconds``, and :meth:`close` closes it. ``clock`` is a
    monotonic clock in seconds, replaceable in tests.
    """

    def __init__(
        self,
        jwks_uri: str,
        *,
        client: httpx.Client | None = None,
        min_refresh_seconds: float = DEFAULT_MIN_REFRESH_SECONDS,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        stale_if_error_seconds: float = 0.0,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(jwks_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"jwks_uri must be an absolute http or https URL, not {jwks_uri!r}")
        if max_age_seconds <= 0 or min_refresh_seconds < 0 or stale_if_error_seconds < 0:
            raise ValueError("max_age_seconds must be positive, the other durations not negative")
        if min_refresh_seconds > max_age_seconds:
            raise ValueError("min_refresh_seconds cannot exceed max_age_seconds")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.jwks_uri = jwks_uri
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.stale_if_error_seconds = stale_if_error_seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._hold_client(client, timeout_seconds)
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None  # replaced whole, so read without the lock
        self._attempted_at: float | None = None
        self._error: JwksUnavailable | None = None

    # -- KeySource -----------------------------------------------------------------------

    def key_set(self) -> KeySet:
        return self._current().key_set

    def key_for(self, kid: str) -> Key:
        asked_at = self._clock()
        snapshot = self._current()
        key = snapshot.by_kid.get(kid)
        if key is not None:
            return key
        with self._lock:
            snapshot = self._snapshot or snapshot
            key = snapshot.by_kid.get(kid)
            if key is not None:
                return key
            if snapshot.fetched_at >= asked_at:
                raise KeyNotFound(kid)  # a fetch begun after the question did not have it
            now = self._clock()
            wait = self._wait_before_attempt(now)
            if wait > 0:
                raise KeyRefreshThrottled(kid, wait)
            snapshot = self._fetch(now)
        key = snapshot.by_kid.get(kid)
        if key is None:
            raise KeyNotFound(kid)
        return key

    def cached_key_for(self, kid: str) -> Key | None:
        """The key ``kid`` names in a copy young enough to use, without any I/O; None when
        :meth:`key_for` would have to fetch (no copy, an old copy, or a ``kid`` the copy
        lacks). An async caller checks here first and calls :meth:`key_for` in a worker
        thread only on None, so the event loop never waits on the network."""
        snapshot = self._snapshot
        if snapshot is None or self._clock() - snapshot.fetched_at >= self.max_age_seconds:
            return None
        return snapshot.by_kid.get(kid)

    # -- control -------------------------------------------------------------------------

    def refresh(self) -> KeySet:
        """Fetch the set now, whatever the rate limit says."""
        with self._lock:
            return self._fetch(self._clock()).key_set

    @property
    def fetched_at(self) -> float | None:
        """``clock()`` when the cached copy's fetch started; None before the first."""
        snapshot = self._snapshot
        return None if snapshot is None else snapshot.fetched_at

    # -- internals -----------------------------------------------------------------------

    def _current(self) -> _Snapshot:
        """A copy no older than ``max_age_seconds``, fetching one when needed."""
        snapshot = self._snapshot
        if snapshot is not None and self._clock() - snapshot.fetched_at < self.max_age_seconds:
            return snapshot
        with self._lock:
            snapshot = self._snapshot
            now = self._clock()
            if snapshot is not None and now - snapshot.fetched_at < self.max_age_seconds:
                return snapshot  # another thread fetched while this one waited
            if self._wait_before_attempt(now) <= 0:
                try:
                    return self._fetch(now)
                except JwksUnavailable:
                    pass  # served stale below, within stale_if_error_seconds
            if snapshot is not None and now - snapshot.fetched_at < (
                self.max_age_seconds + self.stale_if_error_seconds
            ):
                return snapshot
            if self._error is not None:
                raise self._error
            raise JwksUnavailable(f"no current JWK Set from {self.jwks_uri}")

    def _wait_before_attempt(self, now: float) -> float:
        if self._attempted_at is None:
            return 0.0
        return self._attempted_at + self.min_refresh_seconds - now

    def _fetch(self, now: float) -> _Snapshot:
        """One GET of ``jwks_uri``; the caller holds the lock."""
        self._attempted_at = now
        try:
            document = self._download()
            key_set = parse_jwks(document)
        except JwksUnavailable as exc:
            self._error = exc
            raise
        snapshot = _Snapshot(key_set=key_set, by_kid=_index(key_set), fetched_at=now)
        self._snapshot = snapshot
        self._error = None
        return snapshot

    def _download(self) -> Any:
        source = self.jwks_uri
        try:
            with self._client.stream(
                "GET",
                source,
                headers={"Accept": "application/jwk-set+json, application/json"},
                follow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    raise JwksUnavailable(f"{source} answered HTTP {response.status_code}")
                media_type = response.headers.get("content-type", "").split(";")[0]
                media_type = media_type.strip().lower()
                if media_type not in _JSON_MEDIA_TYPES and not (
                    media_type.startswith("application/") and media_type.endswith("+json")
                ):
                    raise JwksUnavailable(
                        f"{source} answered {media_type or 'no Content-Type'}, not JSON"
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                    raise JwksUnavailable(f"{source} sent more than {self.max_bytes} octets")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise JwksUnavailable(f"{source} sent more than {self.max_bytes} octets")
        except httpx.HTTPError as exc:
            raise JwksUnavailable(
                f"could not fetch {source}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            return json.loads(
                bytes(body).decode("utf-8"),
                object_pairs_hook=_object_without_duplicates,
                parse_constant=_refuse_constant,
            )
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise InvalidJwks(f"{source} did not answer a JSON document: {exc}") from exc


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7517 section 4 / RFC 7159: member names should be unique; two "keys" (or two "n")
    # could mean different things to different parsers, so such a document is refused.
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"the member {name[:100]!r} appears twice")
        out[name] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def signature_key(keys: KeySource, kid: str, alg: str) -> Key:
    """The key ``kid`` names, fit to check an ``alg`` signature (``alg`` one of
    :data:`SIGNATURE_ALGS`). Raises :class:`KeyNotFound`, :class:`JwksUnavailable` or
    :class:`UnsuitableKey`; each verifier turns them into its own protocol's error."""
    key = keys.key_for(kid)
    kty, crv = KEY_FOR_ALG[alg]
    if key.key_type != kty or (crv is not None and key.get("crv") != crv):
        raise UnsuitableKey(f"the key {kid[:100]!r} cannot make {alg} signatures")
    # RFC 7517 section 4.4: a key published with "alg" is for that algorithm alone.
    if key.get("use", "sig") != "sig" or key.get("alg", alg) != alg:
        raise UnsuitableKey(f"the key {kid[:100]!r} is not published for {alg}")
    return key

"""The Mission Issuers a Resource AS trusts, and the JWTs they sign (resource_as role;
PROFILE.md section 11, issuance digest 9.2).

Trust is local configuration first (``trusted_origins`` in the settings): an origin is trusted
because the operator named it, never because a signed assertion says so. For each one this
module holds a :class:`~missionbound.protocol.jwks.JwksCache` of its ``jwks_uri`` (rotation
handled there: an unknown ``kid`` refetches the set, at most once per
:data:`JWKS_MIN_REFRESH_SECONDS`) and one HTTP client, bounded by :data:`ORIGIN_TIMEOUT`, for
every call to the origins (JWKS and Mission Status).

:func:`verify_origin_jwt` checks an ID-JAG an origin signed (issuer/jwt_bearer.py; the
Mission Status is checked by protocol/mission_status.py, shared with Resource Servers): explicit
``typ`` (RFC 8725 section 3.11), an asymmetric algorithm only (never ``none``, never an HMAC
keyed with something public), the key named by ``kid`` in the origin's published set and
nowhere else (``jwk``, ``jku``, ``x5u``, ``x5c`` in the header are never read), and a valid
signature. It raises :class:`UntrustedToken` for a definite no and :class:`OriginUnavailable`
when the answer cannot be known just now (the origin's keys cannot be fetched).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import httpx

from missionbound.config import Settings, TrustedOrigin
from missionbound.mission.errors import MissionError
from missionbound.protocol.jose_segments import (
    AllowListRegistry,
    JwsRefused,
    read_compact,
    verify_signed_jws,
)
from missionbound.protocol.jwks import SIGNATURE_ALGS, JwksCache, JwksUnavailable

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer

# Every call to an origin is bounded: a slow or silent origin costs a redemption at most
# this long, and the redemption then fails closed (docs/resource-as.md, "Freshness").
ORIGIN_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
# An origin's key set: re-read every 5 minutes, and for a kid it does not know (a rotation)
# at most every 5 s. The origins are a few configured ASes, so this bounds what made-up kids
# can make us fetch while letting a rotation be picked up within seconds.
JWKS_MAX_AGE_SECONDS = 300.0
JWKS_MIN_REFRESH_SECONDS = 5.0
# A JWS an origin sends us: an ID-JAG is a few KiB at most.
MAX_ORIGIN_JWT_LENGTH = 65536

# Asymmetric signature algorithms only (protocol/jwks.py says which key each needs).
SUPPORTED_ALGS = SIGNATURE_ALGS
MAX_KID_LENGTH = 255


class OriginUnavailable(MissionError):
    """The origin could not be asked just now (network, HTTP status, an unusable answer, its
    keys not fetchable): nothing is issued, and the same request may succeed later. 503
    ``temporarily_unavailable``: the grant is not spent, so a client may retry it while it
    lives (decision F4)."""

    error = "temporarily_unavailable"
    status = 503


class UntrustedToken(ValueError):
    """A definite no: the JWS is not one the origin signed as the expected document."""


_REGISTRY = AllowListRegistry(SUPPORTED_ALGS, max_length=MAX_ORIGIN_JWT_LENGTH)


class TrustedOrigins:
    """The configured origins, their key sets and the HTTP client that reaches them.

    ``client`` is used as given (tests route it in process), else one is made with
    :data:`ORIGIN_TIMEOUT` and closed by :meth:`close`. Thread-safe."""

    def __init__(
        self,
        origins: tuple[TrustedOrigin, ...],
        *,
        client: httpx.Client | None = None,
        jwks_min_refresh_seconds: float = JWKS_MIN_REFRESH_SECONDS,
    ) -> None:
        self._origins = {origin.issuer: origin for origin in origins}
        self._own_client = client is None
        self.http = client if client is not None else httpx.Client(
            timeout=ORIGIN_TIMEOUT, follow_redirects=False)
        self._jwks_min_refresh = jwks_min_refresh_seconds
        self._keys: dict[str, JwksCache] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, *, client: httpx.Client | None = None
                      ) -> TrustedOrigins:
        return cls(settings.trusted_origins, client=client)

    def find(self, issuer: Any) -> TrustedOrigin | None:
        """The configured origin whose issuer identifier is ``issuer`` (byte-equal)."""
        return self._origins.get(issuer) if isinstance(issuer, str) else None

    def keys(self, origin: TrustedOrigin) -> JwksCache:
        """The origin's published keys (one cache per origin, made at first use)."""
        with self._lock:
            cache = self._keys.get(origin.issuer)
            if cache is None:
                cache = self._keys[origin.issuer] = JwksCache(
                    origin.jwks_uri, client=self.http, max_age_seconds=JWKS_MAX_AGE_SECONDS,
                    min_refresh_seconds=self._jwks_min_refresh)
            return cache

    def close(self) -> None:
        if self._own_client:
            self.http.close()


_ATTACHED: weakref.WeakKeyDictionary[Any, TrustedOrigins] = weakref.WeakKeyDictionary()
_ATTACHED_LOCK = threading.Lock()


def attach_trusted_origins(issuer: MissionIssuer, origins: TrustedOrigins) -> None:
    """Give ``issuer`` its origins (create_app does, once per app)."""
    with _ATTACHED_LOCK:
        _ATTACHED[issuer] = origins


def trusted_origins_of(issuer: MissionIssuer) -> TrustedOrigins:
    """The origins of ``issuer``: those create_app attached, else a set made from its
    settings at first use (one per issuer, never shared between apps)."""
    with _ATTACHED_LOCK:
        origins = _ATTACHED.get(issuer)
        if origins is None:
            origins = _ATTACHED[issuer] = TrustedOrigins.from_settings(issuer.settings)
        return origins


# -- verifying a JWS an origin signed ------------------------------------------------------


def _refuse(description: str) -> UntrustedToken:
    return UntrustedToken(description)


def read_unverified(token: Any, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, strictly parsed (a member named twice, not
    JSON, not an object: refused), before anything about them is trusted."""
    return read_compact(token, what, _refuse, max_length=MAX_ORIGIN_JWT_LENGTH)


def is_media_type(value: Any, typ: str) -> bool:
    """RFC 7515 section 4.1.9: ``typ`` compares case-insensitively and may omit the
    ``application/`` prefix."""
    return isinstance(value, str) and value.lower() in (typ, f"application/{typ}")


def verify_origin_jwt(
    token: str, header: dict[str, Any], *, keys: JwksCache, typ: str, what: str
) -> None:
    """Check ``token`` (whose strictly parsed ``header`` the caller has) as a ``typ``
    document signed by a key of ``keys``. Raises :class:`UntrustedToken` or
    :class:`OriginUnavailable`."""
    if not is_media_type(header.get("typ"), typ):
        raise _refuse(f'the {what} header "typ" must be "{typ}" (explicit typing)')
    try:
        verify_signed_jws(token, header, keys=keys, registry=_REGISTRY, what=what,
                          max_kid_length=MAX_KID_LENGTH)
    except JwsRefused as exc:
        raise _refuse(exc.description) from exc
    except JwksUnavailable as exc:
        # Includes a refetch the rate limit holds back: not known yet, not a no.
        raise OriginUnavailable(f"the keys of the {what}'s issuer cannot be had just now: "
                                f"{exc}") from exc

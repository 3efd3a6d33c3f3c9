"""Reading the header and payload segments of a compact JWS strictly (RFC 7515 sections 2,
5.2 and 7.1), for every JWS a recipient here checks by hand before its signature (DPoP
proofs, :mod:`missionbound.protocol.dpop`; SETs, :mod:`missionbound.protocol.secevent`;
Transaction Tokens, :mod:`missionbound.protocol.txn_tokens`; the JWTs of trusted origins,
:mod:`missionbound.issuer.trusted_origins`).

A segment is base64url without padding (RFC 7515 section 2) holding a JSON object. A member
named twice is refused rather than read as its last value, as ``json`` would: two ``iss``
or two ``htu`` could mean one thing here and another to a different parser, and RFC 7515
section 5.2 allows refusing such a JWS outright. ``NaN`` and ``Infinity`` are not JSON and
are refused too. (Floats are JSON, so unlike :func:`missionbound.mission.canonical.parse_strict`
this admits them: ``iat`` may be a NumericDate with a fraction.)

Each caller raises its own error: :func:`json_object_segment` and :func:`read_compact`
build it with ``refuse``.

The signature side every verifier of a JWS signed by a key of a JWK Set shares (SETs,
Transaction Tokens, origins' JWTs): :class:`AllowListRegistry`, and
:func:`verify_signed_jws`, which checks the header's shape (``alg`` on the allow-list,
no ``crit`` or ``b64``, a ``kid``), takes the key ``kid`` names from the issuer's JWK Set and
checks the signature with it. It raises :class:`JwsRefused` with a neutral ``reason`` that
each verifier maps to its own protocol's error; which ``typ`` a token must carry stays with
each verifier.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from missionbound.protocol.jwks import KeyNotFound, KeySource, UnsuitableKey, signature_key

# A JWS in compact serialization (RFC 7515 section 7.1): three base64url parts joined by
# ".". The signature part may be empty ("alg": "none"), so that such a token is refused for
# its algorithm rather than for its shape. (A DPoP proof always carries a signature:
# protocol/dpop.py has its own.)
COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def b64url_decode(segment: str) -> bytes:
    """The octets of a base64url segment; the caller matched ``[A-Za-z0-9_-]*``, so only
    the padding is missing (RFC 7515 section 2)."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class _DuplicateMember(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _DuplicateMember(name)
        out[name] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_object_segment(
    segment: str,
    what: str,
    refuse: Callable[[str], Exception],
    *,
    max_name_length: int | None = None,
) -> dict[str, Any]:
    """The JSON object ``segment`` encodes, or ``refuse(description)`` raised: the member
    named twice (its name cut to ``max_name_length``, when given), not base64url-encoded
    JSON, or not an object. ``what`` names the segment in the description."""
    try:
        text = b64url_decode(segment).decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_refuse_constant
        )
    except _DuplicateMember as exc:
        name = str(exc) if max_name_length is None else str(exc)[:max_name_length]
        raise refuse(f"{what} has the member {name!r} twice") from exc
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise refuse(f"{what} is not base64url-encoded JSON") from exc
    if not isinstance(value, dict):
        raise refuse(f"{what} must be a JSON object")
    return value


def read_compact(
    token: Any, what: str, refuse: Callable[[str], Exception], *, max_length: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of ``token``, a JWS in compact serialization of at most
    ``max_length`` characters (:data:`COMPACT_JWS`), strictly parsed; nothing about them is
    trusted yet. Anything else: ``refuse(description)`` raised, ``what`` naming the token."""
    if not isinstance(token, str):
        raise refuse(f"the {what} must be text: a JWS in compact serialization")
    if len(token) > max_length:
        raise refuse(f"the {what} is {len(token)} characters; the limit is {max_length}")
    if not COMPACT_JWS.fullmatch(token):
        raise refuse(f"the {what} is not a JWS in compact serialization: three base64url "
                     "parts joined by '.' (RFC 7515 section 7.1)")
    header_segment, payload_segment, _ = token.split(".")
    return (
        json_object_segment(header_segment, f"the {what} header", refuse, max_name_length=100),
        json_object_segment(payload_segment, f"the {what} claims", refuse, max_name_length=100),
    )


class AllowListRegistry(JWSRegistry):
    """joserfc's JWS registry narrowed to an allow-list of algorithms (never ``none``, never
    an HMAC a public key could be fed to) and sized for one kind of JWS.

    ``strict_check_header`` is off: RFC 7515 lets a header carry parameters we do not read."""

    def __init__(self, algorithms: Sequence[str], *, max_length: int) -> None:
        super().__init__(algorithms=list(algorithms), strict_check_header=False)
        self.names = tuple(algorithms)
        self.permitted = frozenset(algorithms)
        self.max_header_length = max_length
        self.max_payload_length = max_length

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in self.permitted:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        # joserfc warns on every use of "EdDSA" (RFC 9864 prefers "Ed25519"); our ASes sign
        # with it on purpose (issuer/keys.py), so skip the per-token warning.
        return self.algorithms[name]


class JwsRefused(ValueError):
    """:func:`verify_signed_jws` refuses the JWS; ``reason`` (one of the constants below)
    says which check failed, ``description`` says it for a person. Each verifier raises its
    own protocol's error for it."""

    MALFORMED = "malformed"  # no "alg" or "kid", or a JWS extension
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"  # "alg" not on the allow-list
    UNKNOWN_KEY = "unknown_key"  # the issuer's JWK Set has no key "kid"
    UNSUITABLE_KEY = "unsuitable_key"  # the key "kid" names cannot make "alg" signatures
    BAD_SIGNATURE = "bad_signature"

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def verify_signed_jws(
    token: str,
    header: dict[str, Any],
    *,
    keys: KeySource,
    registry: AllowListRegistry,
    what: str,
    max_kid_length: int | None = None,
) -> None:
    """Check ``token``, whose strictly parsed ``header`` the caller has (and whose ``typ``
    it checked), as signed with an algorithm of ``registry`` by the key of ``keys`` its
    ``kid`` names. Raises :class:`JwsRefused`; a
    :class:`~missionbound.protocol.jwks.JwksUnavailable` of ``keys`` propagates unchanged
    (no verdict on the token). ``what`` names the token in the descriptions."""
    alg, kid = _check_header(header, registry, what, max_kid_length)
    _check_signature(token, _key(keys, kid, alg, what), alg, registry, what)


def _check_header(
    header: dict[str, Any], registry: AllowListRegistry, what: str, max_kid_length: int | None
) -> tuple[str, str]:
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise JwsRefused(JwsRefused.MALFORMED, f'the {what} header lacks "alg"')
    if alg not in registry.permitted:
        raise JwsRefused(
            JwsRefused.UNSUPPORTED_ALGORITHM,
            f"the {what} is signed with {alg[:40]!r}; only the asymmetric algorithms "
            f"{', '.join(registry.names)} are accepted")
    # A "crit" extension is not understood (RFC 7515 section 4.1.11), and "b64" (RFC 7797)
    # would change what the signature covers.
    if "crit" in header or "b64" in header:
        raise JwsRefused(JwsRefused.MALFORMED,
                         f'the {what} header must not use the "crit" or "b64" extensions')
    # The key comes from the issuer's JWK Set by "kid" alone: "jwk", "jku", "x5u" or "x5c"
    # in the header are never read, so a token cannot bring its own key.
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwsRefused(JwsRefused.MALFORMED, f'the {what} header lacks "kid", the key of '
                         "its issuer's JWK Set that signed it")
    if max_kid_length is not None and len(kid) > max_kid_length:
        raise JwsRefused(JwsRefused.MALFORMED, f'the {what} header "kid" is longer than '
                         f"{max_kid_length} characters")
    return alg, kid


def _key(keys: KeySource, kid: str, alg: str, what: str) -> Key:
    try:
        return signature_key(keys, kid, alg)
    except KeyNotFound as exc:
        raise JwsRefused(JwsRefused.UNKNOWN_KEY, f"the {what} names the key {kid[:100]!r}, "
                         "which its issuer does not publish") from exc
    except UnsuitableKey as exc:
        raise JwsRefused(JwsRefused.UNSUITABLE_KEY, f"the {what}'s key: {exc}") from exc


def _check_signature(
    token: str, key: Key, alg: str, registry: AllowListRegistry, what: str
) -> None:
    try:
        compact = jws.extract_compact(token.encode("ascii"), registry=registry)
        valid = jws.validate_compact(compact, key, registry=registry)
    except (JoseError, ValueError, TypeError) as exc:
        raise JwsRefused(
            JwsRefused.BAD_SIGNATURE,
            f"the {alg} signature of the {what} cannot be checked: {type(exc).__name__}",
        ) from exc
    if not valid:
        raise JwsRefused(JwsRefused.BAD_SIGNATURE,
                         f"the {what} signature does not verify with its issuer's key")


__all__ = [
    "COMPACT_JWS",
    "AllowListRegistry",
    "JwsRefused",
    "b64url_decode",
    "json_object_segment",
    "read_compact",
    "verify_signed_jws",
]

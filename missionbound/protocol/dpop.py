"""DPoP proofs (RFC 9449): checking the ``DPoP`` header of one HTTP request.

:func:`verify_dpop_proof` performs the checks of RFC 9449 section 4.3 on one proof, alone: it
needs no store, so the issuer and every Resource Server share it. What needs shared state is
the caller's: refusing a ``jti`` seen before (section 11.1) and issuing server nonces
(section 8). Nonces need only a secret (:mod:`missionbound.protocol.dpop_nonces`); the
issuer's replay store is in ``missionbound.issuer.dpop``, a Resource Server's in
``missionbound.enforce.rs``.

Every refusal raises :class:`DPoPProofError` (wire code ``invalid_dpop_proof``) with a
description a client developer can act on; a missing or stale server nonce raises its subclass
:class:`UseDPoPNonce` (``use_dpop_nonce``), which carries the nonce to send back in a
``DPoP-Nonce`` header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry

from missionbound.mission.errors import MissionError
from missionbound.protocol.jose_segments import b64url_decode, json_object_segment

# RFC 9449 section 4.2: the explicit type that keeps any other JWT from passing as a proof
# (section 11.5).
DPOP_JWT_TYPE = "dpop+jwt"

# The JWS algorithms accepted for proofs, published as ``dpop_signing_alg_values_supported``
# (RFC 9449 section 5.1). Asymmetric only (section 11.6): never "none", never HMAC. ES256 comes
# first as the one every client implements. "Ed25519" is RFC 9864's fully-specified name for
# EdDSA over Ed25519: oauth4webapi 3.x (our foreign test client) signs Ed25519 keys with it,
# while older clients still send "EdDSA". RS256 and PS256 serve clients whose keys live in
# RSA-only hardware or platform key stores.
SUPPORTED_ALGS: tuple[str, ...] = ("ES256", "ES384", "EdDSA", "Ed25519", "PS256", "RS256")

# RFC 9449 section 11.1 asks for a brief acceptance window "on the order of seconds or minutes".
# Five minutes absorbs slow clients and retries; the server nonce (section 8) is the tool to
# shorten proof lifetimes further. A proof "from the future" is accepted within the same 60 s
# of clock skew the issuer grants verifiers of its tokens (missionbound.issuer.keys).
DEFAULT_MAX_AGE_SECONDS = 300
DEFAULT_CLOCK_SKEW_SECONDS = 60

# A real proof is well under 1 KiB with an EC key and about 1.5 KiB with RSA-4096. Anything far
# bigger is refused before any decoding work.
MAX_PROOF_LENGTH = 8192
# RFC 9449 section 11.1 asks servers tracking jti values to refuse "unnecessarily large" ones.
# 96 random bits (section 4.2) need 16 base64url characters; a UUID needs 36.
MAX_JTI_LENGTH = 256

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# RFC 7518 sections 6.2.2, 6.3.2 and RFC 8037 section 2: the members holding private key
# material, plus "k" (a symmetric key is no public key at all).
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ASYMMETRIC_KEY_TYPES = ("EC", "RSA", "OKP")
# RFC 7518 section 3.3: RSA keys for signatures are 2048 bits or larger.
_MIN_RSA_BITS = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PERCENT_ENCODED = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")  # RFC 3986 section 2.3


class DPoPProofError(MissionError):
    """RFC 9449 sections 5 and 7.1: the DPoP proof is missing a piece, malformed or invalid.

    ``status`` is the token endpoint's 400; a Resource Server answers 401 with a
    ``WWW-Authenticate: DPoP error="invalid_dpop_proof"`` challenge instead (section 7.1).
    """

    error = "invalid_dpop_proof"
    status = 400


class UseDPoPNonce(DPoPProofError):
    """RFC 9449 sections 8 and 9: the proof lacks the server nonce or carries a stale one.

    The HTTP layer sends :attr:`nonce` back in a ``DPoP-Nonce`` header; the client retries with
    a new proof carrying it.
    """

    error = "use_dpop_nonce"

    def __init__(
        self, nonce: str, description: str = "the server requires a nonce in the DPoP proof"
    ) -> None:
        super().__init__(description)
        self.nonce = nonce


@dataclass(frozen=True)
class DPoPProof:
    """A proof that passed every check of RFC 9449 section 4.3 the caller asked for."""

    jkt: str  # RFC 7638 SHA-256 thumbprint of public_jwk, base64url: the cnf.jkt value
    jti: str
    iat: int
    htm: str
    htu: str  # the claim as sent (before normalization)
    nonce: str | None
    public_jwk: dict[str, Any] = field(hash=False)
    alg: str
    # The last instant at which this verifier would still accept the proof (iat + the window):
    # a replay store must remember the jti at least that long (section 11.1).
    accepted_until: datetime


NonceCheck = Callable[[str | None], None]


class _ProofRegistry(JWSRegistry):
    """joserfc's JWS registry narrowed to :data:`SUPPORTED_ALGS`, sized for proofs."""

    # joserfc's default 512-octet header limit is smaller than a header carrying an RSA-2048
    # jwk (about 550 octets); the whole proof is capped at MAX_PROOF_LENGTH before this anyway.
    max_header_length = MAX_PROOF_LENGTH
    max_payload_length = MAX_PROOF_LENGTH

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in SUPPORTED_ALGS:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        # joserfc warns on every use of "EdDSA" (deprecated by RFC 9864 in favour of
        # "Ed25519"); accepting it is deliberate, so skip the per-request warning.
        return self.algorithms[name]


# strict_check_header off: RFC 9449 section 4.2 lets a proof carry other header parameters.
_REGISTRY = _ProofRegistry(algorithms=SUPPORTED_ALGS, strict_check_header=False)


def single_dpop_header(values: Sequence[str]) -> str | None:
    """The one ``DPoP`` header value of a request, or None when it sent none.

    RFC 9449 section 4.3 item 1: more than one ``DPoP`` header field is refused. Pass every
    value the HTTP layer saw (Starlette: ``request.headers.getlist("dpop")``).
    """
    if len(values) > 1:
        raise DPoPProofError(
            f"the request carries {len(values)} DPoP header fields; "
            "RFC 9449 section 4.3 allows exactly one"
        )
    return values[0] if values else None


def verify_dpop_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: datetime,
    access_token: str | None = None,
    nonce_check: NonceCheck | None = None,
    max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
    max_clock_skew_seconds: int = DEFAULT_CLOCK_SKEW_SECONDS,
) -> DPoPProof:
    """Check one DPoP proof against the request it came with (RFC 9449 section 4.3).

    ``method`` is the request's HTTP method and ``url`` the URL the client addressed, as the
    client saw it: behind a proxy, build it from the public base URL, not the socket. Pass
    ``access_token`` when the request presents one (a Resource Server): the proof must then
    carry its ``ath``. ``nonce_check`` receives the proof's ``nonce`` claim (None when absent)
    and raises :class:`UseDPoPNonce` to refuse it; leave it None when this server issues no
    nonces. Replay (a ``jti`` seen before) is the caller's check, with
    :attr:`DPoPProof.accepted_until` as how long to remember the ``jti``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if max_age_seconds <= 0 or max_clock_skew_seconds < 0:
        raise ValueError("max_age_seconds must be positive and max_clock_skew_seconds not negative")

    header, claims = _decode(proof)  # item 2
    alg = _check_header(header)  # items 4 and 5
    key, jkt, public = _public_key(header.get("jwk"))  # item 7
    _check_signature(proof, key, alg)  # item 6
    jti, htm, htu, iat = _required_claims(claims)  # item 3

    # Item 8. HTTP methods are case-sensitive (RFC 9110 section 9.1): "post" is not "POST".
    if htm != method:
        raise DPoPProofError(f"DPoP proof htm {htm!r} does not match the request method {method}")
    _check_htu(htu, url)  # item 9
    accepted_until = _check_iat(iat, now, max_age_seconds, max_clock_skew_seconds)  # item 11
    if access_token is not None:
        _check_ath(claims.get("ath"), access_token)  # item 12, first half
    # Without an access token (token and PAR endpoints) an "ath" claim is ignored: section 4.2
    # requires it only alongside a presented token, no check of section 4.3 reads it there,
    # and htm/htu already confine the proof to this endpoint. The second half of item 12
    # (cnf.jkt equals DPoPProof.jkt) belongs to whoever validated the access token.

    nonce = claims.get("nonce")
    if nonce is not None and (not isinstance(nonce, str) or not nonce):
        raise DPoPProofError("DPoP proof nonce must be a non-empty string (RFC 9449 section 8.1)")
    if nonce_check is not None:
        # Item 10, last: a proof failing any other check earns invalid_dpop_proof, not a nonce.
        nonce_check(nonce)

    return DPoPProof(
        jkt=jkt,
        jti=jti,
        iat=math.floor(iat),
        htm=htm,
        htu=htu,
        nonce=nonce,
        public_jwk=dict(public),
        alg=alg,
        accepted_until=accepted_until,
    )


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of ``jwk``, base64url: the ``jkt`` of RFC 9449
    section 6.1 and the ``dpop_jkt`` of section 10. Raises ValueError for an invalid JWK."""
    try:
        key = JWKRegistry.import_key(jwk)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a valid JWK: {exc}") from exc
    # RFC 7638 section 3.2: only the required members count, so "kid", "use" and the
    # private members change nothing.
    return key.thumbprint()


def access_token_hash(token: str) -> str:
    """The ``ath`` value for ``token`` (RFC 9449 section 4.2): base64url of the SHA-256 hash
    of its ASCII encoding. Raises ValueError when the token is not ASCII."""
    try:
        data = token.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError("an access token is ASCII text (RFC 6750 section 2.1)") from exc
    return _b64url(hashlib.sha256(data).digest())


# Pure and called twice per proof (the claim and the request URL, which repeat from request
# to request): remembered. Only URLs that normalized are cached (a ValueError is not).
@lru_cache(maxsize=4096)
def normalize_htu(url: str) -> str:
    """``url`` as RFC 9449 section 4.3 compares it: without query and fragment (item 9), after
    syntax-based and scheme-based normalization (RFC 3986 sections 6.2.2 and 6.2.3).

    That is: scheme and host lowercased, the default port dropped, percent-encodings of
    unreserved characters decoded and the others' hex digits uppercased, dot segments
    removed, an empty path made "/". Raises ValueError for anything but an absolute http or
    https URL with a host and no userinfo.
    """
    # urlsplit quietly deletes tabs and newlines and strips spaces, which would let a
    # differently spelled URL compare equal: refuse them instead.
    if not url.isascii() or any(ch <= " " or ch == "\x7f" for ch in url):
        raise ValueError("a URL holds no whitespace, control or non-ASCII characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{url!r} is not an absolute http or https URL")
    if "@" in parts.netloc:
        raise ValueError(f"{url!r} carries userinfo")
    host = parts.hostname  # lowercased by urlsplit
    if not host:
        raise ValueError(f"{url!r} has no host")
    port = parts.port  # raises ValueError when not a number in 0-65535
    if ":" in host:  # an IPv6 literal, which urlsplit returned without its brackets
        host = f"[{host}]"
    authority = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = _remove_dot_segments(_normalize_percent_encoding(parts.path)) or "/"
    return f"{scheme}://{authority}{path}"


# -- checks -----------------------------------------------------------------------------


def _decode(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Item 2: one well-formed JWS in compact serialization whose header and payload are
    JSON objects."""
    if not isinstance(proof, str):
        raise DPoPProofError("the DPoP header must be text")
    if len(proof) > MAX_PROOF_LENGTH:
        raise DPoPProofError(
            f"DPoP proof is {len(proof)} characters; the limit is {MAX_PROOF_LENGTH}"
        )
    if not _COMPACT_JWS.fullmatch(proof):
        if "," in proof:
            raise DPoPProofError(
                "the DPoP header holds a list of values; RFC 9449 section 4.3 allows one proof"
            )
        raise DPoPProofError(
            "DPoP proof is not a JWS in compact serialization: three base64url parts "
            "joined by '.' (RFC 7515 section 7.1)"
        )
    header_segment, payload_segment, _ = proof.split(".")
    return (
        json_object_segment(header_segment, "DPoP proof header", DPoPProofError),
        json_object_segment(payload_segment, "DPoP proof claims", DPoPProofError),
    )


def _check_header(header: dict[str, Any]) -> str:
    # Item 4 and section 11.5: a JWT minted for anything else never passes as a proof.
    if header.get("typ") != DPOP_JWT_TYPE:
        raise DPoPProofError(f'DPoP proof header "typ" must be "{DPOP_JWT_TYPE}"')
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise DPoPProofError('DPoP proof header lacks "alg"')
    # Item 5 and section 11.6.
    if alg == "none" or alg.startswith("HS"):
        raise DPoPProofError(
            f"DPoP proof alg {alg!r} is not an asymmetric signature algorithm "
            "(RFC 9449 section 11.6)"
        )
    if alg not in SUPPORTED_ALGS:
        raise DPoPProofError(
            f"DPoP proof alg {alg!r} is not supported; use one of {', '.join(SUPPORTED_ALGS)}"
        )
    # No JWS extension is needed to read a proof, so a "crit" one is not understood
    # (RFC 7515 section 4.1.11); "b64" (RFC 7797) would change what the signature covers.
    if "crit" in header or "b64" in header:
        raise DPoPProofError('DPoP proof header must not use "crit" or "b64" extensions')
    if "jwk" not in header:
        raise DPoPProofError('DPoP proof header lacks the "jwk" public key (RFC 9449 section 4.2)')
    return alg


def _public_key(jwk: Any) -> tuple[Key, str, Mapping[str, Any]]:
    """Item 7: the header's ``jwk`` is an asymmetric public key and nothing more. Returns
    the key, its RFC 7638 thumbprint and its public JWK."""
    if not isinstance(jwk, dict):
        raise DPoPProofError('DPoP proof header "jwk" must be a JSON object')
    if jwk.get("kty") not in _ASYMMETRIC_KEY_TYPES:
        raise DPoPProofError(
            'DPoP proof "jwk" must be an asymmetric public key (kty "EC", "RSA" or "OKP")'
        )
    private = sorted(_PRIVATE_JWK_MEMBERS & set(jwk))
    if private:
        raise DPoPProofError(
            f'DPoP proof "jwk" contains private key members {", ".join(private)}: '
            "send only the public key (RFC 9449 section 4.3)"
        )
    if jwk["kty"] == "RSA":
        # Checked before joserfc sees the key: it would only warn about a short one.
        modulus = jwk.get("n")
        bits = _b64url_int_bits(modulus) if isinstance(modulus, str) else 0
        if bits < _MIN_RSA_BITS:
            raise DPoPProofError(
                f"DPoP proof RSA key must have at least {_MIN_RSA_BITS} bits "
                "(RFC 7518 section 3.3)"
            )
    try:
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
        return _imported_key(canonical)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise DPoPProofError(f'DPoP proof "jwk" is not a valid public key: {exc}') from exc


@lru_cache(maxsize=4096)
def _imported_key(canonical_jwk: str) -> tuple[Key, str, Mapping[str, Any]]:
    """A client signs every proof with the same key: importing it (a curve point check) and
    hashing its thumbprint once per key rather than once per request saves a good part of a
    Resource Server's per-request cost. Only keys that imported cleanly are remembered (an
    exception is never cached), keyed by their canonical JSON."""
    key = JWKRegistry.import_key(json.loads(canonical_jwk))
    if key.is_private:  # the member check of _public_key already makes this impossible
        raise ValueError("a DPoP proof key must be a public key")
    return key, key.thumbprint(), MappingProxyType(dict(key.as_dict(private=False)))


def _check_signature(proof: str, key: Key, alg: str) -> None:
    """Item 6: the signature verifies with the header's own key (joserfc does the JWS)."""
    try:
        compact = jws.extract_compact(proof.encode("ascii"), registry=_REGISTRY)
        valid = jws.validate_compact(compact, key, registry=_REGISTRY)
    except (JoseError, ValueError, TypeError) as exc:
        # e.g. an ES256 proof carrying an RSA or P-384 key.
        raise DPoPProofError(f'DPoP proof "jwk" cannot verify an {alg} signature: {exc}') from exc
    if not valid:
        raise DPoPProofError('DPoP proof signature does not verify with its "jwk"')


def _required_claims(claims: dict[str, Any]) -> tuple[str, str, str, float]:
    """Item 3: ``jti``, ``htm``, ``htu`` and ``iat`` are present and well-typed
    (RFC 9449 section 4.2)."""
    for name in ("jti", "htm", "htu", "iat"):
        if name not in claims:
            raise DPoPProofError(
                f'DPoP proof lacks the required "{name}" claim (RFC 9449 section 4.2)'
            )
    jti, htm, htu, iat = claims["jti"], claims["htm"], claims["htu"], claims["iat"]
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise DPoPProofError(
            f'DPoP proof "jti" must be a string of 1 to {MAX_JTI_LENGTH} characters'
        )
    if not isinstance(htm, str) or not htm:
        raise DPoPProofError('DPoP proof "htm" must be the HTTP method, as a string')
    if not isinstance(htu, str) or not htu:
        raise DPoPProofError('DPoP proof "htu" must be the request URL, as a string')
    # RFC 7519 section 2: a NumericDate is any JSON number (a bool is not one).
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
        raise DPoPProofError('DPoP proof "iat" must be a NumericDate (seconds since the epoch)')
    return jti, htm, htu, float(iat)


def _check_htu(htu: str, url: str) -> None:
    try:
        claimed = normalize_htu(htu)
    except ValueError as exc:
        raise DPoPProofError(f'DPoP proof "htu" is not an http(s) URL: {exc}') from exc
    try:
        expected = normalize_htu(url)
    except ValueError as exc:
        # The request URL comes partly from the request (Host header): a 400, never a 500.
        raise DPoPProofError(f"the request URL cannot be compared with htu: {exc}") from exc
    if claimed != expected:
        raise DPoPProofError(f"DPoP proof htu {htu!r} does not match the request URL {expected}")


def _check_iat(iat: float, now: datetime, max_age: int, skew: int) -> datetime:
    """Item 11 and section 11.1: not older than ``max_age``, not beyond ``skew`` ahead."""
    age = now.timestamp() - iat
    if age < -skew:
        raise DPoPProofError(
            f"DPoP proof iat is {-age:.0f} s in the future; this server accepts clocks "
            f"up to {skew} s ahead (RFC 9449 section 11.1)"
        )
    if age > max_age:
        raise DPoPProofError(
            f"DPoP proof was issued {age:.0f} s ago; proofs are accepted for {max_age} s "
            "(RFC 9449 section 11.1): sign a new one for each request"
        )
    return datetime.fromtimestamp(iat + max_age, tz=UTC)


def _check_ath(ath: Any, access_token: str) -> None:
    if ath is None:
        raise DPoPProofError(
            'DPoP proof lacks "ath": a proof sent with an access token carries its hash '
            "(RFC 9449 section 4.2)"
        )
    try:
        expected = access_token_hash(access_token)
    except ValueError as exc:
        raise DPoPProofError(str(exc)) from exc
    if not isinstance(ath, str) or not hmac.compare_digest(
        ath.encode("utf-8"), expected.encode("ascii")
    ):
        raise DPoPProofError('DPoP proof "ath" does not match the access token it accompanies')


# -- encoding helpers ------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_int_bits(value: str) -> int:
    try:
        return int.from_bytes(b64url_decode(value), "big").bit_length()
    except (binascii.Error, ValueError):
        return 0


def _normalize_percent_encoding(path: str) -> str:
    """RFC 3986 sections 6.2.2.1 and 6.2.2.2: ``%7e`` -> ``~``, ``%2f`` -> ``%2F``."""

    def normalize(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _PERCENT_ENCODED.sub(normalize, path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, step by step as the RFC writes it."""
    output: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith(("./", "/./")):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = path[3:]
            if output:
                output.pop()
        elif path == "/..":
            path = "/"
            if output:
                output.pop()
        elif path in (".", ".."):
            path = ""
        else:
            end = path.find("/", 1)
            if end == -1:
                end = len(path)
            output.append(path[:end])
            path = path[end:]
    return "".join(output)

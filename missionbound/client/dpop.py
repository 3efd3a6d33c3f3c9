"""DPoP proofs made by a client (RFC 9449 section 4): the counterpart of
:func:`missionbound.protocol.dpop.verify_dpop_proof`.

A proof is a JWS of type ``dpop+jwt`` signed with the client's private key, carrying its
public key in the header and, in its claims, the request it is made for (``htm``, ``htu``),
when (``iat``), a unique ``jti``, the server's ``nonce`` once it asked for one (section 8)
and, at a Resource Server, the hash of the access token it accompanies (``ath``, section
4.2). A new proof is made for every request: the server refuses a ``jti`` it saw before
(section 11.1).
"""

from __future__ import annotations

import json
import secrets
import time
import warnings
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from missionbound.protocol.dpop import DPOP_JWT_TYPE, SUPPORTED_ALGS, access_token_hash

# The algorithm a key signs with unless the caller names one. "EdDSA" rather than RFC 9864's
# "Ed25519" for Ed25519 keys: more servers know it (ours accepts both). RSA keys sign with
# PS256, the RSA algorithm RFC 9449's examples and FAPI 2.0 prefer over RS256.
_DEFAULT_ALG_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "Ed25519": "EdDSA"}
_RSA_DEFAULT_ALG = "PS256"
# 128 random bits, comfortably above the 96 RFC 9449 section 4.2 asks of a jti.
_JTI_BYTES = 16


def default_alg(key: Key) -> str:
    """The JWS algorithm ``key`` signs its proofs with by default; ValueError for a key no
    proof can be made with (a symmetric key, or a curve the servers do not accept)."""
    if isinstance(key, RSAKey):
        return _RSA_DEFAULT_ALG
    if isinstance(key, ECKey | OKPKey) and key.curve_name in _DEFAULT_ALG_BY_CURVE:
        return _DEFAULT_ALG_BY_CURVE[key.curve_name]
    raise ValueError(
        f"a DPoP key is an EC P-256/P-384, Ed25519 or RSA private key, not {key.key_type}"
        + (f" {key.curve_name}" if isinstance(key, ECKey | OKPKey) else ""))


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``, the port explicit: DPoP nonces are one server's
    (RFC 9449 section 8), so a client keeps them per origin."""
    parts = urlsplit(url)
    port = parts.port if parts.port is not None else {"http": 80, "https": 443}.get(
        parts.scheme)
    return f"{parts.scheme}://{parts.hostname}:{port}"


def proof_htu(url: str) -> str:
    """The ``htu`` for a request to ``url``: the URL without its query and fragment (RFC 9449
    section 4.2). The server normalizes before comparing, so the rest is sent as is."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def create_dpop_proof(
    key: Key,
    *,
    method: str,
    url: str,
    access_token: str | None = None,
    nonce: str | None = None,
    alg: str | None = None,
    issued_at: int | None = None,
) -> str:
    """A new DPoP proof of ``key`` for ``method`` ``url`` (query and fragment dropped).

    ``access_token`` adds its hash (``ath``: required at a Resource Server), ``nonce`` the
    server's nonce; ``alg`` defaults to :func:`default_alg`; ``issued_at`` (Unix seconds) to
    now. Raises ValueError for a public-only key, an algorithm servers do not accept for
    proofs, or a token that is not ASCII.
    """
    alg = alg or default_alg(key)
    if alg not in SUPPORTED_ALGS:
        raise ValueError(f"DPoP proofs are signed with one of {', '.join(SUPPORTED_ALGS)}, "
                         f"not {alg!r}")
    if not key.is_private:
        raise ValueError("a DPoP proof is signed with the private key")
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(_JTI_BYTES),
        "htm": method.upper(),
        "htu": proof_htu(url),
        "iat": int(time.time()) if issued_at is None else issued_at,
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    # as_dict(private=False): the header carries the public key only (section 4.2).
    header = {"typ": DPOP_JWT_TYPE, "alg": alg, "jwk": key.as_dict(private=False)}
    registry = JWSRegistry(algorithms=[alg])
    with warnings.catch_warnings():
        # joserfc warns on every "EdDSA" signature (deprecated by RFC 9864); using it is
        # deliberate, see _DEFAULT_ALG_BY_CURVE.
        warnings.simplefilter("ignore", SecurityWarning)
        return jws.serialize_compact(header, json.dumps(claims).encode(), key,
                                     registry=registry)

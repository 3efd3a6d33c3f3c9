"""Reading the header and payload segments of a compact JWS strictly (RFC 7515 sections 2,
5.2 and 7.1), for every JWS a recipient here checks by hand before its signature (DPoP
proofs, :mod:`missionbound.protocol.dpop`; SETs, :mod:`missionbound.protocol.secevent`).

A segment is base64url without padding (RFC 7515 section 2) holding a JSON object. A member
named twice is refused rather than read as its last value, as ``json`` would: two ``iss``
or two ``htu`` could mean one thing here and another to a different parser, and RFC 7515
section 5.2 allows refusing such a JWS outright. ``NaN`` and ``Infinity`` are not JSON and
are refused too. (Floats are JSON, so unlike :func:`missionbound.mission.canonical.parse_strict`
this admits them: ``iat`` may be a NumericDate with a fraction.)

Each caller raises its own error: :func:`json_object_segment` builds it with ``refuse``.
:class:`AllowListRegistry` is the signature side every such verifier shares.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any

from joserfc.errors import UnsupportedAlgorithmError
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry


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


__all__ = ["b64url_decode", "json_object_segment"]


class AllowListRegistry(JWSRegistry):
    """joserfc's JWS registry narrowed to an allow-list of algorithms (never ``none``, never
    an HMAC a public key could be fed to) and sized for one kind of JWS.

    ``strict_check_header`` is off: RFC 7515 lets a header carry parameters we do not read."""

    def __init__(self, algorithms: Sequence[str], *, max_length: int) -> None:
        super().__init__(algorithms=list(algorithms), strict_check_header=False)
        self.permitted = frozenset(algorithms)
        self.max_header_length = max_length
        self.max_payload_length = max_length

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in self.permitted:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        # joserfc warns on every use of "EdDSA" (RFC 9864 prefers "Ed25519"); our ASes sign
        # with it on purpose (issuer/keys.py), so skip the per-token warning.
        return self.algorithms[name]

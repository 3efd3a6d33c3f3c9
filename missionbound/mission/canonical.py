"""Strict JSON intake, RFC 8785 canonical form and ``sha-256:`` digests.

Everything the Mission commits to (intents, authority sets, disclosures, audit records) goes
through here: parse strictly so that two readers can never disagree about what was sent, then
hash the JCS bytes so that two writers can never disagree about what was committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from typing import Any

import rfc8785

from missionbound.mission.errors import InvalidRequest

DIGEST_PREFIX = "sha-256:"
DEFAULT_MAX_DEPTH = 16
# Nesting bound of canonicalize (far above anything parse_strict admits).
CANONICAL_MAX_DEPTH = 10_000

JSONValue = Any
"""A value made only of dict, list, str, int, bool and None (floats are never admitted)."""


class _Duplicate(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json's default hook silently keeps the last duplicate; two parsers could then read
    # two different intents from the same bytes (PROFILE.md section 3).
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(f"duplicate member name {key!r}")
        out[key] = value
    return out


def _reject_float(text: str) -> Any:
    raise InvalidRequest(
        f"number {text} is not an integer; decimals travel as strings (PROFILE.md section 3)"
    )


def _parse_int(text: str) -> int:
    # Refuse before int() sees it: a 5000-digit integer costs quadratic time and trips
    # Python's own digit limit with a ValueError; 2^53 has 16 digits.
    if len(text.lstrip("-")) > 16:
        raise InvalidRequest("integer outside the I-JSON range (RFC 7493 section 2.2)")
    return int(text)


def _reject_constant(text: str) -> Any:
    raise InvalidRequest(f"non-finite number {text} is not JSON")


# Any code point in the surrogate range: a Python str holds one only when it came from a
# lone escape (json.loads combines a valid pair into one astral character).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: str, where: str) -> None:
    # I-JSON (RFC 7493 section 2.1): no lone surrogates. json.loads happily decodes "\ud800".
    # ASCII text (almost all of it) cannot hold one; otherwise one regex scan in C finds the
    # first, as a per-character loop would.
    if value.isascii():
        return
    found = _SURROGATE.search(value)
    if found is not None:
        raise InvalidRequest(f"lone surrogate U+{ord(found.group()):04X} in {where}")


def _check_tree(value: Any, depth: int, max_depth: int, allow_floats: bool = False) -> None:
    if depth > max_depth:
        raise InvalidRequest(f"JSON nested deeper than {max_depth} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest("member names must be strings")
            _check_text(key, "a member name")
            _check_tree(item, depth + 1, max_depth, allow_floats)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_tree(item, depth + 1, max_depth, allow_floats)
    elif isinstance(value, str):
        _check_text(value, "a string")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise InvalidRequest("integer outside the I-JSON range (RFC 7493 section 2.2)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest("non-finite number is not JSON")
        if not allow_floats:
            raise InvalidRequest("floats are refused; decimals travel as strings")
    else:
        raise InvalidRequest(f"unsupported JSON value of type {type(value).__name__}")


def parse_strict(
    raw: str | bytes, *, max_size: int, what: str = "JSON", max_depth: int = DEFAULT_MAX_DEPTH,
    allow_floats: bool = False,
) -> JSONValue:
    """Parse ``raw`` as strict I-JSON or raise :class:`InvalidRequest`.

    Refused: more than ``max_size`` UTF-8 octets, invalid UTF-8, duplicate member names at any
    depth, any non-integer number (unless ``allow_floats``: a Resource Server reads API bodies
    that may carry measurements), ``NaN``/``Infinity``, lone surrogates, integers beyond 2^53,
    nesting deeper than ``max_depth``.
    """
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(f"{what} is not valid UTF-8 text") from exc
    else:
        data = raw
    if len(data) > max_size:
        raise InvalidRequest(f"{what} is {len(data)} octets; the limit is {max_size}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not valid UTF-8") from exc
    try:
        value = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_float=float if allow_floats else _reject_float,
            parse_int=_parse_int,
            parse_constant=_reject_constant,
        )
    except _Duplicate as exc:
        raise InvalidRequest(f"{what} has a {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequest(f"{what} is nested too deeply") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    _check_tree(value, 0, max_depth, allow_floats)
    return value


def check_canonicalizable(value: JSONValue) -> None:
    """Raise :class:`InvalidRequest` unless :func:`canonicalize` accepts ``value``: the same
    checks, without building the canonical bytes (for a caller that hashes it later and
    must refuse bad input first)."""
    _check_tree(value, 0, CANONICAL_MAX_DEPTH, allow_floats=True)


def canonicalize(value: JSONValue) -> bytes:
    """RFC 8785 (JCS) bytes of ``value``.

    Finite floats are serialized as JCS prescribes (tool arguments from foreign clients may carry
    them); what the Mission itself commits never holds one because :func:`parse_strict` refuses
    them at intake. Lone surrogates, non-finite numbers and integers beyond 2^53 are refused.
    """
    check_canonicalizable(value)
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"value cannot be canonicalized: {exc}") from exc


def digest_bytes(data: bytes) -> str:
    """``sha-256:`` + base64url without padding of SHA-256(data)."""
    raw = hashlib.sha256(data).digest()
    return DIGEST_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def digest_json(value: JSONValue) -> str:
    """Digest of the canonical form of ``value`` (``parameter_digest`` uses exactly this)."""
    return digest_bytes(canonicalize(value))

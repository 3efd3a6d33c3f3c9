"""The digests the runtime computes: ``parameter_digest`` (PROFILE.md section 12,
runtime-digest section 4.3), the per-entry digest evidence names an entry by (section 2.1)
and the digest of an evaluation request summary (what Decision Evidence commits to).

All are ``"sha-256:" + base64url_nopad(SHA-256(JCS(value)))`` through
:mod:`missionbound.mission.canonical`, so the issuer, the PDP and every tool runtime agree on
the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from missionbound.mission.anchors import anchor
from missionbound.mission.canonical import canonicalize, digest_bytes
from missionbound.mission.errors import InvalidRequest

AUTHORITY_ENTRY = "mission-authority-entry"
"""Envelope ``typ`` of one Authority Set entry's digest (runtime-digest section 2.1)."""


class DigestError(ValueError):
    """The value cannot be digested: a float, a lone surrogate, a non-string member name,
    an integer outside I-JSON, or not a JSON object at all."""


def _canonical_bytes(value: Any, what: str) -> bytes:
    try:
        return canonicalize(value)
    except InvalidRequest as exc:
        raise DigestError(f"{what}: {exc.description}") from None


def _reject_floats(value: Any) -> None:
    # Decimals travel as strings (runtime-digest 4.3 step 3): a float in tool arguments has
    # two readings (the sender's and ES6's), so the digest of one is not a commitment.
    if isinstance(value, float):
        raise DigestError("parameters hold a non-integer number; carry decimals as strings")
    if isinstance(value, Mapping):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _reject_floats(item)


def parameter_digest(arguments: Mapping[str, Any]) -> str:
    """``parameter_digest`` of a tool's arguments object exactly as it will run: no envelope,
    no ``typ``, no ``iss`` (runtime-digest section 4.3). Raises :class:`DigestError` on
    anything that is not a JSON object of I-JSON values without floats. Python dicts cannot
    hold duplicate members; raw JSON must be parsed strictly before it gets here."""
    if not isinstance(arguments, Mapping):
        raise DigestError("parameters must be a JSON object")
    _reject_floats(arguments)
    return digest_bytes(_canonical_bytes(dict(arguments), "parameters"))


def entry_digest(issuer: str, entry: Mapping[str, Any]) -> str:
    """The digest evidence uses to name one Authority Set entry: the section 5 anchor with
    ``typ`` ``mission-authority-entry`` and the Mission's origin as ``iss``."""
    try:
        return anchor(AUTHORITY_ENTRY, issuer, dict(entry))
    except InvalidRequest as exc:
        raise DigestError(f"authority entry: {exc.description}") from None


def evaluation_request_digest(summary: Mapping[str, Any]) -> str:
    """Digest of the summary of one evaluation request (subject, resource, action, the
    ``parameter_digest`` and the Mission reference, never raw parameters), so evidence
    commits to what was asked without storing it."""
    if not isinstance(summary, Mapping):
        raise DigestError("an evaluation request summary must be a JSON object")
    return digest_bytes(_canonical_bytes(dict(summary), "evaluation request summary"))

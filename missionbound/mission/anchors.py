"""The three integrity anchors of PROFILE.md section 5.

``"sha-256:" + base64url_nopad(SHA-256(JCS({"typ": T, "iss": <issuer>, "value": V})))``:
``typ`` separates domains (an intent digest can never pass as an authority digest) and
``iss`` binds the commitment to the issuing AS.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from missionbound.mission.canonical import DIGEST_PREFIX, JSONValue, digest_json
from missionbound.mission.errors import InvalidRequest

PROPOSAL = "mission-proposal"
CONSENT_DISCLOSURE = "mission-consent-disclosure"
AUTHORITY_SET = "mission-authority-set"


def anchor(typ: str, iss: str, value: JSONValue) -> str:
    """The anchor of ``value`` under ``typ`` for issuer ``iss``."""
    return digest_json({"typ": typ, "iss": iss, "value": value})


def verify_anchor(expected: str, typ: str, iss: str, value: JSONValue) -> bool:
    """True when ``expected`` commits to ``value``. An unknown algorithm prefix is an error,
    never a fallback (anti-downgrade)."""
    if not expected.startswith(DIGEST_PREFIX):
        algorithm = expected.split(":", 1)[0] if ":" in expected else expected[:16]
        raise InvalidRequest(f"unsupported digest algorithm {algorithm!r}; only sha-256")
    return hmac.compare_digest(expected, anchor(typ, iss, value))


def proposal_value(
    mission_intent: dict[str, Any], authorization_details: Sequence[Any] | None
) -> dict[str, Any]:
    """What was asked: the validated intent and the requested entries (``[]`` when none)."""
    return {
        "mission_intent": mission_intent,
        "authorization_details": list(authorization_details or []),
    }


def proposal_hash(
    iss: str, mission_intent: dict[str, Any], authorization_details: Sequence[Any] | None
) -> str:
    return anchor(PROPOSAL, iss, proposal_value(mission_intent, authorization_details))


def consent_rendering_hash(iss: str, disclosure: dict[str, Any]) -> str:
    return anchor(CONSENT_DISCLOSURE, iss, disclosure)


def authority_hash(iss: str, authority_set: Sequence[Any]) -> str:
    return anchor(AUTHORITY_SET, iss, list(authority_set))


@dataclass(frozen=True)
class Anchors:
    proposal_hash: str
    consent_rendering_hash: str
    authority_hash: str

    def as_dict(self) -> dict[str, str]:
        return {
            "proposal_hash": self.proposal_hash,
            "consent_rendering_hash": self.consent_rendering_hash,
            "authority_hash": self.authority_hash,
        }


def compute_anchors(
    iss: str,
    *,
    mission_intent: dict[str, Any],
    authorization_details_requested: Sequence[Any] | None,
    consent_disclosure: dict[str, Any],
    authority_set: Sequence[Any],
) -> Anchors:
    return Anchors(
        proposal_hash=proposal_hash(iss, mission_intent, authorization_details_requested),
        consent_rendering_hash=consent_rendering_hash(iss, consent_disclosure),
        authority_hash=authority_hash(iss, authority_set),
    )


def find_anchor_mismatch(record: dict[str, Any]) -> str | None:
    """Recompute a stored Mission record's anchors; name the first that does not match.

    ``record`` is the JSON form of a Mission record (PROFILE.md section 7 members). A Mission
    still pending approval has no anchors yet and passes.
    """
    iss = record["origin"]
    checks = (
        ("proposal_hash", PROPOSAL,
         lambda: proposal_value(record["mission_intent"],
                                record.get("authorization_details_requested"))),
        ("consent_rendering_hash", CONSENT_DISCLOSURE, lambda: record["consent_disclosure"]),
        ("authority_hash", AUTHORITY_SET, lambda: record["authority_set"]),
    )
    for name, typ, value in checks:
        stored = record.get(name)
        if stored is None:
            continue
        if not isinstance(stored, str):
            return name
        try:
            if not verify_anchor(stored, typ, iss, value()):
                return name
        except (InvalidRequest, KeyError, TypeError):
            return name
    return None

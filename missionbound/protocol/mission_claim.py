"""The ``mission`` object tokens carry (PROFILE.md section 8): ``{id, origin,
authority_hash}``, read the same way wherever a recipient finds it (an access token's
``mission`` claim, a Transaction Token's ``tctx.mission``). Other members are ignored:
recipients ignore what they do not understand (RFC 9068 section 2.2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from missionbound.mission.canonical import DIGEST_PREFIX
from missionbound.mission.record import MISSION_ID

MAX_ORIGIN_LENGTH = 1024
_AUTHORITY_HASH = re.compile(re.escape(DIGEST_PREFIX) + r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class MissionEvidence:
    """Which Mission a token is bound to. For a recipient it names the Mission (for logs,
    audit and a state check at the origin); the token's own authority stays in its
    ``authorization_details``."""

    id: str
    origin: str
    authority_hash: str


class InvalidMissionClaim(ValueError):
    """The object is not ``{id, origin, authority_hash}`` of the expected shapes; the
    message names the member at fault, under the name the caller gave the object."""


def parse_mission_claim(value: Any, where: str) -> MissionEvidence:
    """``value`` as a :class:`MissionEvidence`; ``where`` names it in messages
    (``"mission"``, ``"tctx.mission"``)."""
    if not isinstance(value, dict):
        raise InvalidMissionClaim(f'the "{where}" is not an object')
    mission_id, origin = value.get("id"), value.get("origin")
    authority_hash = value.get("authority_hash")
    if not isinstance(mission_id, str) or not MISSION_ID.fullmatch(mission_id):
        raise InvalidMissionClaim(f'the "{where}.id" is not a Mission id')
    if not isinstance(origin, str) or not 0 < len(origin) <= MAX_ORIGIN_LENGTH \
            or not origin.startswith(("https://", "http://")):
        raise InvalidMissionClaim(f'the "{where}.origin" is not an issuer identifier (a URL)')
    if not isinstance(authority_hash, str) or not _AUTHORITY_HASH.fullmatch(authority_hash):
        raise InvalidMissionClaim(f'the "{where}.authority_hash" is not a {DIGEST_PREFIX} '
                                  "digest")
    return MissionEvidence(id=mission_id, origin=origin, authority_hash=authority_hash)

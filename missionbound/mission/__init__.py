"""The Mission core: pure, framework-free, no I/O.

Everything else in missionbound depends on this package and never the reverse. Callers pass
the clock (``now``) and the deployment data (catalog, client ceilings) in.
"""

from missionbound.mission.anchors import Anchors, anchor, compute_anchors, verify_anchor
from missionbound.mission.authority import is_subset, parse_authorization_details
from missionbound.mission.canonical import canonicalize, digest_json, parse_strict
from missionbound.mission.catalog import ActionClass, Catalog, load_catalog
from missionbound.mission.consent import Party, build_consent_disclosure
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.derivation import ClientCeiling, Derivation, derive_authority
from missionbound.mission.errors import (
    ConcurrentModification,
    InvalidAuthorizationDetails,
    InvalidRequest,
    InvalidState,
    InvalidTarget,
    MissionError,
    TransitionForbidden,
)
from missionbound.mission.intent import MissionIntent, validate_intent
from missionbound.mission.lifecycle import (
    Event,
    LifecyclePolicy,
    Role,
    State,
    decide_transition,
    effective_state,
)
from missionbound.mission.record import MissionRecord, Principal, new_mission_id

__all__ = [
    "ActionClass", "Anchors", "Catalog", "ClientCeiling", "ConcurrentModification",
    "ConstraintRegistry", "Derivation", "Event", "InvalidAuthorizationDetails", "InvalidRequest",
    "InvalidState", "InvalidTarget", "LifecyclePolicy", "MissionError", "MissionIntent",
    "MissionRecord", "Party", "Principal", "Role", "State", "TransitionForbidden", "anchor",
    "build_consent_disclosure", "canonicalize", "compute_anchors", "decide_transition",
    "derive_authority", "digest_json", "effective_state", "is_subset", "load_catalog",
    "new_mission_id", "parse_authorization_details", "parse_strict", "validate_intent",
    "verify_anchor",
]

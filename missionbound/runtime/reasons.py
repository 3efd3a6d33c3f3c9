"""Deny reasons of the Mission runtime profile (runtime-digest section 3.8; ``capability_drift``
is the [CB] extension of section 5.8), and the order in which the PDP checks them (section
1.10; docs/decisions.md records the choice)."""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    VIEW_INCONSISTENT = "view_inconsistent"
    MISSION_INACTIVE = "mission_inactive"
    STALE_STATE = "stale_state"
    CREDENTIAL_INVALID = "credential_invalid"
    ACTOR_INVALID = "actor_invalid"
    UNSUPPORTED_AUTHORIZATION_TYPE = "unsupported_authorization_type"
    OUT_OF_AUTHORITY = "out_of_authority"
    CAPABILITY_DRIFT = "capability_drift"
    PARAMETER_VIOLATION = "parameter_violation"
    CONSTRAINT_UNSUPPORTED = "constraint_unsupported"
    RESOURCE_POLICY = "resource_policy"
    DUPLICATE_SUPPRESSED = "duplicate_suppressed"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    QUOTA_EXCEEDED = "quota_exceeded"


# When several checks would fail, the first in this order is the reason given. The order
# follows runtime-digest section 1.10: who and when before what, what before how much, and
# the stateful checks (idempotency, metering) last so an earlier deny never consumes.
PRECEDENCE: tuple[Reason, ...] = (
    Reason.VIEW_INCONSISTENT,
    Reason.MISSION_INACTIVE,
    Reason.STALE_STATE,
    Reason.CREDENTIAL_INVALID,
    Reason.ACTOR_INVALID,
    Reason.UNSUPPORTED_AUTHORIZATION_TYPE,
    Reason.OUT_OF_AUTHORITY,
    # The tool's definition digest recorded at approval is not the one the PEP sees now, or
    # the PEP names another capability (runtime-digest 1.10 step 9, 3.4 item 8, 5.8): after
    # authority (a tool the Mission never granted is out_of_authority, drifted or not),
    # before anything reads the parameters, whose schema the definition is.
    Reason.CAPABILITY_DRIFT,
    # parameter_digest missing, malformed or not the parameters' digest. The constraints of
    # the granting entries come next, as one check: if no entry passes, the reason is
    # constraint_unsupported when any entry failed on a key the PDP cannot evaluate, else
    # parameter_violation (runtime-digest 1.10 step 12; docs/runtime.md).
    Reason.PARAMETER_VIOLATION,
    Reason.CONSTRAINT_UNSUPPORTED,
    Reason.RESOURCE_POLICY,
    Reason.DUPLICATE_SUPPRESSED,
    Reason.IDEMPOTENCY_CONFLICT,
    Reason.QUOTA_EXCEEDED,
)

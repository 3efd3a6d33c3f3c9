"""The audit spine (PROFILE.md section 15): append hash-chained records, verify the chain.

``append(session, ...)`` writes one record in the caller's transaction;
``verify(engine_or_session)`` recomputes everything and names the first break.
"""

from missionbound.audit.log import append, compute_record_hash, record_body
from missionbound.audit.verify import VerifyReport, verify
from missionbound.store.models import AuditRecord

__all__ = ["AuditRecord", "VerifyReport", "append", "compute_record_hash", "record_body", "verify"]

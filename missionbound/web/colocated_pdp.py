"""The app's own Mission PDP, asked in process by an enforcement point the app itself hosts
(the demo MCP gateway at ``/demo/mcp``).

:class:`CoLocatedPdp` is what :class:`~missionbound.enforce.rs.PdpClient` is over HTTP, minus
the loopback hop: the same request checks (the caller's audiences, the AuthZEN parsing), the
same :class:`~missionbound.runtime.pdp.MissionPDP` transaction with its Decision Evidence,
the same execution intake with its Execution Evidence, as the PEP credential ``caller``. A
gateway run as its own process (``missionbound gateway``) asks over HTTP instead.

Errors come back as the HTTP client's would: a request the PDP refuses (4xx there) or a
failure (5xx there) is :class:`~missionbound.enforce.rs.PdpUnavailable`, so the PEP fails
closed (``pdp_unreachable``); a report the intake refuses is
:class:`~missionbound.enforce.rs.pdp_client.ReportFailed`, retryable only when the intake
failed rather than refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from missionbound.enforce.rs.pdp_client import PdpUnavailable, ReportFailed
from missionbound.runtime.errors import AuthZenError
from missionbound.runtime.execution import ExecutionIntake, parse_report
from missionbound.runtime.pdp import MissionPDP, PepCaller
from missionbound.web.authzen import check_audience

log = structlog.get_logger("missionbound.web.colocated_pdp")


class CoLocatedPdp:
    """The Mission PDP ``pdp`` and execution ``intake`` of this app, for the PEP ``caller``
    (a client with the audiences it speaks for, as HTTP Basic would have authenticated it).
    Blocking, like the HTTP client: call it from worker threads."""

    endpoint = "the co-located Mission PDP"
    executions_endpoint = "the co-located execution intake"

    def __init__(self, pdp: MissionPDP, intake: ExecutionIntake, caller: PepCaller, *,
                 clock: Callable[[], datetime]) -> None:
        self._pdp = pdp
        self._intake = intake
        self._caller = caller
        self._clock = clock

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        body = dict(request)
        try:
            check_audience(body, self._caller)
            return self._pdp.evaluate(body, self._caller)
        except AuthZenError as refused:
            raise PdpUnavailable(f"the Mission PDP refused the request: {refused}") from None
        except Exception as exc:
            # The store, the signing key, a bug: what HTTP would answer 500 for. No verdict.
            log.error("colocated_pdp_failed", detail=f"{type(exc).__name__}: {exc}"[:300])
            raise PdpUnavailable("the Mission PDP failed") from None

    def report(self, *, evaluation_id: str, outcome: str, error: str | None = None,
               effective_parameter_digest: str | None = None,
               measured_duration_seconds: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"evaluation_id": evaluation_id, "outcome": outcome}
        for name, value in (("error", error),
                            ("effective_parameter_digest", effective_parameter_digest),
                            ("measured_duration_seconds", measured_duration_seconds)):
            if value is not None:
                body[name] = value
        try:
            reported = self._intake.submit(parse_report(body), self._caller,
                                           now=self._clock())
        except AuthZenError as refused:
            raise ReportFailed(f"the execution intake refused the report: {refused}",
                               retryable=False) from None
        except Exception as exc:
            # What HTTP would answer 500 for: maybe lost, so sent once more.
            raise ReportFailed(f"the execution intake failed: {type(exc).__name__}",
                               retryable=True) from None
        return reported.summary()


__all__ = ["CoLocatedPdp"]

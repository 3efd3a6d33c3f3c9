"""RS-D at the Resource Server (PROFILE.md section 2; step 6 of
:meth:`MissionGuard.authorize <missionbound.enforce.rs.guard.MissionGuard.authorize>`).

Before a consequential route runs, the PDP is asked for an AuthZEN evaluation of the action
with the parameters the route will act on, and a permit's conditions are checked
(:mod:`missionbound.enforce.rs.pdp_client`). The outcome is reported back to the PDP:
``suppressed`` here when the permit is refused, ``completed``/``failed`` once the route
answered (:meth:`PdpGate.report_outcome`). Both calls run in the guard's worker threads.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import partial

import anyio
import anyio.to_thread
import structlog
from starlette.requests import Request

from missionbound.enforce.rs.context import MissionContext
from missionbound.enforce.rs.pdp_client import (
    PdpClient,
    PdpDecision,
    PdpUnavailable,
    PermitSuppressed,
    ReportFailed,
    evaluation_request,
    judge,
    parameters_of,
    unreachable,
)
from missionbound.enforce.rs.request import Extractor, RequestFacts
from missionbound.protocol.access_tokens import AccessToken

log = structlog.get_logger("missionbound.enforce.rs")

# An execution report the PDP did not take is sent once more when it may have been lost on
# the way (no answer, 5xx), then logged (decision M146): the answer already decided stands.
REPORT_ATTEMPTS = 2


async def send_report(send: Callable[[], object], threads: anyio.CapacityLimiter) -> str | None:
    """Run ``send`` (a blocking report to the PDP's execution intake) in a worker thread,
    once more when :class:`ReportFailed` says the report may have been lost. None when it
    was taken, else what went wrong. Never raises: a report must never change the answer
    already decided."""
    detail = ""
    for attempt in range(1, REPORT_ATTEMPTS + 1):
        try:
            await anyio.to_thread.run_sync(send, limiter=threads)
        except ReportFailed as exc:
            detail = str(exc)
            if exc.retryable and attempt < REPORT_ATTEMPTS:
                continue
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
        else:
            return None
        return detail
    return detail


class PdpGate:
    """The PDP's say over the consequential routes of one resource: its permit before the
    route runs, and the execution report after."""

    def __init__(self, *, pdp: PdpClient, resource: str, threads: anyio.CapacityLimiter,
                 clock: Callable[[], datetime]) -> None:
        self.pdp = pdp
        self.resource = resource
        self._threads = threads
        self._clock = clock

    async def ask(self, request: Request, token: AccessToken, action: str,
                  facts: RequestFacts, parameters: Extractor) -> PdpDecision:
        """RS-D (module pdp_client): the PDP's permit for the parameters the route will act
        on, its conditions checked; raises the refusal otherwise."""
        pdp = self.pdp
        values, digest = parameters_of(parameters, facts)
        body = evaluation_request(token=token, audience=self.resource, action=action,
                                  method=request.method, path=request.url.path,
                                  parameters=values, parameter_digest=digest)
        try:
            answer = await anyio.to_thread.run_sync(partial(pdp.evaluate, body),
                                                    limiter=self._threads)
            # The clock is read again: the permit must still hold when the route starts.
            return judge(answer, parameters=values, parameter_digest=digest, now=self._clock())
        except PdpUnavailable as exc:
            raise unreachable(exc, pdp.endpoint) from None
        except PermitSuppressed as suppressed:
            # runtime-digest 4.5: a post-decision refusal is Execution Evidence
            # "suppressed", and it gives back what the permit reserved (section 7.4).
            await self._report(token.mission.id, suppressed.evaluation_id or "", "suppressed",
                               error=suppressed.error, effective_parameter_digest=digest)
            raise

    async def report_outcome(self, context: MissionContext, status: int | None) -> None:
        """Report how the route ran under ``context``'s permit: ``completed`` for a
        2xx/3xx answer, ``failed`` for a 4xx/5xx or no answer (``status`` None: the route
        raised). Nothing for a context without a permit. Never raises: a report the PDP
        did not take is logged with the Mission and ``evaluation_id``."""
        decision = context.decision
        if decision is None or not decision.conditions:
            # A permit without conditions is the PDP's answer for an action it classes
            # non-consequential: no Decision Evidence, nothing reserved, nothing to report
            # (runtime-digest 3.5: every consequential permit carries conditions).
            return
        outcome = "completed" if status is not None and 200 <= status < 400 else "failed"
        await self._report(context.mission.id, decision.evaluation_id, outcome,
                           effective_parameter_digest=decision.parameter_digest,
                           status=status)

    async def _report(self, mission_id: str, evaluation_id: str, outcome: str, *,
                      error: str | None = None, effective_parameter_digest: str | None = None,
                      status: int | None = None) -> None:
        pdp = self.pdp
        if not evaluation_id:
            return
        detail = await send_report(
            partial(pdp.report, evaluation_id=evaluation_id, outcome=outcome, error=error,
                    effective_parameter_digest=effective_parameter_digest), self._threads)
        if detail is None:
            log.info("rs_execution_reported", resource=self.resource, mission=mission_id,
                     evaluation_id=evaluation_id, outcome=outcome, error=error, status=status)
            return
        log.error("rs_execution_unreported", resource=self.resource, mission=mission_id,
                  evaluation_id=evaluation_id, outcome=outcome, error=error, status=status,
                  pdp=pdp.executions_endpoint, detail=detail[:300])


__all__ = ["REPORT_ATTEMPTS", "PdpGate", "send_report"]

"""The gateway's metrics in the Prometheus text exposition format (version 0.0.4), kept in
this process (each replica exposes its own; the scraper sums them):

- ``missionbound_mcp_tool_calls_total{tool,decision,reason}``: every ``tools/call`` the
  gateway answered. ``decision`` is ``permit`` (forwarded upstream), ``deny`` (the PDP said
  no), ``refused`` (the gateway refused on its own: invalid arguments, a permit it would not
  act on, the PDP unreachable) or ``error`` (permitted, and the upstream failed); ``reason``
  the refusal's reason, empty for a permit.
- ``missionbound_mcp_tool_call_seconds{tool,decision}``: a histogram of the time from the
  request reaching the PEP to its answer, upstream included.

The ``tool`` label is the name the agent sent, cut to 64 characters: a client calling many
made-up names grows the label set, so it is bounded (:data:`MAX_TOOL_LABELS`; beyond it the
name is counted as ``_other``).

The exposition itself (counters, histograms, escaping) is :mod:`missionbound.protocol.prometheus`,
shared with the issuer's ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from missionbound.protocol.prometheus import (
    CONTENT_TYPE,
    DEFAULT_BUCKETS,
    BoundedLabel,
    Counter,
    Histogram,
    render,
)

CALLS: Final = "missionbound_mcp_tool_calls_total"
SECONDS: Final = "missionbound_mcp_tool_call_seconds"
MAX_TOOL_LABELS: Final = 1000
OTHER_TOOL: Final = "_other"
_MAX_LABEL: Final = 64


class GatewayMetrics:
    """Counters and a latency histogram; thread-safe."""

    def __init__(self, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.calls = Counter(CALLS, "MCP tools/call requests answered by the gateway.",
                             ("tool", "decision", "reason"))
        self.seconds = Histogram(SECONDS, "Time to answer an MCP tools/call, upstream included.",
                                 ("tool", "decision"), buckets=buckets)
        self.buckets = self.seconds.buckets
        self._tool_label = BoundedLabel(MAX_TOOL_LABELS, other=OTHER_TOOL,
                                        max_length=_MAX_LABEL)

    def record(self, tool: str, decision: str, reason: str | None, seconds: float) -> None:
        tool = self._tool_label(tool)
        self.calls.inc(tool, decision, reason or "")
        self.seconds.observe(seconds, tool, decision)

    def count(self, tool: str, decision: str, reason: str | None = None) -> int:
        """How many calls of ``tool`` ended in ``decision`` (with ``reason``, when given)."""
        return sum(n for (t, d, r), n in self.calls.samples().items()
                   if t == tool and d == decision and (reason is None or r == reason))

    def render(self) -> str:
        """The exposition text."""
        return render((self.calls, self.seconds))


__all__ = ["CALLS", "CONTENT_TYPE", "SECONDS", "GatewayMetrics"]

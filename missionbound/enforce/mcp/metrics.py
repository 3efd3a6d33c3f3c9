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
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

CALLS: Final = "missionbound_mcp_tool_calls_total"
SECONDS: Final = "missionbound_mcp_tool_call_seconds"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0)
MAX_TOOL_LABELS: Final = 1000
OTHER_TOOL: Final = "_other"
_MAX_LABEL: Final = 64


class GatewayMetrics:
    """Counters and a latency histogram; thread-safe."""

    def __init__(self, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("buckets must be increasing")
        self.buckets = tuple(buckets)
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str, str], int] = {}
        # (tool, decision) -> per-bucket counts (non-cumulative), sum, count
        self._latency: dict[tuple[str, str], tuple[list[int], float, int]] = {}
        self._tools: set[str] = set()

    def record(self, tool: str, decision: str, reason: str | None, seconds: float) -> None:
        with self._lock:
            tool = self._tool_label(tool)
            key = (tool, decision, reason or "")
            self._calls[key] = self._calls.get(key, 0) + 1
            counts, total, count = self._latency.get((tool, decision),
                                                     ([0] * (len(self.buckets) + 1), 0.0, 0))
            counts[bisect_left(self.buckets, seconds)] += 1
            self._latency[(tool, decision)] = (counts, total + seconds, count + 1)

    def count(self, tool: str, decision: str, reason: str | None = None) -> int:
        """How many calls of ``tool`` ended in ``decision`` (with ``reason``, when given)."""
        with self._lock:
            return sum(n for (t, d, r), n in self._calls.items()
                       if t == tool and d == decision and (reason is None or r == reason))

    def render(self) -> str:
        """The exposition text."""
        lines = [f"# HELP {CALLS} MCP tools/call requests answered by the gateway.",
                 f"# TYPE {CALLS} counter"]
        with self._lock:
            for (tool, decision, reason), n in sorted(self._calls.items()):
                lines.append(f"{CALLS}{{tool={_quote(tool)},decision={_quote(decision)},"
                             f"reason={_quote(reason)}}} {n}")
            lines += [f"# HELP {SECONDS} Time to answer an MCP tools/call, upstream included.",
                      f"# TYPE {SECONDS} histogram"]
            for (tool, decision), (counts, total, count) in sorted(self._latency.items()):
                labels = f"tool={_quote(tool)},decision={_quote(decision)}"
                running = 0
                for bound, n in zip(self.buckets, counts, strict=False):
                    running += n
                    lines.append(f"{SECONDS}_bucket{{{labels},le=\"{bound:g}\"}} {running}")
                lines.append(f"{SECONDS}_bucket{{{labels},le=\"+Inf\"}} {count}")
                lines.append(f"{SECONDS}_sum{{{labels}}} {total:.6f}")
                lines.append(f"{SECONDS}_count{{{labels}}} {count}")
        return "\n".join(lines) + "\n"

    def _tool_label(self, tool: str) -> str:
        tool = tool[:_MAX_LABEL]
        if tool in self._tools:
            return tool
        if len(self._tools) >= MAX_TOOL_LABELS:
            return OTHER_TOOL
        self._tools.add(tool)
        return tool


def _quote(value: str) -> str:
    """A label value: backslash, double quote and line feed escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


__all__ = ["CALLS", "CONTENT_TYPE", "SECONDS", "GatewayMetrics"]

"""The Prometheus text exposition format, version 0.0.4: counters and histograms kept in this
process, with the label sets bounded by the code that records them.

Shared by every exporter of the project (the MCP gateway, enforce/mcp/metrics.py; the
issuer's ``/metrics``, web/metrics.py), which is why it lives in ``protocol/`` and imports
only the standard library: an enforcement point must not import the Authorization Server.

Recording is on the request path, so it stays small: one uncontended lock, one dict lookup
and, for a histogram, one ``bisect``. Rendering (a scrape, rare) sorts and formats.

A label value that comes from a caller (a tool name, a route) must be bounded before it
becomes a label, or a client inventing names grows the exposition without limit:
:class:`BoundedLabel` keeps the first values it sees and counts the rest as one.

Format reference: https://prometheus.io/docs/instrumenting/exposition_formats/ ("Text-based
format"): ``# HELP`` escapes backslash and line feed; label values escape backslash, double
quote and line feed; a histogram is ``_bucket`` series with cumulative counts by ``le``
(ending with ``+Inf``), then ``_sum`` and ``_count``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Request latencies in seconds, from 1 ms to 10 s.
DEFAULT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0)
OTHER: Final = "_other"


def quote_label_value(value: str) -> str:
    """A label value as written between the braces: double-quoted, with backslash, double
    quote and line feed escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def escape_help(text: str) -> str:
    """A ``# HELP`` docstring: backslash and line feed escaped (quotes are not)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class BoundedLabel:
    """The values one label may take: each cut to ``max_length`` characters, the first
    ``limit`` distinct ones kept, every later new one counted as ``other``. Thread-safe; a
    value already kept is answered without the lock."""

    def __init__(self, limit: int, *, other: str = OTHER, max_length: int = 64) -> None:
        if limit < 1 or max_length < 1:
            raise ValueError("limit and max_length must be positive")
        self.limit = limit
        self.other = other
        self.max_length = max_length
        self._lock = threading.Lock()
        self._kept: set[str] = set()

    def __call__(self, value: str) -> str:
        value = value[:self.max_length]
        if value in self._kept:
            return value
        with self._lock:
            if value in self._kept:
                return value
            if len(self._kept) >= self.limit:
                return self.other
            self._kept.add(value)
            return value


class _Family:
    """A metric family: its name, help text, type and label names."""

    kind: str = "untyped"

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.documentation)}",
                f"# TYPE {self.name} {self.kind}"]

    def _label_text(self, values: tuple[str, ...]) -> str:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {len(values)} values")
        return ",".join(f"{name}={quote_label_value(value)}"
                        for name, value in zip(self.labels, values, strict=True))


class Counter(_Family):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, labels)
        self._values: dict[tuple[str, ...], int] = {}

    def inc(self, *values: str, amount: int = 1) -> None:
        """Add ``amount`` to the series of these label values (in the order of ``labels``;
        already bounded by the caller)."""
        with self._lock:
            self._values[values] = self._values.get(values, 0) + amount

    def samples(self) -> dict[tuple[str, ...], int]:
        """A copy of every series: label values -> count."""
        with self._lock:
            return dict(self._values)

    def value(self, *values: str) -> int:
        """The count of one series (0 when it was never incremented)."""
        with self._lock:
            return self._values.get(values, 0)

    def render_lines(self) -> list[str]:
        lines = self._header()
        for values, count in sorted(self.samples().items()):
            lines.append(f"{self.name}{_braces(self._label_text(values))} {count}")
        return lines


class _Observations:
    """One histogram series: counts per bucket (not cumulative; the last is +Inf), sum and
    count."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.total = 0.0
        self.count = 0


class Histogram(_Family):
    """Observations (seconds, say) counted in fixed buckets per label set."""

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labels: Sequence[str], *,
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError("buckets must be increasing")
        super().__init__(name, documentation, labels)
        self.buckets = tuple(buckets)
        self._series: dict[tuple[str, ...], _Observations] = {}

    def observe(self, value: float, *values: str) -> None:
        """Count ``value`` in the series of these label values."""
        with self._lock:
            series = self._series.get(values)
            if series is None:
                series = self._series[values] = _Observations(len(self.buckets) + 1)
            # bisect_left: the first bound >= value, as ``le`` (less than or equal) means.
            series.buckets[bisect_left(self.buckets, value)] += 1
            series.total += value
            series.count += 1

    def count(self, *values: str) -> int:
        """How many observations one series holds."""
        with self._lock:
            series = self._series.get(values)
            return series.count if series is not None else 0

    def render_lines(self) -> list[str]:
        lines = self._header()
        with self._lock:
            snapshot = sorted((values, list(series.buckets), series.total, series.count)
                              for values, series in self._series.items())
        for values, counts, total, count in snapshot:
            labels = self._label_text(values)
            before_le = f"{labels}," if labels else ""
            running = 0
            for bound, n in zip(self.buckets, counts, strict=False):
                running += n
                lines.append(f"{self.name}_bucket{{{before_le}le=\"{bound:g}\"}} {running}")
            lines.append(f"{self.name}_bucket{{{before_le}le=\"+Inf\"}} {count}")
            lines.append(f"{self.name}_sum{_braces(labels)} {total:.6f}")
            lines.append(f"{self.name}_count{_braces(labels)} {count}")
        return lines


def _braces(labels: str) -> str:
    """``{labels}``, or nothing for a series without labels."""
    return f"{{{labels}}}" if labels else ""


def render(families: Iterable[Counter | Histogram]) -> str:
    """The exposition text of ``families``, in the order given, ending with a line feed."""
    lines: list[str] = []
    for family in families:
        lines += family.render_lines()
    return "\n".join(lines) + "\n"


__all__ = ["CONTENT_TYPE", "DEFAULT_BUCKETS", "OTHER", "BoundedLabel", "Counter", "Histogram",
           "escape_help", "quote_label_value", "render"]

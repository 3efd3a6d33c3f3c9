"""A story of steps, each judged against its expected outcome: what ``missionbound demo``
plays (:mod:`missionbound.demo.scenario` holds the steps), kept apart from the steps so the
judging rules read on their own.

A :class:`Step` is a title, the expected :class:`Outcome` (and the reasons that count as
that outcome) and a function of the story's shared context returning what actually happened
(:class:`StepResult`). :func:`run_story` runs steps in order and judges each: a step passes
only when its actual outcome (and reason, where one is expected) is the expected one. A step
that raises is a failure carrying the exception's message, and the story goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What a step came to. ``error`` is never expected: the step raised."""

    PERMIT = "permit"  # an action was allowed (by the PDP / an enforcement point)
    DENY = "deny"  # an action was refused
    ISSUED = "issued"  # a request, a token was issued
    REFUSED = "refused"  # a token was refused
    OK = "ok"  # a person's or an auditor's step succeeded
    ERROR = "error"  # the step raised something its story does not expect


@dataclass(frozen=True)
class StepResult:
    outcome: Outcome
    reason: str | None = None
    evidence_id: str | None = None
    detail: str | None = None  # a few words of what happened ("4 invoices", "ledger #1")


class StepPrerequisite(RuntimeError):
    """A step cannot be attempted: what an earlier step should have made is missing."""


@dataclass(frozen=True)
class Step:
    title: str
    expected: Outcome
    run: Callable[[Any], StepResult]  # the story's context -> what happened
    expected_reasons: tuple[str, ...] = ()  # when given, the actual reason must be one

    def judge(self, result: StepResult) -> bool:
        return result.outcome == self.expected and (
            not self.expected_reasons or result.reason in self.expected_reasons)


@dataclass(frozen=True)
class StepReport:
    number: int
    step: Step
    result: StepResult

    @property
    def passed(self) -> bool:
        return self.step.judge(self.result)


@dataclass(frozen=True)
class StoryReport:
    steps: tuple[StepReport, ...]

    @property
    def failed(self) -> list[StepReport]:
        return [report for report in self.steps if not report.passed]

    @property
    def passed(self) -> bool:
        return bool(self.steps) and not self.failed


def run_story(steps: Sequence[Step], context: Any, *,
              on_step: Callable[[StepReport], None] | None = None) -> StoryReport:
    """Run ``steps`` in order against ``context``; ``on_step`` sees each report as it is
    made (the CLI prints it). Never raises for a step: an exception is that step's
    ``error`` outcome, with its message as the reason."""
    reports: list[StepReport] = []
    for number, step in enumerate(steps, start=1):
        try:
            result = step.run(context)
        except Exception as exc:  # any failure is this step's; the story goes on
            result = StepResult(Outcome.ERROR, reason=_describe(exc))
        report = StepReport(number, step, result)
        reports.append(report)
        if on_step is not None:
            on_step(report)
    return StoryReport(tuple(reports))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, StepPrerequisite):
        return f"not attempted: {exc}"
    if isinstance(exc, BaseExceptionGroup):  # an async client's task group's
        return _describe(exc.exceptions[0])
    message = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"

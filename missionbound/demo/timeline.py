"""The demo's timeline in the terminal (rich): each step as it happens, then a summary.
Rendering only; what the steps are and how they are judged is
:mod:`missionbound.demo.scenario`.

Each step reads: its number, a mark and what was attempted; the expected outcome (and
reason), the actual outcome, the reason given, and the evidence id (the PDP's
``evaluation_id`` where there is one, else an audit record or the Mission id). Steps are
printed as the steps finish, so a slow step shows where the story is. Three short lines per
step rather than one wide table row: readable in any terminal width, and ids are never cut.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from missionbound.demo.story import Step, StepReport, StoryReport

_PASS, _FAIL = "✓", "✗"
_INDENT = " " * 6  # under the step's words, past its number and mark


class Timeline:
    """Prints a story's steps to ``console`` as :func:`~missionbound.demo.story.run_story`
    reports them (pass :meth:`step` as its ``on_step``)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def header(self, issuer: str, data_dir: str) -> None:
        self.console.print(Panel.fit(
            Text.assemble(
                ("Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                 "invoice, by Friday.", "italic"),
                "\n\nalice's agent (demo-agent) asks; bob, her manager, approves and later "
                f"revokes.\nissuer   {issuer}\ndata     {data_dir}"),
            title="[bold]missionbound demo[/]", border_style="cyan"))

    def step(self, report: StepReport) -> None:
        """One finished step: its number, a mark and what was attempted; then expected vs
        actual outcome, the reason and the evidence id; then, dimmed, what happened in the
        server's or the SDK's words. Long lines fold rather than being cut: ids are looked
        up by value."""
        step, result = report.step, report.result
        mark, style = (_PASS, "green") if report.passed else (_FAIL, "bold red")
        self.console.print(Text.assemble((f"{report.number:>3} ", "bold"), (mark, style),
                                         "  ", (step.title, "bold")),
                           overflow="fold", highlight=False)
        facts = Text(_INDENT)
        facts.append("expected ", "dim").append(_expectation(step), "cyan")
        facts.append("   actual ", "dim").append(result.outcome.value, style)
        facts.append("   reason ", "dim").append(result.reason or "-",
                                                 "" if report.passed else "red")
        facts.append("   evidence ", "dim").append(result.evidence_id or "-", "magenta")
        self.console.print(facts, overflow="fold", highlight=False)
        if result.detail:
            self.console.print(Text(_INDENT + result.detail, style="dim"), overflow="fold",
                               highlight=False)

    def summary(self, report: StoryReport) -> None:
        failed = report.failed
        total = len(report.steps)
        if not failed:
            self.console.print(Panel.fit(
                f"[bold green]{_PASS} all {total} steps went as expected[/]",
                border_style="green"))
            return
        lines = [f"[bold red]{_FAIL} {len(failed)} of {total} steps did not go as expected[/]"]
        for step in failed:
            lines.append(f"  {step.number}. {escape(step.step.title)}: expected "
                         f"{escape(_expectation(step.step))}, got {step.result.outcome.value}"
                         + (f" ({escape(step.result.reason)})" if step.result.reason else ""))
        self.console.print(Panel.fit("\n".join(lines), border_style="red"))

    def keep_running(self, issuer: str) -> None:
        self.console.print(Panel.fit(
            f"console  [bold]{issuer}/console/[/]  (sign in as bob, password bob)\n"
            f"issuer   {issuer}\n\nThe instance keeps running; press Ctrl-C to stop it.",
            title="[bold]still running[/]", border_style="cyan"))


def _expectation(step: Step) -> str:
    """``deny (parameter_violation)``: the outcome, and the reasons that count as it."""
    reasons = step.expected_reasons
    return step.expected.value + (f" ({' | '.join(reasons)})" if reasons else "")

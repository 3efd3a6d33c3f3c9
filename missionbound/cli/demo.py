"""``missionbound demo``: the demo story (DESIGN.md "The demo tenant") against a fresh
embedded instance, printed as a timeline; exit 0 only if every step went as expected.

Thin: the instance is :mod:`missionbound.demo.instance`, the story
:mod:`missionbound.demo.scenario`, the printing :mod:`missionbound.demo.timeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from missionbound.cli.common import EXIT_FAILED, EXIT_USAGE, fail, stdout

KEEP_RUNNING_POLL = 0.5  # seconds between checks that the server thread is still alive


def demo(
    port: Annotated[
        int | None,
        typer.Option(help="TCP port on 127.0.0.1 (default: a free one).", min=1, max=65535,
                     show_default=False),
    ] = None,
    keep_running: Annotated[
        bool,
        typer.Option("--keep-running",
                     help="After the story, keep the instance up (console, issuer) until "
                     "Ctrl-C."),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", file_okay=False,
                     help="Keep the SQLite database, keys and logs in this folder (default: "
                     "a temporary folder, deleted at the end).", show_default=False),
    ] = None,
) -> None:
    """Play the demo story: intent, consent, tokens, permitted and denied actions, a
    delegation, a revocation, the audit check; exit 0 only if every step went as expected.
    """
    # Imported here: the other commands need neither uvicorn nor the web stack.
    from missionbound.demo.instance import DemoInstance, DemoInstanceError
    from missionbound.demo.scenario import StoryContext, demo_steps
    from missionbound.demo.story import run_story
    from missionbound.demo.timeline import Timeline

    try:
        instance = DemoInstance.start(port=port, data_dir=data_dir)
    except DemoInstanceError as exc:  # PortInUse included: the command cannot run as given
        fail(str(exc), EXIT_USAGE)
    console = stdout()
    timeline = Timeline(console)
    try:
        where = str(instance.data_dir) if data_dir is not None \
            else f"{instance.data_dir} (temporary)"
        timeline.header(instance.issuer, where)
        context = StoryContext(issuer=instance.issuer, database=instance.engine)
        try:
            report = run_story(demo_steps(), context, on_step=timeline.step)
        finally:
            context.close()
        timeline.summary(report)
        if keep_running:
            timeline.keep_running(instance.issuer)
            try:
                while not instance.wait(KEEP_RUNNING_POLL):
                    pass
                console.print("[red]the server stopped on its own[/]")
            except KeyboardInterrupt:
                console.print("stopping the instance")
    finally:
        instance.stop()
    raise typer.Exit(0 if report.passed else EXIT_FAILED)

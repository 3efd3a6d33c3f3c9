"""The ``missionbound`` command (DESIGN.md "Interfaces"); see ``docs/cli.md``.

Every command that touches the database takes ``--config`` and ``--database-url`` and reads
the same ``MISSIONBOUND_*`` environment as ``serve``, so an operator's commands always look
at the database the server uses.

Exit codes: 0 success; 1 the command ran and the answer is "no" (database unreachable, no
such Mission, audit chain broken); 2 the command cannot run as given (bad option, bad
configuration, malformed id).
"""

from __future__ import annotations

import typer

from missionbound.cli.audit import audit_app
from missionbound.cli.db import db_app
from missionbound.cli.demo import demo
from missionbound.cli.gateway import gateway
from missionbound.cli.keys import keys_app
from missionbound.cli.missions import mission_app
from missionbound.cli.serve import serve

app = typer.Typer(
    name="missionbound",
    help="Mission-Bound OAuth: Authorization Server, PDP and enforcement points.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback can hold passwords, secrets and tokens.
    pretty_exceptions_show_locals=False,
)
app.command()(serve)
app.command()(gateway)
app.command()(demo)
app.add_typer(db_app, name="db")
app.add_typer(mission_app, name="mission")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")

__all__ = ["app"]

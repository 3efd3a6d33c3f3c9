"""``python -m missionbound``: the same command as the ``missionbound`` console script."""

from missionbound.cli import app

app(prog_name="missionbound")

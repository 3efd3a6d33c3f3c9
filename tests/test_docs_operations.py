"""Keeps docs/operations.md and docs/concepts.md true to the code.

An operator copies names out of operations.md into a deployment: a misspelt environment
variable is silently ignored (pydantic-settings leaves unknown ``MISSIONBOUND_*`` alone), a
metric that is not exported never alerts, a command that does not exist fails in the middle
of a restore. So every ``MISSIONBOUND_*`` variable, every ``missionbound_*`` metric and every
``missionbound <command> [--option]`` the page names is checked against what the code
declares, every relative link of both pages must lead to a file (and heading) that exists,
and the lifecycle table of concepts.md must be the state machine of
``missionbound/mission/lifecycle.py``.

The names are derived from the code, never listed here: the settings from the ``Settings``
model and its pydantic-settings ``env_prefix``, the other variables from the CLI options'
``envvar``, the metrics from the exposition the gateway's and the issuer's metrics actually
render, the
commands from the typer application. The last tests feed each check a page with known
mistakes, so a check that stopped finding anything would fail.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from missionbound import cli
from missionbound.config import Settings
from missionbound.enforce.mcp.metrics import GatewayMetrics
from missionbound.mission.lifecycle import TRANSITIONS, Event
from missionbound.web.metrics import IssuerMetrics

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
OPERATIONS = DOCS / "operations.md"
CONCEPTS = DOCS / "concepts.md"
PACKAGE = REPO / "missionbound"

# The one module that writes Prometheus text, and the modules that export metrics through
# it. A new exporter must be added here, and its metrics to exported_metric_names(), so
# operations.md can be checked against it.
EXPOSITION_WRITER = PACKAGE / "protocol" / "prometheus.py"
METRICS_EXPORTERS = frozenset({PACKAGE / "enforce" / "mcp" / "metrics.py",
                               PACKAGE / "web" / "metrics.py"})

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`([^`]+)`")
_ENV_NAME = re.compile(r"\bMISSIONBOUND_[A-Z0-9_]*[A-Z0-9]")
_METRIC_NAME = re.compile(r"\bmissionbound_[a-z0-9_]*[a-z0-9]")
# "missionbound" where a command starts: a line's start (after a prompt and VAR=value
# assignments) or a shell separator; not as an argument (pg_dump ... missionbound).
_COMMAND = re.compile(r"(?:^|[;&|(])[ \t]*(?:\$[ \t]+)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*[ \t]+)*"
                      r"missionbound[ \t]+([^\n]*)", re.MULTILINE)
_WORD = re.compile(r"[a-z][a-z0-9-]*")
_OPTION = re.compile(r"\[?(--[a-z][a-z0-9-]*)")
_SHELL_SEPARATORS = frozenset({"|", "||", "&", "&&", ";", "#"})
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


# --------------------------------------------------------------------------- what the code declares


def setting_environment_variables() -> frozenset[str]:
    """``MISSIONBOUND_<SETTING>`` for every field of ``Settings``, named the way
    pydantic-settings reads them: its ``env_prefix`` and the field name, upper case unless
    the model is case-sensitive."""
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "MISSIONBOUND_", f"Settings reads the environment with prefix {prefix!r}"
    names = (f"{prefix}{field}" for field in Settings.model_fields)
    if Settings.model_config.get("case_sensitive", False):
        return frozenset(names)
    return frozenset(name.upper() for name in names)


# typer vendors its own click (typer 0.29: ``typer._click``), so commands are read by what
# they have rather than by class: a group is a command with ``commands``.
CliCommand = Any


def subcommands(command: CliCommand) -> Mapping[str, CliCommand] | None:
    """A group's commands by name; ``None`` for a command that takes no subcommand."""
    found = getattr(command, "commands", None)
    return found if isinstance(found, Mapping) else None


def _commands(command: CliCommand) -> Iterator[CliCommand]:
    yield command
    for sub in (subcommands(command) or {}).values():
        yield from _commands(sub)


def cli_environment_variables() -> frozenset[str]:
    """Variables that CLI options read (``envvar=``), such as the gateway's secrets, which
    are options of ``missionbound gateway`` rather than settings."""
    found: set[str] = set()
    for command in _commands(typer.main.get_command(cli.app)):
        for param in command.params:
            envvar = param.envvar
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found.update(envvar)
    return frozenset(found)


def known_environment_variables() -> frozenset[str]:
    return setting_environment_variables() | cli_environment_variables()


def exported_metric_names() -> dict[str, frozenset[str]]:
    """Each metric family the code exports -> the series names a scraper sees (a histogram
    adds ``_bucket``, ``_sum`` and ``_count``), read from the ``# TYPE`` lines of the
    exposition texts themselves: the gateway's after one recorded call, the issuer's (every
    family has its ``# TYPE`` line before anything is counted)."""
    gateway = GatewayMetrics()
    gateway.record("list_invoices", "permit", None, 0.002)
    text = gateway.render() + IssuerMetrics().render()
    families: dict[str, frozenset[str]] = {}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        suffixes = ("", "_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        families[name] = frozenset(name + suffix for suffix in suffixes)
    return families


def command_tree() -> CliCommand:
    root = typer.main.get_command(cli.app)
    assert subcommands(root), "the missionbound command has no subcommands"
    return root


# --------------------------------------------------------------------------- reading markdown


def code_chunks(markdown: str) -> list[str]:
    """The text of every fenced block and inline code span, where commands and names are
    written; a shell line continued with a backslash becomes one line."""
    chunks = [block.replace("\\\n", " ") for block in _FENCE.findall(markdown)]
    prose = _FENCE.sub("", markdown)
    chunks += [span.replace("\n", " ") for span in _INLINE_CODE.findall(prose)]
    return chunks


def prose_without_code(markdown: str) -> str:
    return _INLINE_CODE.sub("", _FENCE.sub("", markdown))


def heading_anchors(markdown: str) -> frozenset[str]:
    """GitHub's anchors: lower case, punctuation other than ``-`` and ``_`` dropped, spaces
    as ``-``; a repeated heading gets ``-1``, ``-2``..."""
    anchors: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return frozenset(anchors)


# --------------------------------------------------------------------------- the checks


def unknown_environment_variables(markdown: str, known: frozenset[str]) -> list[str]:
    return sorted(set(_ENV_NAME.findall(markdown)) - known)


def unknown_metric_names(markdown: str, exported: dict[str, frozenset[str]]) -> list[str]:
    series = frozenset().union(*exported.values()) if exported else frozenset()
    return sorted(set(_METRIC_NAME.findall(markdown)) - series)


def command_mentions(markdown: str) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """``(words after missionbound, --options on the same command line)`` for every
    ``missionbound ...`` written in code. Words are taken while they can be (sub)commands;
    what follows them is arguments, up to a shell separator."""
    root = command_tree()
    mentions = []
    for chunk in code_chunks(markdown):
        for rest in _COMMAND.findall(chunk):
            tokens = rest.split()
            words: list[str] = []
            command = root
            index = 0
            while (index < len(tokens) and (below := subcommands(command)) is not None
                   and _WORD.fullmatch(tokens[index])):
                word = tokens[index]
                words.append(word)
                index += 1
                if word not in below:
                    break  # an unknown command: command_problems names it
                command = below[word]
            options = []
            for token in tokens[index:]:
                if token in _SHELL_SEPARATORS:
                    break
                option = _OPTION.match(token)
                if option:
                    options.append(option.group(1))
            mentions.append((tuple(words), tuple(options)))
    return mentions


def command_problems(markdown: str) -> list[str]:
    """What a reader of ``markdown`` would type that the ``missionbound`` command refuses."""
    problems: list[str] = []
    for words, options in command_mentions(markdown):
        command = command_tree()
        for word in words:
            below = subcommands(command)
            if below is None or word not in below:
                problems.append(f"missionbound {' '.join(words)}: no command {word!r}")
                break
            command = below[word]
        else:
            accepted = {"--help"} | {
                opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
            problems += [f"missionbound {' '.join(words)}: no option {option}"
                         for option in options if option not in accepted]
    return sorted(set(problems))


def broken_links(document: Path) -> list[str]:
    """Relative links of ``document`` whose file does not exist, or whose ``#anchor`` names
    no heading of that Markdown file."""
    markdown = document.read_text(encoding="utf-8")
    broken: list[str] = []
    for target in _LINK.findall(prose_without_code(markdown)):
        if _SCHEME.match(target):
            continue  # http(s), mailto: not a file of this repository
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file {linked}")
            continue
        if anchor and linked.suffix == ".md" and linked.is_file() and (
                anchor not in heading_anchors(linked.read_text(encoding="utf-8"))):
            broken.append(f"{target}: {linked.name} has no heading #{anchor}")
    return broken


def lifecycle_rows(markdown: str) -> set[tuple[str, str, str]]:
    """``(from, event, to)`` for each state a row of the lifecycle table names in its From
    column (rows whose Event column is not an event, such as the PAR row, are skipped)."""
    section = markdown.split("## The lifecycle", 1)[1].split("\n## ", 1)[0]
    events = {event.value for event in Event}
    rows: set[tuple[str, str, str]] = set()
    for line in section.splitlines():
        if not line.startswith("|"):
            continue  # prose, which may hold a | of its own
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[1] not in events:
            continue
        targets = re.findall(r"`([a-z_]+)`", cells[2])
        assert len(targets) == 1, f"one target state per row: {line}"
        rows |= {(source, cells[1], targets[0])
                 for source in re.findall(r"`([a-z_]+)`", cells[0])}
    return rows


# --------------------------------------------------------------------------- the documents


@pytest.fixture(scope="module")
def operations() -> str:
    return OPERATIONS.read_text(encoding="utf-8")


def test_every_environment_variable_in_operations_is_one_the_code_reads(operations: str) -> None:
    assert _ENV_NAME.search(operations), "operations.md names no MISSIONBOUND_* variable"
    assert unknown_environment_variables(operations, known_environment_variables()) == []


def test_every_metric_in_operations_is_exported_and_every_exported_one_is_listed(
        operations: str) -> None:
    exported = exported_metric_names()
    assert exported, "the metrics render no # TYPE line"
    assert unknown_metric_names(operations, exported) == []
    assert sorted(name for name in exported if name not in operations) == []


def test_the_metrics_checked_are_all_the_code_exports() -> None:
    # A module that writes an exposition of its own (or uses prometheus_client), or exports
    # metrics through protocol/prometheus.py, and is not in METRICS_EXPORTERS would export
    # metrics this test cannot see.
    sources = {path: path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py")}
    writers = {path for path, text in sources.items()
               if re.search(r"# TYPE |prometheus_client", text)}
    assert writers == {EXPOSITION_WRITER}
    users = {path for path, text in sources.items()
             if path != EXPOSITION_WRITER and "missionbound.protocol.prometheus" in text}
    assert users == METRICS_EXPORTERS


def test_every_command_in_operations_exists_with_its_options(operations: str) -> None:
    mentions = command_mentions(operations)
    assert {words for words, _ in mentions} >= {("serve",), ("gateway",), ("db", "upgrade"),
                                                 ("audit", "verify"), ("keys", "rotate")}
    assert command_problems(operations) == []


@pytest.mark.parametrize("words", sorted({words for words, _ in command_mentions(
    OPERATIONS.read_text(encoding="utf-8")) if words}), ids=" ".join)
def test_every_command_in_operations_answers_help(words: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli.app, [*words, "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("document", [OPERATIONS, CONCEPTS], ids=lambda path: path.name)
def test_every_relative_link_leads_to_an_existing_file_and_heading(document: Path) -> None:
    assert _LINK.search(document.read_text(encoding="utf-8"))
    assert broken_links(document) == []


def test_the_lifecycle_table_of_concepts_is_the_state_machine() -> None:
    in_code = {(source.value, event.value, target.value)
               for (source, event), target in TRANSITIONS.items()}
    assert lifecycle_rows(CONCEPTS.read_text(encoding="utf-8")) == in_code


def test_concepts_has_exactly_one_diagram_in_a_form_github_renders() -> None:
    blocks = re.findall(r"^```mermaid\n(.*?)^```", CONCEPTS.read_text(encoding="utf-8"),
                        re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    assert blocks[0].split(maxsplit=1)[0] in ("flowchart", "sequenceDiagram")


# --------------------------------------------------------------------------- the checks can fail

MISTAKEN_PAGE = """
Set `MISSIONBOUND_ISSUER` and `MISSIONBOUND_ISUER`; the gateway reads
`MISSIONBOUND_PEP_CLIENT_SECRET`. Scrape `missionbound_mcp_tool_call_seconds_bucket` and
`missionbound_http_requests_totals`.

```sh
missionbound keys rotate --alg EdDSA
missionbound keys destroy
missionbound audit verify --everything
missionbound frobnicate
missionbound mission revoke msn_x --reason "done" | tee out.txt --not-an-option
```

[fine](concepts.md), [fine anchor](concepts.md#the-mission), [gone](no-such-page.md),
[bad anchor](concepts.md#no-such-heading), [web](https://example.com/missing.md)
"""


def test_the_checks_find_each_kind_of_mistake(tmp_path: Path) -> None:
    assert unknown_environment_variables(MISTAKEN_PAGE, known_environment_variables()) == [
        "MISSIONBOUND_ISUER"]
    assert unknown_metric_names(MISTAKEN_PAGE, exported_metric_names()) == [
        "missionbound_http_requests_totals"]
    assert command_problems(MISTAKEN_PAGE) == [
        "missionbound audit verify: no option --everything",
        "missionbound frobnicate: no command 'frobnicate'",
        "missionbound keys destroy: no command 'destroy'",
    ]
    page = tmp_path / "page.md"
    page.write_text(MISTAKEN_PAGE, encoding="utf-8")
    (tmp_path / "concepts.md").write_text(CONCEPTS.read_text(encoding="utf-8"),
                                          encoding="utf-8")
    assert [problem.split(":")[0] for problem in broken_links(page)] == [
        "no-such-page.md", "concepts.md#no-such-heading"]
    assert lifecycle_rows("## The lifecycle\n| `active` | revoke | `completed` | x |\n") == {
        ("active", "revoke", "completed")}

"""docs/conformance.md maps every requirement of PROFILE.md to the tests that prove it. A map
that names a renamed or misspelled test, or that quietly drops a section or a Ladder level,
would claim conformance nobody checks: these tests keep the page true.

PROFILE.md lives in the shared spec folder beside the repository (``../shared/spec``); a clean
clone has no such folder, so the section numbers then come from ``PROFILE_SECTIONS`` below,
and only the check that this list still matches PROFILE.md is skipped."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "conformance.md"
SHARED_SPEC = ROOT.parent / "shared" / "spec"
PROFILE = SHARED_SPEC / "PROFILE.md"

# The numbered sections of PROFILE.md, for a checkout without the shared folder.
PROFILE_SECTIONS = frozenset(range(1, 16))
LADDER_LEVELS = ("L1", "L2", "L3", "L4", "L5")

HEADER = ("PROFILE §", "Requirement", "Level", "Proved by", "Status")
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::((?:\w+::)?\w+)`")
LEVEL = re.compile(r"all|L[0-5](?:-L[0-5])?")
STATUS = re.compile(r"met|(?:partly|not met): \S.*")
# A Ladder row: section 2, the requirement opening with the level in bold, e.g. "**L3** ...".
LADDER_ROW = re.compile(r"\*\*(L[0-5])\*\*")


@dataclass(frozen=True)
class Row:
    section: str
    requirement: str
    level: str
    proved_by: str
    status: str


def table_rows(text: str) -> list[Row]:
    """The rows of the table whose header is ``HEADER``; any row with another number of cells
    is an error (a stray ``|`` would shift every column after it)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if tuple(split_cells(line)) == HEADER]
    assert len(starts) == 1, f"expected one table headed {HEADER}, found {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = split_cells(line)
        assert len(cells) == len(HEADER), f"{len(cells)} cells in: {line}"
        rows.append(Row(*cells))
    return rows


def split_cells(line: str) -> list[str]:
    stripped = line.strip()
    if not (stripped.startswith("|") and stripped.endswith("|")):
        return []
    return [cell.strip() for cell in stripped[1:-1].split("|")]


@cache
def defined_tests(path: Path) -> frozenset[str]:
    """``name`` for every module-level test function of ``path`` and ``Class::name`` for every
    method of a module-level class: exactly what a pytest node id can name."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return frozenset(names)


def reference_problems(rows: list[Row], root: Path) -> list[str]:
    """Every reference that names no file or no test in it, and every Proved-by cell that holds
    anything but references (or ``-`` for a row that is not met)."""
    problems = []
    for row in rows:
        references = REFERENCE.findall(row.proved_by)
        leftover = REFERENCE.sub("", row.proved_by).replace(",", "").strip()
        if leftover not in ("", "-"):
            problems.append(f"§{row.section} {row.requirement!r}: not a reference: {leftover!r}")
        for file, name in references:
            path = root / file
            if not path.is_file():
                problems.append(f"§{row.section}: no file {file}")
            elif name not in defined_tests(path):
                problems.append(f"§{row.section}: {file} defines no {name}")
    return problems


def row_problems(rows: list[Row]) -> list[str]:
    """Rows whose level or status is in no allowed form, or that claim anything but
    ``not met`` without a single test."""
    problems = []
    for row in rows:
        where = f"§{row.section} {row.requirement!r}"
        if not re.fullmatch(r"\d+", row.section):
            problems.append(f"{where}: section {row.section!r} is not a number")
        if not re.fullmatch(LEVEL, row.level):
            problems.append(f"{where}: level {row.level!r}")
        if not re.fullmatch(STATUS, row.status):
            problems.append(f"{where}: status {row.status!r}")
        if not REFERENCE.search(row.proved_by) and not row.status.startswith("not met"):
            problems.append(f"{where}: {row.status!r} but no test proves it")
    return problems


def profile_sections() -> frozenset[int]:
    """The numbers of PROFILE.md's ``## N. Title`` sections."""
    return frozenset(int(number) for number in
                     re.findall(r"^## (\d+)\. ", PROFILE.read_text(), flags=re.MULTILINE))


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    found = table_rows(PAGE.read_text())
    assert found, "the requirements table has no rows"
    return found


def test_every_reference_names_an_existing_test(rows: list[Row]) -> None:
    assert reference_problems(rows, ROOT) == []


def test_every_row_has_a_level_a_status_and_tests_unless_not_met(rows: list[Row]) -> None:
    assert row_problems(rows) == []


def test_every_ladder_level_has_a_row(rows: list[Row]) -> None:
    levels = {match.group(1) for row in rows if row.section == "2"
              if (match := LADDER_ROW.match(row.requirement))}
    assert set(LADDER_LEVELS) <= levels, sorted(set(LADDER_LEVELS) - levels)


def test_every_numbered_section_of_the_profile_has_a_row(rows: list[Row]) -> None:
    sections = profile_sections() if PROFILE.is_file() else PROFILE_SECTIONS
    covered = {int(row.section) for row in rows if row.section.isdigit()}
    assert sections <= covered, sorted(sections - covered)


@pytest.mark.skipif(not PROFILE.is_file(),
                    reason=f"no shared spec folder here ({SHARED_SPEC}): a clean clone checks "
                           "the sections against PROFILE_SECTIONS only")
def test_the_section_list_matches_the_profile() -> None:
    assert profile_sections() == PROFILE_SECTIONS


# -- the checks themselves can fail ---------------------------------------------------------

SAMPLE = """\
| PROFILE § | Requirement | Level | Proved by | Status |
|---|---|---|---|---|
| 8 | A | L1 | `tests/test_docs_conformance.py::test_every_ladder_level_has_a_row` | met |
| 8 | B | L1 | `tests/test_docs_conformance.py::test_every_ladder_level_has_a_rwo` | met |
| 8 | C | L1 | `tests/no_such_file.py::test_x` | met |
| 8 | D | L1 | tests/test_docs_conformance.py::test_every_ladder_level_has_a_row | met |
| 8 | E | L1 | `tests/test_docs_conformance.py::Row::test_x` | met |
| 14 | F | L9 | - | done |
| 14 | G | L5 | - | met |
| 14 | H | L5 | - | not met: no code |
"""


def test_the_checks_name_each_broken_row() -> None:
    rows = table_rows(SAMPLE)
    assert [row.requirement for row in rows] == list("ABCDEFGH")
    problems = reference_problems(rows, ROOT)
    assert problems == [
        "§8: tests/test_docs_conformance.py defines no test_every_ladder_level_has_a_rwo",
        "§8: no file tests/no_such_file.py",
        "§8 'D': not a reference: "
        "'tests/test_docs_conformance.py::test_every_ladder_level_has_a_row'",
        "§8: tests/test_docs_conformance.py defines no Row::test_x",
    ]
    assert row_problems(rows) == [
        "§8 'D': 'met' but no test proves it",
        "§14 'F': level 'L9'",
        "§14 'F': status 'done'",
        "§14 'F': 'done' but no test proves it",
        "§14 'G': 'met' but no test proves it",
    ]


def test_a_stray_pipe_or_a_second_table_is_refused() -> None:
    with pytest.raises(AssertionError, match="6 cells"):
        table_rows(SAMPLE.replace("| A |", "| A | x |"))
    with pytest.raises(AssertionError, match="found 2"):
        table_rows(SAMPLE + "\n" + SAMPLE)

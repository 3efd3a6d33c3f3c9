"""The OpenID AuthZEN working group's interop decision tables (todo: AuthZEN 1.0 drafts 01
and 02; search: the draft 03 search APIs), every case over HTTP against the real app, with
each scenario's rules written as a resource-policy tenant (examples/authzen-todo,
examples/authzen-search), never as special code. Compared as the tables' README says:
decisions exactly, search results as sets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.runtime.authzen_support import (
    INTEROP,
    REPO_INTEROP,
    RS_AUTH,
    SHARED_INTEROP,
    interop,
    serve_app,
)

DECISION_FILES = ("todo/decisions-1_0-01.json", "todo/decisions-1_0-02.json")
SEARCH_FILES = {"subject": "search/subject-results.json",
                "resource": "search/resource-results.json",
                "action": "search/action-results.json"}


def _cases(name: str, section: str) -> list[Any]:
    return [pytest.param(case, id=f"{Path(name).stem}-{section}-{index}")
            for index, case in enumerate(interop(name).get(section, []))]


EVALUATION_CASES = [case for name in DECISION_FILES for case in _cases(name, "evaluation")]
EVALUATIONS_CASES = [case for name in DECISION_FILES for case in _cases(name, "evaluations")]
SEARCH_CASES = [pytest.param(kind, *case.values, id=f"{kind}-{case.id}")
                for kind, name in SEARCH_FILES.items() for case in _cases(name, "evaluation")]


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from serve_app(tmp_path_factory.mktemp("authzen-interop"))


def _post(http: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body, headers=RS_AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_the_tables_are_all_here() -> None:
    # 40 + 40 single decisions, 3 boxcars, 60 + 18 + 120 searches: a table that silently
    # lost its cases would pass every test below.
    assert (len(EVALUATION_CASES), len(EVALUATIONS_CASES), len(SEARCH_CASES)) == (80, 3, 198)


@pytest.mark.skipif(not SHARED_INTEROP.is_dir(), reason="no shared interop folder here")
def test_the_repository_copy_matches_the_shared_tables() -> None:
    # CI reads the copy (a clean clone has no ../shared); it must be the same data.
    for path in sorted(SHARED_INTEROP.rglob("*.json")):
        copy = REPO_INTEROP / path.relative_to(SHARED_INTEROP)
        assert json.loads(copy.read_text()) == json.loads(path.read_text()), path.name
    assert INTEROP == SHARED_INTEROP


@pytest.mark.parametrize("case", EVALUATION_CASES)
def test_todo_evaluation(http: TestClient, case: dict[str, Any]) -> None:
    answer = _post(http, "/pdp/todo/access/v1/evaluation", case["request"])
    assert answer == {"decision": case["expected"]}


@pytest.mark.parametrize("case", EVALUATIONS_CASES)
def test_todo_evaluations(http: TestClient, case: dict[str, Any]) -> None:
    answer = _post(http, "/pdp/todo/access/v1/evaluations", case["request"])
    assert answer == {"evaluations": case["expected"]}


@pytest.mark.parametrize(("kind", "case"), SEARCH_CASES)
def test_search(http: TestClient, kind: str, case: dict[str, Any]) -> None:
    answer = _post(http, f"/pdp/search/access/v1/search/{kind}", case["request"])

    def as_set(results: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(result, sort_keys=True) for result in results)

    assert as_set(answer["results"]) == as_set(case["expected"]["results"])
    assert len(answer["results"]) == len(case["expected"]["results"])  # no duplicates
    assert answer["page"] == {"next_token": "", "count": len(answer["results"]),
                              "total": len(answer["results"])}

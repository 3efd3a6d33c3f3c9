"""DESIGN.md, rules of the house: an enforcement point uses the wire primitives of ``protocol/``
and the Mission vocabulary of ``mission/``, never the Authorization Server's code or store (a
Resource Server must not import the AS)."""

from __future__ import annotations

import ast
from pathlib import Path

ENFORCE = Path(__file__).parents[2] / "missionbound" / "enforce"
ALLOWED_PACKAGE_PARTS = ("missionbound.enforce", "missionbound.protocol", "missionbound.mission")


def test_enforce_imports_nothing_of_the_issuer_store_or_web() -> None:
    files = sorted(ENFORCE.rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, (path.name, "relative import")
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                if module == "missionbound" or module.startswith("missionbound."):
                    assert module.startswith(ALLOWED_PACKAGE_PARTS), (path.name, module)

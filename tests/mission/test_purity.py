"""The Mission core stays pure: no I/O, no framework, nothing from the rest of the package
(DESIGN.md, rules of the house)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).parents[2] / "missionbound" / "mission"
ALLOWED_THIRD_PARTY = {"rfc8785"}
FORBIDDEN_STDLIB = {"os", "io", "socket", "sqlite3", "subprocess", "threading", "asyncio",
                    "time", "random", "urllib.request", "http", "pathlib", "logging"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # A relative import can only stay inside the core at level 1 ("from . import x").
                names.add("missionbound.mission" if node.level == 1 else "missionbound")
            elif node.module:
                names.add(node.module)
    return names


def test_core_imports_only_the_standard_library_and_rfc8785() -> None:
    files = sorted(CORE.glob("*.py"))
    assert files
    for path in files:
        for module in imported_modules(path):
            top = module.split(".")[0]
            if module == "missionbound" or module.startswith("missionbound."):
                assert module.startswith("missionbound.mission"), (path.name, module)
                continue
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, (path.name,
                                                                                 module)
            assert module not in FORBIDDEN_STDLIB and top not in FORBIDDEN_STDLIB, (path.name,
                                                                                   module)

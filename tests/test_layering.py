"""DESIGN.md, rules of the house: ``protocol/`` imports only the standard library, joserfc and
the Mission core (an RS checks DPoP proofs and SETs without the issuer or the store), and an
enforcement point uses ``protocol/`` and ``mission/`` only, never the Authorization Server's
code or store (a Resource Server must not import the AS)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "missionbound"


def imports_of(folder: str) -> Iterator[tuple[str, str]]:
    """(file name, imported module) for every import in the package folder ``folder``."""
    files = sorted((PACKAGE / folder).rglob("*.py"))
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
                yield path.name, module


def test_protocol_imports_only_stdlib_joserfc_and_the_mission_core() -> None:
    for name, module in imports_of("protocol"):
        top = module.split(".")[0]
        allowed = (
            top in sys.stdlib_module_names
            or top == "joserfc"
            or module.startswith("missionbound.mission")
            or module.startswith("missionbound.protocol.")
            # DESIGN.md puts JWKS fetching and caching here, and the Mission Status client
            # is shared by the Resource AS and the Resource Servers: these two alone may use
            # the HTTP client (they still import nothing of the issuer or the store).
            or (name in ("jwks.py", "mission_status.py") and top == "httpx")
        )
        assert allowed, (name, module)


def test_enforce_imports_nothing_of_the_issuer_store_or_web() -> None:
    allowed = ("missionbound.enforce", "missionbound.protocol", "missionbound.mission")
    for name, module in imports_of("enforce"):
        if module == "missionbound" or module.startswith("missionbound."):
            assert module.startswith(allowed), (name, module)

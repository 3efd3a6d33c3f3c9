"""Fixtures for the foreign-client tests: a real ``missionbound serve`` (``served``, from
tests/e2e_support.py) and a Node.js with oauth4webapi installed (``foreign_client``)."""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e_support import served

__all__ = ["FOREIGN_DIR", "ForeignClient", "foreign_client", "served"]

FOREIGN_DIR = Path(__file__).parent
NPM_CI_TIMEOUT = 300.0
# oauth4webapi 3 supports Node.js 20 and later; 18 works with Web Crypto as a global.
MIN_NODE_MAJOR = 18


@dataclass(frozen=True)
class ForeignClient:
    """How to run a script of this folder: ``[*node, script, ...]``."""

    node: tuple[str, ...]
    folder: Path

    def command(self, script: str, *args: str) -> list[str]:
        return [*self.node, str(self.folder / script), *args]


def _node_command() -> tuple[str, ...]:
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            "node is not installed: the oauth4webapi foreign-client tests need Node.js >= 18 "
            "and npm (apt-get install -y nodejs npm)"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    match = re.fullmatch(r"v(\d+)\..*", version)
    major = int(match.group(1)) if match else 0
    if major < MIN_NODE_MAJOR:
        pytest.skip(f"node {version} is too old for oauth4webapi (need >= {MIN_NODE_MAJOR})")
    if major < 20:  # Node 18: Web Crypto (crypto, CryptoKey) is not yet a global
        return (node, "--experimental-global-webcrypto")
    return (node,)


def _installed_version(folder: Path) -> str | None:
    manifest = folder / "node_modules" / "oauth4webapi" / "package.json"
    try:
        version: str = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


def _ensure_node_modules(folder: Path) -> None:
    """``npm ci`` from package-lock.json unless the pinned oauth4webapi is already there.
    Holds a lock on package.json so parallel test processes install once."""
    wanted = json.loads((folder / "package.json").read_text())["dependencies"]["oauth4webapi"]
    with (folder / "package.json").open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(folder) == wanted:
            return
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: needed once to install oauth4webapi (npm ci)")
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=folder, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {folder} did not finish within {NPM_CI_TIMEOUT:g} s")
        if result.returncode != 0 or _installed_version(folder) != wanted:
            pytest.fail(
                f"npm ci in {folder} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )


@pytest.fixture(scope="session")
def foreign_client() -> ForeignClient:
    """Node.js with tests/foreign/node_modules installed; skips when Node.js is missing."""
    node = _node_command()
    _ensure_node_modules(FOREIGN_DIR)
    return ForeignClient(node=node, folder=FOREIGN_DIR)

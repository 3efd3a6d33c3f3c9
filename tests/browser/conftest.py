"""Browser tests: pytest-playwright driving Debian's ``chromium`` (DESIGN.md "Browser tests").

Never ``playwright install``: the plugin's ``browser_type_launch_args`` fixture is overridden
to launch ``/usr/bin/chromium`` (``apt-get install -y chromium``). Every test here is skipped,
saying why, when that browser is missing. The server under test is a real
``missionbound serve`` (``served``, from tests/e2e_support.py).

Playwright's sync API marks its asyncio loop as running on the main thread for as long as
Playwright is started (microsoft/playwright-pytest#167). The plugin starts it once per
session, so every later test that runs an event loop (``asyncio.run``, Starlette's
TestClient, ...) would fail with "Cannot run the event loop while another loop is running".
Here the fixtures that hold Playwright (``playwright``, ``browser_type``, ``launch_browser``,
``browser``, ``browser_context_args``) are package-scoped instead: one browser for all the
tests of this folder, stopped before the rest of the suite runs. ``page``, ``context`` and
``new_context`` are the plugin's own, on top of these.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    BrowserType,
    Page,
    Playwright,
    sync_playwright,
)

from tests.e2e_support import served

__all__ = [
    "CHROMIUM",
    "base_url",
    "browser",
    "browser_context_args",
    "browser_type",
    "browser_type_launch_args",
    "launch_browser",
    "playwright",
    "served",
]

CHROMIUM = Path("/usr/bin/chromium")
# Bounded: a browser that does not start fails the test instead of hanging the run.
LAUNCH_TIMEOUT_MS = 30_000


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """The plugin's launch options (``--headed``, ``--slowmo``, ...) plus Debian's chromium."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"{CHROMIUM} is missing: the browser tests drive Debian's chromium "
            "(apt-get install -y chromium), never a browser from `playwright install`"
        )
    args = list(browser_type_launch_args.get("args", []))
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Chromium refuses to start its sandbox as root (CI containers run as root).
        args.append("--no-sandbox")
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "args": args,
        "timeout": LAUNCH_TIMEOUT_MS,
    }


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """No base URL: every test goes to its own server's absolute URLs. Overriding the
    plugin's fallback fixture (an instance method) also keeps pytest's deprecation warning
    about session fixtures on instances out of every run."""
    return None


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    started = sync_playwright().start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="package")
def browser_type(playwright: Playwright, browser_name: str) -> BrowserType:
    browser_type: BrowserType = getattr(playwright, browser_name)
    return browser_type


@pytest.fixture(scope="package")
def launch_browser(
    browser_type_launch_args: dict[str, Any], browser_type: BrowserType
) -> Callable[..., Browser]:
    def launch(**overrides: Any) -> Browser:
        return browser_type.launch(**{**browser_type_launch_args, **overrides})

    return launch


@pytest.fixture(scope="package")
def browser(launch_browser: Callable[..., Browser]) -> Iterator[Browser]:
    launched = launch_browser()
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="package")
def browser_context_args(
    playwright: Playwright, device: str | None, base_url: str | None
) -> dict[str, Any]:
    """As the plugin's: ``--device`` emulation and the base URL."""
    args: dict[str, Any] = {}
    if device:
        args.update(playwright.devices[device])
    if base_url:
        args["base_url"] = base_url
    return args


# -- screenshots of failing tests ------------------------------------------------------------

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"  # tests/artifacts/, gitignored


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """When a test of this folder fails, save a full-page screenshot of every page its
    browser contexts hold to tests/artifacts/<test name>-<n>.png, while they are still open
    (fixture teardown comes after this report)."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        _screenshot_pages(item)
    return report


def _screenshot_pages(item: pytest.Item) -> None:
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    contexts = []
    for value in funcargs.values():
        if isinstance(value, BrowserContext) and value not in contexts:
            contexts.append(value)
        elif isinstance(value, Page) and value.context not in contexts:
            contexts.append(value.context)
    browser = funcargs.get("browser")
    if isinstance(browser, Browser):  # contexts made by new_context() as well
        contexts += [c for c in browser.contexts if c not in contexts]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name)[:150]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    number = 0
    for context in contexts:
        for open_page in context.pages:
            number += 1
            try:
                open_page.screenshot(path=str(ARTIFACTS / f"{name}-{number}.png"),
                                     full_page=True, timeout=10_000)
            except Exception as exc:  # a crashed page must not hide the test's own failure
                item.add_report_section("call", "screenshot", f"page {number}: {exc}")

"""External programs the tests use to check from the outside (dcmtk, dicom3tools…)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

CHROMIUM = "/usr/bin/chromium"


def missing(message: str) -> NoReturn:
    """A component the setup installs is absent: the test fails (a skip would pass unseen)."""
    pytest.fail(f"{message}; scripts/setup.sh installs it", pytrace=False)


def require_tool(name: str, package: str) -> str:
    """Path of `name`; a missing tool fails the test (setup installs it)."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not installed (Debian package {package})")
    return path


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        missing("Chromium not installed (Debian package chromium)")


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright."""
    import playwright.sync_api as playwright_api

    require_chromium()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()

"""Real Chromium for the browser tests: Debian's `/usr/bin/chromium` driven by the Python `playwright` package.

Never `playwright install`: the browser comes from the OS (`apt-get install chromium`; `.ci/run` does it). Tests
that use the `browser` fixture skip with a message saying how to get Chromium when it is missing. Screenshots
go to `test-artifacts/` (ignored by git) so that the key states can be looked at after a run.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("GUST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("GUST_TEST_ARTIFACTS", REPO / "test-artifacts"))


def require_chromium() -> None:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}: `apt-get install -y chromium` (Debian), or set GUST_CHROMIUM")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (sync API: browser tests are plain, non-async tests)."""
    require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` (the test extra)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/ and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path

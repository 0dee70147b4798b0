"""Browser tests' helpers: Debian's chromium driven by python playwright, once per module.

Use in a test module::

    from tests.web_helpers import browser, console_errors  # noqa: F401 (the fixture)

    def test_page(browser: Browser) -> None:
        page = browser.new_page()
        errors = console_errors(page)
        ...

No playwright browser download: the fixture launches /usr/bin/chromium (or $EDGEAGENT_CHROMIUM)
headless and skips the module's browser tests, with the reason, when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("EDGEAGENT_CHROMIUM", "/usr/bin/chromium"))


def chromium_missing() -> str | None:
    """Why browser tests cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set EDGEAGENT_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "python playwright is not installed (pip install -e '.[dev]')"
    return None


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless chromium for the block (skips the calling test when there is none)."""
    reason = chromium_missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium per test module."""
    with chromium() as b:
        yield b


def console_errors(page: Page) -> list[str]:
    """A list that fills with the page's console errors and uncaught exceptions."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors

"""A real browser for the console tests: Playwright for Python driving the machine's
Chromium (Debian's ``chromium`` package; Playwright's own download is not used).

The rule for a missing browser lives here: under ``CI=true`` a browser test fails
(CI must run it; ``.ci/run`` installs Chromium); elsewhere it is skipped with a
message saying how to get one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOW = ("install Chromium (`apt-get install -y chromium chromium-driver`) and Playwright "
       "for Python (`pip install -e '.[test]'`)")


def unavailable(reason: str) -> NoReturn:
    message = f"no browser for the console tests ({reason}): {HOW}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """The machine's Chromium, headless, closed on exit."""
    executable = shutil.which("chromium")
    if executable is None:
        unavailable("no `chromium` on PATH")
    try:
        from playwright.async_api import Error, async_playwright
    except ImportError:
        unavailable("the `playwright` package is not installed")
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=executable, args=ARGS,
                                                       headless=True, timeout=30_000)
        except Error as exc:
            unavailable(f"Chromium at {executable} did not start: {str(exc)[:300]}")
        try:
            yield browser
        finally:
            await browser.close()


async def tab_to(page: Page, selector: str, presses: int = 40) -> None:
    """Press Tab until the element ``selector`` names has the focus: the keyboard
    alone must reach it."""
    for _ in range(presses):
        await page.keyboard.press("Tab")
        if await page.evaluate("s => document.activeElement === document.querySelector(s)",
                               selector):
            return
    raise AssertionError(f"{selector} not reached with {presses} presses of Tab")


UNLABELLED = """() => Array.from(document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button')).filter(el =>
    !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
    && !(el.tagName === 'BUTTON' && el.textContent.trim())).map(el => el.outerHTML)"""


async def check_page(page: Page, width: int) -> None:
    """Every control is labelled, and nothing is wider than the window."""
    assert await page.evaluate(UNLABELLED) == [], page.url
    scroll: Any = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, (page.url, scroll)

"""Browser tests: Playwright (Python) driving Debian's Chromium against a real running pgcrdr.

Never ``playwright install`` (its browser download does not work here): pytest-playwright's
fixtures launch /usr/bin/chromium instead (field-notes.md, "Browser tests"). Every page records
console errors, uncaught page errors and server errors (5xx) from before its first navigation;
a test fails on any of them unless it declared that exact refusal as expected. Screenshots of
each step are kept in ``artifacts/console/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response

from tests.helpers import REPO, RunningPlatform, start_platform, stop_platform

ARTIFACTS = REPO / "artifacts" / "console"
# Clear of the other suites' blocks, and below the default ports (25000+) with every region.
BROWSER_PORT_OFFSET = 1500


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    return {**browser_type_launch_args, "executable_path": "/usr/bin/chromium",
            "args": ["--disable-gpu", "--disable-quic"]}


@dataclass
class PageWatch:
    """Problems a page reported: console errors, page errors, server errors."""

    errors: list[str] = field(default_factory=list)
    allowed: list[tuple[int, str]] = field(default_factory=list)  # (status, url fragment) a test expects

    def attach(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("response", self._response)

    def _expected(self, status: int, url: str) -> bool:
        return any(status == s and frag in url for s, frag in self.allowed)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        m = re.search(r"status of (\d{3})", msg.text)
        if m and self._expected(int(m.group(1)), url):
            return
        self.errors.append(f"console error: {msg.text} ({url})")

    def _response(self, resp: Response) -> None:
        if resp.status >= 500:
            self.errors.append(f"server error: {resp.status} {resp.request.method} {resp.url}")

    def expect_refusal(self, status: int, url_fragment: str) -> None:
        """The test provokes this refusal on purpose: the browser's console line about it is expected."""
        self.allowed.append((status, url_fragment))

    def check(self) -> None:
        errors, self.errors, self.allowed = self.errors, [], []
        assert not errors, "the page reported problems:\n" + "\n".join(errors)


@dataclass
class Console:
    page: Page
    watch: PageWatch
    platform: RunningPlatform
    shots: int = 0

    def shot(self, name: str) -> Path:
        """A screenshot of this step, kept as a test artifact."""
        self.shots += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.shots:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def platform() -> Iterator[RunningPlatform]:
    """One running pgcrdr (control plane + two regions) for the module's tests, in order."""
    p = start_platform(BROWSER_PORT_OFFSET)
    try:
        yield p
    finally:
        stop_platform(p)


@pytest.fixture(scope="module")
def console(browser: Browser, platform: RunningPlatform) -> Iterator[Console]:
    """One browser tab kept across the module's tests (the sign-in lives in its sessionStorage)."""
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    context = browser.new_context(base_url=platform.api_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = PageWatch()
    watch.attach(page)  # before the first navigation
    try:
        yield Console(page, watch, platform)
    finally:
        context.close()
        print(f"\nconsole screenshots: {ARTIFACTS}")


@pytest.fixture(autouse=True)
def page_is_clean(console: Console) -> Iterator[None]:
    """Fail a test whose page logged a console error, a page error or a server error."""
    console.watch.check()  # nothing left over from an earlier test
    yield
    console.watch.check()

"""Shared set-up for the browser tests: Debian's Chromium through Playwright, phone and desktop, English and Chinese."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.asgi_server import AsgiServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery staple"
# Generous: the machine is shared, and a failing expectation waits this long before it fails.
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)
T = TypeVar("T")


@dataclass(frozen=True)
class Screen:
    """A kind of device and its browser's language."""

    name: str
    viewport: dict[str, int]
    locale: str
    mobile: bool = False

    @property
    def chinese(self) -> bool:
        return self.locale.startswith("zh")


DESKTOP_EN = Screen("desktop-en", {"width": 1280, "height": 800}, "en-US")
DESKTOP_ZH = Screen("desktop-zh", {"width": 1280, "height": 800}, "zh-CN")
PHONE_EN = Screen("phone-en", {"width": 390, "height": 844}, "en-US", mobile=True)
PHONE_ZH = Screen("phone-zh", {"width": 390, "height": 844}, "zh-CN", mobile=True)
# Each page item is tried on a phone and a desktop, in English and in Chinese, two combinations a test.
SCREEN_PAIRS = [pytest.param(PHONE_EN, id="phone-en"), pytest.param(DESKTOP_ZH, id="desktop-zh")]
OTHER_PAIRS = [pytest.param(DESKTOP_EN, id="desktop-en"), pytest.param(PHONE_ZH, id="phone-zh")]


@pytest.fixture(scope="module")
def asgi_server(django_db_setup, openai_server) -> Iterator[AsgiServer]:
    with AsgiServer(openai_base_url=openai_server.base_url, extra_env={"SITE_URL": ""}) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright's sync API keeps an event loop on this thread, so Django would take the tests' plain ORM
    # calls for async code. They are not; the app under test runs in its own process without this flag.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def open_context(browser: Browser, screen: Screen, **options: Any) -> BrowserContext:
    """A fresh browser profile for `screen` (no cookies), failing expectations after a generous wait."""
    context = browser.new_context(
        locale=screen.locale,
        viewport=screen.viewport,
        is_mobile=screen.mobile,
        has_touch=screen.mobile,
        device_scale_factor=2 if screen.mobile else 1,
        **options,
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = open_context(browser, DESKTOP_EN)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page: Page, server: AsgiServer, username: str) -> None:
    page.goto(f"{server.url}/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("form[action='/accounts/login/'] button[type=submit]")
    expect(page.locator("#conversation")).to_be_visible()
    # The page's scripts (deferred) have run: Enter sends, the buttons work. A busy machine can be slow to get there.
    page.wait_for_load_state("load")


def screenshot_path(tmp_path: Path, name: str) -> str:
    """Where to keep a screenshot: JARVIS_SCREENSHOT_DIR to look at it later, else the test's temp dir."""
    folder = Path(os.environ.get("JARVIS_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


def eventually(check: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {check.__doc__ or check}")
        time.sleep(interval)


def box(page: Page, selector: str) -> dict[str, float]:
    """The element's box in the viewport (CSS pixels): top, bottom, left, right."""
    return page.eval_on_selector(
        selector,
        "e => { const r = e.getBoundingClientRect();"
        " return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; }",
    )


browser_fixture = browser  # the name other test modules import it by

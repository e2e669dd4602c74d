"""Fixtures for the browser tests: one headless Debian Chromium per session, a fresh context per test.

Playwright's own browser downloads are never used (`playwright install` fails offline):
the system's /usr/bin/chromium is launched directly.
"""
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Screenshots for people to look at; no test reads them back.
SCREENS = Path("/tmp/berth-screens")


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium); `make test` installs it")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(chromium):
    context = chromium.new_context(viewport={"width": 1100, "height": 800})
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture
def screenshot():
    """screenshot(page, name) saves /tmp/berth-screens/<name>.png; failures to save never fail a test."""
    SCREENS.mkdir(parents=True, exist_ok=True)

    def save(page, name):
        try:
            page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)
        except Exception as error:  # a screenshot is for people; the test's assertions stand alone
            print(f"screenshot {name} not saved: {error}")

    return save

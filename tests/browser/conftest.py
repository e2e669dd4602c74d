"""Fixtures for the browser tests: a fresh context per test, in the session's one headless
Chromium (the `chromium` fixture, in tests/conftest.py)."""
from pathlib import Path

import pytest

# Screenshots for people to look at; no test reads them back.
SCREENS = Path("/tmp/berth-screens")


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

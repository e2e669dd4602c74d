"""The attack tests use the browser tests' headless Chromium."""
from tests.browser.conftest import chromium  # noqa: F401 - a fixture

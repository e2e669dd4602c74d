"""End to end in a real headless Chromium, through nginx: sign-in, the spawning page, the tool, stop.

Only the PostgreSQL + Redis variant of the stack runs here (production's components); the
SQLite variant is covered by the integration tests. Screenshots go to /tmp/berth-screens
for people to look at; no assertion depends on them.
"""
import re
import time
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from playwright.sync_api import expect

from tests.integration.test_launch import _host, _wait_state

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True),
]

START = 20_000  # ms: a tool on the process backend starts in well under a second; leave room


class StatusGate:
    """Holds the spawning page's status polls until released.

    A tool on the process backend can be up before a test has looked at the spawning page;
    holding the poll keeps that page on screen. Releasing lets the page's own script carry
    on, so what follows is still the page turning into the tool by itself.
    """

    PATTERN = "**/__berth/status"

    def __init__(self, page):
        self.page = page
        self.held = []
        self.closed = True
        page.route(self.PATTERN, self._hold)

    def _hold(self, route):
        if self.closed:
            self.held.append(route)
        else:
            route.continue_()

    def wait_held(self):
        """Wait until the page has sent its first poll (and it is being held)."""
        deadline = time.monotonic() + 10
        while not self.held:
            if time.monotonic() > deadline:
                raise AssertionError("the spawning page never polled /__berth/status")
            self.page.wait_for_timeout(25)  # lets Playwright deliver the route callback

    def release(self):
        # Continue what is held before unrouting: dropping the interception lets the
        # browser carry on with paused requests by itself.
        self.closed = False
        while self.held:
            self.held.pop(0).continue_()
        self.page.unroute(self.PATTERN, self._hold)


def _sign_in(page, stack, user):
    page.goto(stack.base_url + "/auth/login")
    page.get_by_label("Email").fill(user["email"])
    page.get_by_label("Password").fill(user["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Tools")


def test_login_catalogue_launch_spawning_then_tool(stack, page, screenshot):
    sign_in_launch_use_and_stop(stack, page, screenshot)


def sign_in_launch_use_and_stop(stack, page, screenshot):
    """The whole of a visit: sign in from a tool's deep link, the spawning page turning into the
    tool, the tool and its WebSocket, then Stop on the catalogue (also run over HTTPS)."""
    user = stack.create_user()
    host = _host(stack, "echo", user)
    deep = stack.tool_url("echo", user, "/deep/link?x=1&y=two")
    gate = StatusGate(page)

    # Signed out, a tool's address sends the browser through the sign-in hand-off to the login
    # page, which remembers the way back.
    page.goto(deep)
    expect(page).to_have_url(re.compile("^" + re.escape(stack.base_url + "/auth/login?next=")))
    assert parse_qs(urlsplit(page.url).query)["next"] == [
        f"/auth/handoff?host={host}&next={quote('/deep/link?x=1&y=two', safe='')}"]
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    screenshot(page, "login")

    page.get_by_label("Email").fill(user["email"])
    page.get_by_label("Password").fill(user["password"])
    with page.expect_response(lambda r: r.url == deep and r.request.is_navigation_request()) as landed:
        page.get_by_role("button", name="Sign in").click()
    assert landed.value.status == 202  # the spawning page, served at the tool's own address

    # Back at the deep link, on the spawning page.
    expect(page).to_have_url(deep)
    expect(page.get_by_role("heading", level=1)).to_have_text("Starting Echo")
    expect(page.locator("#progress li").first).to_contain_text("Launch of Echo requested")
    gate.wait_held()
    screenshot(page, "spawning")

    # With no reload from us, the page turns into the tool, still at the deep link.
    gate.release()
    expect(page.locator("body")).to_contain_text('"path": "/deep/link?x=1&y=two"', timeout=START)
    expect(page).to_have_url(deep)
    assert [row["state"] for row in stack.instances(host)] == ["RUNNING"]

    # The tool's own page, and its WebSocket through nginx.
    page.goto(stack.tool_url("echo", user, "/?from=browser"))
    expect(page.locator("h1#title")).to_have_text("Echo is running")
    expect(page.locator("code").first).to_have_text("/?from=browser")
    expect(page.locator("body")).to_have_attribute("data-ws", "open")
    page.locator("input#msg").fill("hello from chromium")
    page.locator("button#send").click()
    expect(page.locator("pre#log")).to_contain_text("echo: hello from chromium")
    screenshot(page, "tool")
    assert len(stack.instances(host)) == 1

    # The catalogue shows it running, and stops it.
    page.goto(stack.base_url + "/")
    card = page.locator('li.card[data-slug="echo"]')
    expect(card.locator(".badge")).to_have_text("Running")
    screenshot(page, "catalogue")
    card.get_by_role("button", name="Stop").click()
    expect(page).to_have_url(stack.base_url + "/")
    expect(page.locator("p.flash")).to_have_text("Stopping Echo.")
    assert _wait_state(stack, host, ("STOPPED",))["state"] == "STOPPED"
    expect(card.locator(".badge")).to_have_text("Stopped")  # the page follows it by itself
    expect(card.get_by_role("button", name="Launch")).to_be_visible()
    assert [row["state"] for row in stack.instances(host)] == ["STOPPED"]


def test_failed_launch_page_shows_reason(stack, page, screenshot):
    user = stack.create_user()
    host = _host(stack, "broken", user)
    _sign_in(page, stack, user)
    dialogs = []

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    gate = StatusGate(page)
    url = stack.tool_url("broken", user, "/")
    first = page.goto(url)
    assert first.status == 202
    expect(page.get_by_role("heading", level=1)).to_have_text("Starting Broken")
    gate.wait_held()
    screenshot(page, "spawning-broken")

    # The page turns into the failed page by itself, at the same address.
    gate.release()
    expect(page.get_by_role("heading", level=1)).to_have_text("Broken did not start", timeout=START)
    expect(page).to_have_url(url)
    log = page.locator("pre.log")
    expect(log).to_contain_text("<script>alert('x')</script> config missing")
    assert "&lt;script&gt;" in log.inner_html()  # shown as text, not markup
    expect(page.locator("main script")).to_have_count(0)
    screenshot(page, "failed")
    assert dialogs == []
    assert [row["state"] for row in stack.instances(host)] == ["FAILED"]


def test_open_tab_does_not_relaunch_a_stopped_tool(stack, context, page, screenshot):
    user = stack.create_user()
    host = _host(stack, "echo", user)
    _sign_in(page, stack, user)

    # Tab A: the spawning page, its poll held so that it is still spawning when the stop lands.
    gate = StatusGate(page)
    first = page.goto(stack.tool_url("echo", user, "/"))
    assert first.status == 202
    expect(page.get_by_role("heading", level=1)).to_have_text("Starting Echo")
    gate.wait_held()
    page.evaluate("window.sameDocument = true")  # gone if the page reloads or navigates

    # Tab B: stop it from the catalogue.
    other = context.new_page()
    other.goto(stack.base_url + "/")
    card = other.locator('li.card[data-slug="echo"]')
    expect(card.locator(".badge")).to_have_text(re.compile("Queued|Spawning|Running"))
    card.get_by_role("button", name="Stop").click()
    expect(other.locator("p.flash")).to_have_text("Stopping Echo.")
    _wait_state(stack, host, ("STOPPED",))
    other.close()

    # Tab A carries on polling, learns of the stop, and says so instead of launching again.
    gate.release()
    expect(page.locator("#stopped")).to_be_visible()
    expect(page.locator("#stopped")).to_contain_text("This tool was stopped")
    expect(page.locator("#spawning")).to_have_attribute("data-state", "STOPPED")
    assert page.evaluate("window.sameDocument === true")  # it did not reload into a new launch
    screenshot(page, "stopped-in-open-tab")
    page.wait_for_timeout(2000)  # give a misbehaving page time to relaunch
    assert [row["state"] for row in stack.instances(host)] == ["STOPPED"]

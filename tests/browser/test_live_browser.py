"""The catalogue follows launches, failures, stops and shares by itself, in a real headless
Chromium: each test marks the page's document, acts elsewhere (another tab, another person),
and watches the same document change, never reloaded."""
import re

import pytest
from playwright.sync_api import expect

from tests.actions import post_form
from tests.browser.test_browser import START, _sign_in
from tests.integration.test_access import _group, _share
from tests.integration.test_launch import _host, _wait_state

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True),
]


def _mark(page):
    page.evaluate("window.sameDocument = true")  # gone if the page reloads or navigates


def _still_the_same_document(page):
    assert page.evaluate("window.sameDocument === true")


def test_the_catalogue_follows_a_launch_a_stop_and_a_failure_without_reloading(stack, context, page, screenshot):
    user = stack.create_user()
    _sign_in(page, stack, user)
    _mark(page)
    echo = page.locator('li.card[data-slug="echo"]')
    expect(echo.get_by_role("button", name="Launch")).to_be_visible()

    # Another tab opens Echo, which launches it; the catalogue shows it start, then run.
    other = context.new_page()
    other.goto(stack.tool_url("echo", user))
    expect(echo.locator(".badge")).to_have_text(re.compile("Queued|Starting|Running"), timeout=START)
    expect(echo.locator(".badge")).to_have_text("Running", timeout=START)
    expect(echo.get_by_role("link", name="Open")).to_be_visible()
    expect(echo.get_by_role("button", name="Stop Echo")).to_be_visible()
    expect(page.locator("#live-announcer")).to_have_text("Echo: Running")
    screenshot(page, "live-running")

    # Stopped from elsewhere: Open and Stop go as soon as it is stopping; Launch comes back.
    instance = stack.instances(_host(stack, "echo", user))[-1]
    post_form(stack.login(user), f"{stack.base_url}/instances/{instance['id']}/stop", page=f"{stack.base_url}/")
    expect(echo.locator(".badge")).to_have_text(re.compile("Stopping|Stopped"), timeout=START)
    expect(echo.get_by_role("link", name="Open")).to_have_count(0)
    expect(echo.get_by_role("button", name="Stop Echo")).to_have_count(0)
    expect(echo.locator(".badge")).to_have_text("Stopped", timeout=START)
    expect(echo.get_by_role("button", name="Launch")).to_be_visible()

    # A launch that fails is shown failed, with its reason and its output, and a retry.
    broken = page.locator('li.card[data-slug="broken"]')
    other.goto(stack.tool_url("broken", user))
    expect(broken.locator(".badge")).to_have_text("Failed", timeout=START)
    expect(broken.locator(".reason")).to_contain_text("exited with code 3")
    broken.get_by_text("Last lines it wrote").click()
    expect(broken.locator("pre.log")).to_contain_text("<script>alert('x')</script> config missing")
    screenshot(page, "live-failed")
    _still_the_same_document(page)

    # The retry launches it again, and the browser goes to its address.
    broken.get_by_role("button", name="Try again").click()
    expect(page).to_have_url(stack.tool_url("broken", user))
    assert len(stack.instances(_host(stack, "broken", user))) == 2  # the other tab's launch, and the retry


def test_a_tool_shared_with_a_user_appears_in_their_open_catalogue(stack, chromium, page):
    owner, colleague = stack.create_user(), stack.create_user()
    as_owner = stack.login(owner)
    stack.open_tool(as_owner, "echo", owner)
    _sign_in(page, stack, colleague)
    _mark(page)
    expect(page.locator("#shared-with-me")).to_be_hidden()

    assert _share(stack, as_owner, "echo", "user", colleague["email"]).status_code == 302
    url = stack.tool_url("echo", owner)
    shared = page.locator(f'li.card[data-shared-host="{url}"]')
    expect(page.locator("#shared-with-me")).to_be_visible(timeout=15_000)
    expect(shared.locator(".badge")).to_have_text("Running")
    expect(shared.get_by_role("link", name="Open")).to_be_visible()

    # The owner stops it: the colleague is told that only its owner can start it.
    instance = stack.instances(_host(stack, "echo", owner))[-1]
    post_form(as_owner, f"{stack.base_url}/instances/{instance['id']}/stop", page=f"{stack.base_url}/")
    _wait_state(stack, _host(stack, "echo", owner), ("STOPPED",))
    expect(shared.locator(".badge")).to_have_text("Not running", timeout=15_000)
    expect(shared).to_contain_text("can start it.")
    expect(shared.get_by_role("link", name="Open")).to_have_count(0)
    _still_the_same_document(page)


def test_the_copy_button_copies_the_address(stack, context, page):
    user = stack.create_user()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.base_url)
    _sign_in(page, stack, user)
    button = page.locator('li.card[data-slug="echo"]').get_by_role("button", name="Copy the address of Echo")
    button.click()
    expect(button).to_have_text(re.compile("Copied|Press Ctrl\\+C"))
    if button.text_content() == "Copied":
        assert page.evaluate("navigator.clipboard.readText()") == stack.tool_url("echo", user)
    else:  # no clipboard for this origin: the address is selected for a manual copy
        assert page.evaluate("String(window.getSelection())") == stack.tool_url("echo", user)


def test_without_javascript_the_catalogue_and_the_starting_page_refresh_themselves(stack, chromium):
    context = chromium.new_context(java_script_enabled=False)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        user = stack.create_user()
        _sign_in(page, stack, user)
        expect(page.get_by_role("link", name="refresh it")).to_be_visible()
        # The starting page reloads a page that follows the launch, and lands on the tool.
        page.goto(stack.tool_url("echo", user, "/?from=nojs"))
        expect(page.locator("h1#title")).to_have_text("Echo is running", timeout=START)
        expect(page).to_have_url(stack.tool_url("echo", user, "/?from=nojs"))
    finally:
        context.close()


def test_sharing_a_stopped_tool_with_suggestions_then_removing_it(stack, page, screenshot):
    owner, colleague = stack.create_user(), stack.create_user()
    group = f"team-{colleague['id']}"
    _group(stack, group, owner, colleague)
    _sign_in(page, stack, owner)
    page.locator('li.card[data-slug="echo"]').get_by_role("link", name="Share Echo").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Share Echo")
    expect(page.locator("p.lede")).to_contain_text("It is not running")

    # The name field suggests the people who share a group with the owner, or the owner's groups.
    name = page.get_by_label("Email or group name")
    expect(name).to_have_attribute("list", "grant-suggestions-user")
    expect(page.locator(f'#grant-suggestions-user option[value="{colleague["email"]}"]')).to_have_count(1)
    page.get_by_label("Share with").select_option("group")
    expect(name).to_have_attribute("list", "grant-suggestions-group")
    expect(page.locator(f'#grant-suggestions-group option[value="{group}"]')).to_have_count(1)
    page.get_by_label("Share with").select_option("user")
    name.fill(colleague["email"])
    page.get_by_role("button", name="Share", exact=True).click()
    expect(page.locator("p.flash")).to_have_text(f"{colleague['email']} can now open your Echo.")
    screenshot(page, "sharing-stopped")

    page.get_by_role("button", name=f"Remove {colleague['email']}").click()
    expect(page.locator("p.flash")).to_have_text(f"{colleague['email']} can no longer open your Echo.")
    expect(page.get_by_text("Nobody else. Only you can open it.")).to_be_visible()

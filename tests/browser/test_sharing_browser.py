"""Sharing a tool from the UI, and an administrator stopping it, in a real headless Chromium.

Three people in three browser contexts (separate cookie jars): the owner launches Echo and shares
it with a colleague from the sharing page; the colleague finds it under "Shared with you" and
uses it, WebSocket included; an administrator stops it from the admin pages; the colleague is
then told that only its owner can start it again.
"""
import pytest
from playwright.sync_api import expect

from tests.browser.test_browser import START, _sign_in
from tests.integration.test_launch import _host, _wait_state

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True),
]


@pytest.fixture
def new_page(chromium):
    contexts = []

    def make():
        context = chromium.new_context(viewport={"width": 1100, "height": 800})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def test_share_a_tool_from_the_ui_then_an_admin_stops_it(stack, new_page, screenshot):
    owner, colleague = stack.create_user(), stack.create_user()
    admin = stack.create_user(is_admin=True)
    host = _host(stack, "echo", owner)
    url = stack.tool_url("echo", owner)

    # The owner launches Echo from the catalogue.
    as_owner = new_page()
    _sign_in(as_owner, stack, owner)
    as_owner.locator('li.card[data-slug="echo"]').get_by_role("button", name="Launch").click()
    expect(as_owner.locator("h1#title")).to_have_text("Echo is running", timeout=START)

    # ... and shares it from its sharing page.
    as_owner.goto(stack.base_url + "/")
    as_owner.get_by_role("link", name="Share Echo", exact=True).click()
    expect(as_owner.get_by_role("heading", level=1)).to_have_text("Share Echo")
    expect(as_owner.get_by_text("Nobody else. Only you can open it.")).to_be_visible()
    as_owner.get_by_label("Share with").select_option("user")
    as_owner.get_by_label("Email or group name").fill(colleague["email"])
    as_owner.get_by_role("button", name="Share", exact=True).click()
    expect(as_owner.locator("p.flash")).to_have_text(f"{colleague['email']} can now open your Echo.")
    expect(as_owner.locator("table.list")).to_contain_text(colleague["email"])
    screenshot(as_owner, "sharing")

    # The colleague finds it under "Shared with you" and uses it, at the owner's address.
    as_colleague = new_page()
    _sign_in(as_colleague, stack, colleague)
    shared = as_colleague.locator(f'li.card[data-shared-host="{url}"]')
    expect(shared.locator(".badge")).to_have_text("Running")
    screenshot(as_colleague, "shared-with-me")
    shared.get_by_role("link", name="Open").click()
    expect(as_colleague.locator("h1#title")).to_have_text("Echo is running")
    expect(as_colleague.locator("body")).to_have_attribute("data-ws", "open")
    as_colleague.locator("input#msg").fill("hello from a colleague")
    as_colleague.locator("button#send").click()
    expect(as_colleague.locator("pre#log")).to_contain_text("echo: hello from a colleague")
    assert len(stack.instances(host)) == 1

    # An administrator stops it from the instances page, with the keyboard.
    as_admin = new_page()
    _sign_in(as_admin, stack, admin)
    [instance] = stack.instances(host)
    as_admin.goto(f"{stack.base_url}/admin/instances?state=LIVE")
    row = as_admin.locator(f'tr[data-instance="{instance["id"]}"]')
    expect(row.locator(".badge")).to_have_text("Running")
    screenshot(as_admin, "admin-instances")
    stop = row.get_by_role("button", name=f"Stop Echo of {owner['email']}")
    stop.focus()
    as_admin.keyboard.press("Enter")  # asks first
    as_admin.keyboard.press("Tab")
    expect(as_admin.locator(":focus")).to_have_text("Yes, stop it")
    as_admin.keyboard.press("Enter")
    expect(as_admin.locator("p.flash")).to_have_text(f"Stopping Echo of {owner['email']}.")
    assert _wait_state(stack, host, ("STOPPED",))["state"] == "STOPPED"
    [stop_event] = stack.query("SELECT actor FROM events WHERE kind = 'instance.stop' AND instance_id = :id",
                               id=instance["id"])
    assert stop_event["actor"] == f"admin:{admin['id']}"

    # The colleague cannot start it again; only its owner can.
    as_colleague.goto(url)
    expect(as_colleague.get_by_role("heading", level=1)).to_have_text("Echo is not running")
    expect(as_colleague.locator("main")).to_contain_text("Only its owner can start it.")
    screenshot(as_colleague, "shared-not-running")
    assert [row["state"] for row in stack.instances(host)] == ["STOPPED"]

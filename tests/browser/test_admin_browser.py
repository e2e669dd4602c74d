"""The admin pages in a real Chromium: they render, and an administrator can work them from the keyboard.

Screenshots go to /tmp/berth-screens for people to look at; no assertion depends on them.
"""
import pytest
from playwright.sync_api import expect

from tests.browser.test_browser import _sign_in
from tests.integration.test_launch import _host, _wait_state

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True),
]


def test_an_administrator_tabs_to_stop_and_presses_enter(stack, page, screenshot):
    admin = stack.create_user(is_admin=True)
    owner = stack.create_user()
    with stack.login(owner) as browser:
        stack.open_tool(browser, "echo", owner)
    _sign_in(page, stack, admin)

    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Users")
    screenshot(page, "admin-users")

    # A template with a bad field: each error shows next to its field, and in a summary at the top.
    page.goto(stack.base_url + "/admin/templates/new")
    page.get_by_label("Slug", exact=True).fill("Not A Slug")
    page.get_by_label("Name", exact=True).fill("Broken form")
    page.get_by_label("IP allowlist").fill("10.0.0.1/8")
    page.get_by_label("Spawn timeout (seconds)").fill("soon")
    page.get_by_role("button", name="Create template").click()
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved.")
    expect(page.locator('[data-field="ip_allowlist"] .field-error')).to_contain_text("did you mean 10.0.0.0/8")
    expect(page.get_by_label("Slug", exact=True)).to_have_attribute("aria-invalid", "true")
    screenshot(page, "admin-template-errors")

    page.goto(stack.base_url + f"/admin/instances?user={owner['email']}")
    screenshot(page, "admin-instances")
    # The first Tab reaches the skip link; then Tab on to the Stop button, and Enter presses it.
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    stop = page.get_by_role("button", name=f"Stop Echo of {owner['email']}")
    for _ in range(40):
        page.keyboard.press("Tab")
        if stop.evaluate("button => button === document.activeElement"):
            break
    else:
        raise AssertionError("Tab never reached the Stop button")
    screenshot(page, "admin-instances-stop-focused")
    # Enter asks first; Tab on to the confirmation's own button, and Enter stops the tool.
    page.keyboard.press("Enter")
    expect(page.get_by_text(f"Stop Echo of {owner['email']}? Work not saved in it is lost.")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Yes, stop it")
    screenshot(page, "admin-instances-stop-confirm")
    page.keyboard.press("Enter")
    expect(page.locator(".flash")).to_contain_text(f"Stopping Echo of {owner['email']}")
    _wait_state(stack, _host(stack, "echo", owner), ("STOPPED",))

    page.goto(stack.base_url + "/admin/groups")
    page.get_by_label("Name").fill("analysts")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("analysts")
    screenshot(page, "admin-group")

    # Add user, into that group, with a temporary password that signs them in.
    page.goto(stack.base_url + "/admin/users")
    page.get_by_role("link", name="Add user").click()
    page.get_by_label("Email").fill(owner["email"])
    page.get_by_role("button", name="Add user").click()
    expect(page.locator('[data-field="email"] .field-error')).to_have_text(
        f"There is a user with the email {owner['email']} already.")
    page.get_by_label("Email").fill("grace@example.org")
    page.get_by_label("Name").fill("Grace Hopper")
    page.get_by_label("analysts", exact=True).check()
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("grace@example.org added")
    temporary = page.get_by_role("textbox", name="Temporary password").input_value()
    screenshot(page, "admin-user-added")
    page.get_by_role("link", name="Open grace@example.org").click()
    expect(page.get_by_label("analysts", exact=True)).to_be_checked()
    with stack.login({"email": "grace@example.org", "password": temporary}):
        pass  # signs in
    for path, name in ((f"/admin/users/{owner['id']}", "admin-user"), ("/admin/templates", "admin-templates"),
                       ("/admin/usage", "admin-usage"), ("/admin/audit", "admin-audit")):
        page.goto(stack.base_url + path)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        screenshot(page, name)

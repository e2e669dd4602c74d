"""Single sign-on, the Account page and API tokens, end to end in a real headless Chromium through
nginx, against the real test OpenID provider; the API is driven with curl.

Only the PostgreSQL + Redis variant of the stack runs here, as in test_browser.py.
"""
import json
import re
import subprocess
import time

import pytest
from playwright.sync_api import expect

from berth.tokens import TOKEN_REFUSALS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True),
]


def _sso_sign_in(page, stack, account, start_url=None):
    """From a Berth address, through the sign-in page and the provider's forms, back to Berth."""
    page.goto(start_url or stack.base_url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_role("link", name="Sign in with Test Identity Provider").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to the test provider")
    page.get_by_label("Username").fill(account["email"])
    page.get_by_label("Password").fill(account["password"])
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Allow access?")
    page.get_by_role("button", name="Allow").click()


def _curl(*args):
    """curl, as an API client runs it: returns (status, parsed JSON body)."""
    done = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "20", "--write-out", "\n%{http_code}",
                           *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


def test_a_new_user_signs_in_through_the_provider_and_lands_on_the_catalogue(stack, oidc_provider, page, screenshot):
    account = oidc_provider.add_account(name="Marie Curie", groups=["physics"])
    page.goto(stack.base_url + "/")
    expect(page).to_have_url(re.compile(re.escape(stack.base_url + "/auth/login?next=")))
    screenshot(page, "sso-login")
    _sso_sign_in(page, stack, account)
    expect(page).to_have_url(stack.base_url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Tools")
    expect(page.locator(".who")).to_have_text("Marie Curie")
    screenshot(page, "sso-catalogue")
    [user] = stack.query("SELECT oidc_subject FROM users WHERE email = :e", e=account["email"])
    assert user["oidc_subject"] == account["sub"]


def test_a_token_made_in_the_ui_drives_the_api_with_curl_until_it_is_revoked(stack, oidc_provider, page, screenshot):
    account = oidc_provider.add_account(name="Rosalind Franklin")
    _sso_sign_in(page, stack, account)
    expect(page.get_by_role("heading", level=1)).to_have_text("Tools")
    page.get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Account")
    expect(page.locator("#sessions tbody tr")).to_have_count(1)
    expect(page.locator("#sessions tbody tr")).to_contain_text("This browser")

    # With the keyboard only: name, lifetime, scope, create.
    page.get_by_label("Name").focus()
    page.keyboard.type("curl from the browser test")
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # 30 days → 90 days
    page.keyboard.press("Tab")
    page.keyboard.press("ArrowDown")  # read-only → launch
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("Your new token"))).to_be_visible()
    token = page.locator("#new-token-value").input_value()
    assert token.startswith("berth_")
    row = page.locator("#tokens tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("curl from the browser test")
    expect(row).to_contain_text(token[:12] + "…")
    screenshot(page, "account-new-token")

    auth = ["-H", f"Authorization: Bearer {token}"]
    status, started = _curl(*auth, "-H", "Content-Type: application/json", "-X", "POST",
                            "--data", json.dumps({"tool": "echo-api", "size": "small"}),
                            f"{stack.base_url}/api/instances")
    assert status == 202, started
    assert started["state"] == "QUEUED" and started["size"]["name"] == "small"
    deadline = time.monotonic() + 20
    while True:
        status, instance = _curl(*auth, f"{stack.base_url}/api/instances/{started['id']}")
        assert status == 200, instance
        if instance["state"] == "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert instance["state"] == "RUNNING", instance
    status, tool = _curl(*auth, started["url"] + "headers")  # the tool's own address takes the token too
    assert status == 200 and "Authorization" not in tool["headers"]

    # The page lists the token as used; revoke it there.
    page.reload()
    expect(page.get_by_role("heading", name=re.compile("Your new token"))).to_have_count(0)
    expect(page.locator("#tokens tbody tr td").nth(4)).not_to_have_text("never")
    screenshot(page, "account")
    page.get_by_role("button", name="Revoke token curl from the browser test").click()
    page.get_by_role("button", name="Yes, revoke").click()
    expect(page.locator("p.flash")).to_have_text("The token is revoked: it is refused from now on.")
    expect(page.locator("#tokens tbody tr")).to_have_count(0)

    status, refused = _curl(*auth, "-H", "Accept: text/html", f"{stack.base_url}/api/instances")
    assert status == 401 and refused["error"] == TOKEN_REFUSALS["revoked"]
    status, refused = _curl(*auth, "-X", "POST", f"{stack.base_url}/api/instances/{started['id']}/stop")
    assert status == 401
    # Stopped from the page's own session instead, through the catalogue.
    page.goto(stack.base_url + "/")
    page.locator('li.card[data-slug="echo-api"]').get_by_role("button", name="Stop").click()
    expect(page.locator("p.flash")).to_have_text("Stopping Echo for API clients.")


def test_logout_ends_the_session_everywhere_and_at_the_provider(stack, oidc_provider, context, page, screenshot):
    account = oidc_provider.add_account(name="Lise Meitner")
    _sso_sign_in(page, stack, account)
    expect(page.get_by_role("heading", level=1)).to_have_text("Tools")
    [user] = stack.query("SELECT host_key, address_name FROM users WHERE email = :e", e=account["email"])
    tool = stack.tool_url("echo", user, "/deep/page")
    # A second tab on a tool host, signed in by the same cookie.
    other = context.new_page()
    answer = other.goto(stack.tool_url("echo", user, "/__berth/status"))
    assert answer.status == 200

    page.get_by_role("link", name="Sign out").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign out")
    page.get_by_role("button", name="Sign out").click()
    # The provider asks to sign out there too, then sends the browser back to Berth.
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign out of the test provider?")
    screenshot(page, "sso-provider-logout")
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page).to_have_url(stack.base_url + "/auth/login?signed_out=1")
    expect(page.locator("p.flash")).to_have_text("You are signed out.")

    # The tool host, in the other tab, now sends the browser to sign in.
    other.goto(tool)
    expect(other).to_have_url(re.compile(re.escape(stack.base_url + "/auth/login?next=")))
    # And the provider asks for the password again: its session ended too.
    other.get_by_role("link", name="Sign in with Test Identity Provider").click()
    expect(other.get_by_role("heading", level=1)).to_have_text("Sign in to the test provider")


def test_cancelling_at_the_provider_shows_a_page_that_offers_to_try_again(stack, oidc_provider, page, screenshot):
    account = oidc_provider.add_account()
    page.goto(stack.base_url + "/auth/login")
    page.get_by_role("link", name="Sign in with Test Identity Provider").click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in cancelled")
    expect(page.get_by_role("alert")).to_contain_text("The user declined to sign in.")
    screenshot(page, "sso-cancelled")
    # Trying again from that page works.
    page.get_by_role("link", name="Sign in with Test Identity Provider again").click()
    page.get_by_label("Username").fill(account["email"])
    page.get_by_label("Password").fill(account["password"])
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Tools")

"""The end-to-end visit in a real Chromium over HTTPS: nginx serves the test CA's wildcard
certificate (Chromium trusts that CA's key, see the `chromium` fixture), Berth's cookies are
Secure under `__Host-`, tool hosts live on a domain of their own, and the tool's WebSocket is wss."""
import pytest
from playwright.sync_api import expect

from tests.browser.test_browser import sign_in_launch_use_and_stop

pytestmark = pytest.mark.browser


def test_sign_in_launch_use_and_stop_over_https(https_stack, context, page, screenshot):
    sign_in_launch_use_and_stop(https_stack, page, screenshot)
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    assert cookies["__Host-berth_session"]["secure"] and cookies["__Host-berth_session_tool"]["secure"]
    assert not {"berth_session", "berth_session_tool"} & set(cookies)


def test_a_plain_http_address_takes_the_browser_to_https(https_stack, page):
    plain = f"http://berth.localhost:{https_stack.env['BERTH_HTTP_REDIRECT_PORT']}/auth/login"
    page.goto(plain)
    expect(page).to_have_url(https_stack.base_url + "/auth/login")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")

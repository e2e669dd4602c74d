"""A link from another site, or from another user's tool, to a tool that is not running never
starts it by itself: the browser lands on Berth's own "Start it?" page, and only a click there
starts it. The user's own typing, bookmark or reload (Fetch Metadata "none" or "same-origin")
still starts it at once.
"""
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect

from tests.actions import form_token
from tests.browser.test_browser import _sign_in
from tests.integration.test_launch import _host

pytestmark = pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_navigation_from_another_site_asks_on_berths_page_and_starts_nothing(stack, site):
    user = stack.create_user()
    browser = stack.login(user)
    url = stack.tool_url("echo", user, "/deep/path?x=1")

    answer = stack.navigate(browser, url, **{"Sec-Fetch-Site": site, "Accept": "text/html"})

    assert answer.status_code == 303
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == stack.base_url and location.path == "/launch/echo"
    assert parse_qs(location.query) == {"next": ["/deep/path?x=1"]}
    assert stack.instances(_host(stack, "echo", user)) == []
    # Berth's page asks, and asking starts nothing either.
    page = browser.get(answer.headers["Location"], timeout=10)
    assert page.status_code == 200 and "Start Echo?" in page.text
    assert stack.instances(_host(stack, "echo", user)) == []


def test_the_users_own_navigation_still_starts_the_tool_at_once(stack):
    user = stack.create_user()
    browser = stack.login(user)
    answer = stack.navigate(browser, stack.tool_url("echo", user), **{"Sec-Fetch-Site": "none",
                                                                      "Accept": "text/html"})
    assert answer.status_code == 202
    assert [row["state"] for row in stack.instances(_host(stack, "echo", user))] in (["QUEUED"], ["SPAWNING"],
                                                                                     ["RUNNING"])


def test_starting_from_berths_page_needs_its_form_and_goes_only_to_a_path_of_the_tool(stack):
    user = stack.create_user()
    browser = stack.login(user)
    # Without the page's CSRF token, or from another origin, nothing starts.
    assert browser.post(f"{stack.base_url}/launch/echo", timeout=10, allow_redirects=False).status_code == 400
    token = form_token(browser, f"{stack.base_url}/launch/echo?next=/x")
    foreign = browser.post(f"{stack.base_url}/launch/echo", data={"csrf_token": token}, timeout=10,
                           allow_redirects=False, headers={"Origin": stack.tool_url("echo", user, "").rstrip("/")})
    assert foreign.status_code == 403
    assert stack.instances(_host(stack, "echo", user)) == []
    # With both, it starts, and a next that leads off the tool's host is dropped.
    started = browser.post(f"{stack.base_url}/launch/echo", params={"next": "//evil.example/"},
                           data={"csrf_token": token}, timeout=10, allow_redirects=False)
    assert started.status_code == 302
    assert started.headers["Location"] == stack.tool_url("echo", user, "/")
    assert len(stack.instances(_host(stack, "echo", user))) == 1


@pytest.mark.browser
def test_in_chromium_a_foreign_pages_link_leads_to_the_question_and_the_click_starts_it(stack, chromium):
    user = stack.create_user()
    context = chromium.new_context()
    try:
        context.set_default_timeout(20_000)
        _sign_in(context.new_page(), stack, user)
        url = stack.tool_url("echo", user, "/from-a-link")
        # A page of no site of Berth's (an opaque origin) links to the user's tool.
        foreign = context.new_page()
        foreign.set_content(f'<a id="go" href="{url}">an innocent link</a>')
        foreign.click("#go")
        expect(foreign.get_by_role("heading", level=1)).to_have_text("Start Echo?")
        assert stack.instances(_host(stack, "echo", user)) == []
        foreign.get_by_role("button", name="Start Echo").click()
        expect(foreign.locator("h1#title")).to_have_text("Echo is running", timeout=30_000)
        assert foreign.url == url
        assert len(stack.instances(_host(stack, "echo", user))) == 1
    finally:
        context.close()

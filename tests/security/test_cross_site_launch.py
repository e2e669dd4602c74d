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


def _navigate_from(stack, browser, url, site):
    """A navigation that a page of another site (or another tool's) started, as a browser makes
    it: every hop of the sign-in hand-off carries the same Sec-Fetch-Site, since the browser
    counts the whole chain. The last answer, not followed."""
    headers = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": site, "Accept": "text/html"}
    answer = browser.get(url, headers=headers, allow_redirects=False, timeout=10)
    if answer.status_code == 302 and answer.headers["Location"].startswith(f"{stack.base_url}/auth/handoff?"):
        code = browser.get(answer.headers["Location"], headers=headers, allow_redirects=False, timeout=10)
        assert "&launch=" not in code.headers["Location"]  # no pass for another site's navigation
        browser.get(code.headers["Location"], headers=headers, allow_redirects=False, timeout=10)
        answer = browser.get(url, headers=headers, allow_redirects=False, timeout=10)
    return answer


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_navigation_from_another_site_asks_on_berths_page_and_starts_nothing(stack, site):
    user = stack.create_user()
    browser = stack.login(user)
    url = stack.tool_url("echo", user, "/deep/path?x=1")

    answer = _navigate_from(stack, browser, url, site)

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
        expect(foreign.locator("body")).to_contain_text('"path": "/from-a-link"', timeout=30_000)
        assert foreign.url == url
        assert len(stack.instances(_host(stack, "echo", user))) == 1
    finally:
        context.close()


def test_a_forged_or_borrowed_launch_pass_starts_nothing(stack):
    """The pass that the hand-off sets for the user's own navigation is signed for one tool
    host: one made up, or one for another host (the attacker's own tool), counts for nothing."""
    from berth.web.launch_pass import launch_pass, pass_cookie_name

    user, attacker = stack.create_user(), stack.create_user()
    browser = stack.login(user)
    name = pass_cookie_name(stack.config)
    attackers_own = launch_pass(stack.config["SECRET_KEY"], _host(stack, "echo", attacker))
    for value in ("9999999999.0000", attackers_own):
        browser.cookies.set(name, value, domain=_host(stack, "echo", user))
        answer = _navigate_from(stack, browser, stack.tool_url("echo", user), "cross-site")
        assert answer.status_code == 303 and "/launch/echo?" in answer.headers["Location"]
    assert stack.instances(_host(stack, "echo", user)) == []

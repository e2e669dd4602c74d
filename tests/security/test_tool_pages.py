"""A hostile tool's page, opened in real Chromium by another signed-in user (an administrator
too), tries to act as them: plant cookies for the whole domain, submit Berth's forms with the
attacker's own CSRF token, plant the attacker's session, and open a WebSocket to the visitor's
own tool. Each attempt fails.
"""
import json
from urllib.parse import quote

import pytest

from tests.actions import form_token
from tests.browser.test_browser import _sign_in
from tests.security.test_tool_isolation import hostile_catalogue  # noqa: F401 - a fixture

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True),
]


def _attacker_form_token(stack, browser):
    """The attacker's own CSRF cookie, and a form token that goes with it."""
    token = form_token(browser, stack.base_url + "/account")
    return browser.cookies.get("berth_csrf"), token


def _share_hostile_tool(stack, attacker, visitor):
    """The attacker shares their hostile tool with the visitor, so that the visitor may open it."""
    host = stack.tool_url("hostile", attacker).split("//")[1].split(":")[0]
    with stack.app.app_context():
        from berth.access import add_grant
        from berth.extensions import db
        from berth.models import ToolTemplate, User

        template = db.session.execute(db.select(ToolTemplate).filter_by(slug="hostile")).scalar_one()
        add_grant(db.session.get(User, attacker["id"]), template, host, actor="test", email=visitor["email"])
        db.session.commit()


def _visit(chromium, stack, visitor, url):
    """The visitor, signed in, opens url; returns what the page logged and its WebSocket's fate."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        _sign_in(page, stack, visitor)
        page.goto(url)
        page.wait_for_selector("body[data-done=yes]")
        page.wait_for_timeout(500)
        outcome = {"log": page.inner_text("#log"),
                   "websocket": page.evaluate("document.body.dataset.websocket || ''")}
        # Back on Berth's own pages: is the visitor still themself?
        for name, path in (("catalogue", "/"), ("account", "/account")):
            answer = page.goto(stack.base_url + path)
            outcome[f"{name}_status"] = answer.status
            outcome[f"{name}_text"] = page.inner_text("body")
        return outcome
    finally:
        context.close()


def _evil_url(stack, attacker, **plan):
    query = "&".join(f"{key}={quote(str(value), safe='')}" for key, value in plan.items())
    return stack.tool_url("hostile", attacker, f"/evil?{query}")


@pytest.fixture
def attack_setup(stack, hostile_catalogue):
    attacker = stack.create_user()
    as_attacker = stack.login(attacker)
    stack.open_tool(as_attacker, "hostile", attacker)
    csrf_cookie, token = _attacker_form_token(stack, as_attacker)
    session = as_attacker.cookies.get("berth_session")
    return attacker, csrf_cookie, token, session


def test_a_tool_page_cannot_make_its_author_an_admin_through_a_visiting_admin(stack, chromium, attack_setup):
    attacker, csrf_cookie, token, _ = attack_setup
    admin = stack.create_user(is_admin=True)
    _share_hostile_tool(stack, attacker, admin)
    outcome = _visit(chromium, stack, admin, _evil_url(
        stack, attacker, domain=stack.env["BERTH_DOMAIN"], csrf_cookie=csrf_cookie,
        form_action=f"{stack.base_url}/admin/users/{attacker['id']}/flags",
        form_fields=json.dumps({"csrf_token": token, "is_active": "1", "is_admin": "1"})))
    assert "form sent" in outcome["log"] and "planted csrf" in outcome["log"]
    [row] = stack.query("SELECT is_admin FROM users WHERE id = :id", id=attacker["id"])
    assert not row["is_admin"]


def test_a_tool_page_cannot_make_a_visitor_share_their_tool_with_its_author(stack, chromium, attack_setup):
    attacker, csrf_cookie, token, _ = attack_setup
    victim = stack.create_user()
    stack.open_tool(stack.login(victim), "echo", victim)
    _share_hostile_tool(stack, attacker, victim)
    _visit(chromium, stack, victim, _evil_url(
        stack, attacker, domain=stack.env["BERTH_DOMAIN"], csrf_cookie=csrf_cookie,
        form_action=f"{stack.base_url}/sharing/echo",
        form_fields=json.dumps({"csrf_token": token, "kind": "user", "name": attacker["email"]})))
    grants = stack.query("SELECT * FROM tool_grants WHERE owner_id = :owner", owner=victim["id"])
    assert grants == []


def test_a_tool_page_cannot_open_a_websocket_to_the_visitors_own_tool(stack, chromium, attack_setup):
    attacker, _, _, _ = attack_setup
    victim = stack.create_user()
    stack.open_tool(stack.login(victim), "echo", victim)
    _share_hostile_tool(stack, attacker, victim)
    target = stack.tool_url("echo", victim, "/ws").replace("http://", "ws://")
    outcome = _visit(chromium, stack, victim, _evil_url(stack, attacker, domain=stack.env["BERTH_DOMAIN"],
                                                         websocket=target))
    assert outcome["websocket"] == "refused", outcome


def test_a_tool_page_cannot_slip_its_authors_session_into_a_signed_in_visitor(stack, chromium, attack_setup):
    attacker, _, _, session = attack_setup
    victim = stack.create_user()
    _share_hostile_tool(stack, attacker, victim)
    outcome = _visit(chromium, stack, victim, _evil_url(
        stack, attacker, domain=stack.env["BERTH_DOMAIN"], session=session, session_cookie="berth_session"))
    assert "planted session" in outcome["log"]
    # The visitor's own cookie is host-only, so the planted copy for the whole domain sits beside
    # it (plain HTTP has no __Host- prefix to refuse it): wherever both are sent, Berth trusts
    # neither, and never shows the attacker's account.
    for name in ("catalogue", "account"):
        assert outcome[f"{name}_status"] == 403, name
        assert "two Berth session cookies" in outcome[f"{name}_text"]
        assert attacker["email"] not in outcome[f"{name}_text"]


def test_chromium_never_sends_the_platform_session_to_a_tool_host(stack, chromium, attack_setup):
    """The session cookie is host-only: real Chromium keeps it for the main host alone, and a
    tool host gets a cookie of its own, for that host alone, from the sign-in hand-off."""
    attacker = attack_setup[0]
    visitor = stack.create_user()
    _share_hostile_tool(stack, attacker, visitor)
    tool_host = stack.tool_host("hostile", attacker)
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        _sign_in(page, stack, visitor)
        sent = []
        page.on("request", lambda request: sent.append(request))
        landed = page.goto(stack.tool_url("hostile", attacker, "/"))
        assert landed.status == 200 and page.url == stack.tool_url("hostile", attacker, "/")
        # Through the hand-off: tool host, main host, tool host's /__berth/handoff, tool host.
        hosts = [request.url.split("//", 1)[1].split(":", 1)[0] for request in sent]
        assert hosts == [tool_host, "berth.localhost", tool_host, tool_host], hosts
        # What Chromium sent to the tool host, as it sent it: never the session cookie.
        for request in sent:
            cookies = request.all_headers().get("cookie", "")
            names = {part.split("=", 1)[0].strip() for part in cookies.split(";") if part.strip()}
            if request.url.startswith(stack.tool_url("hostile", attacker, "")):
                assert "berth_session" not in names, (request.url, names)
            else:
                assert "berth_session_tool" not in names, (request.url, names)
        assert "berth_session_tool" in names  # the last request, the tool's own page
        # Chromium's own cookie store agrees: each cookie is for one host only.
        for_tool = {cookie["name"]: cookie for cookie in context.cookies(stack.tool_url("hostile", attacker))}
        for_main = {cookie["name"]: cookie for cookie in context.cookies(stack.base_url)}
        assert "berth_session" not in for_tool and "berth_session_tool" not in for_main
        assert for_tool["berth_session_tool"]["domain"] == tool_host and for_tool["berth_session_tool"]["httpOnly"]
        assert for_main["berth_session"]["domain"] == "berth.localhost" and for_main["berth_session"]["httpOnly"]
    finally:
        context.close()


# -- The default install: tools on a site of their own ------------------------------------------

@pytest.fixture(scope="module")
def tools_site(dockerd, tmp_path_factory, hostile_catalogue):
    """A Berth as `make run` starts it: tools under berth-tools.localhost, another site than
    berth.localhost (BERTH_TOOLS_DOMAIN)."""
    from tests.conftest import _make_stack

    stack = _make_stack("tools-site", None, None, tmp_path_factory.mktemp("tools-site"), dockerd.url,
                        extra_env={"BERTH_TOOLS_DOMAIN": "berth-tools.localhost"})
    stack.start()
    loaded = stack.berth("catalogue", "load", hostile_catalogue)
    assert loaded.returncode == 0, loaded.stderr
    yield stack
    stack.stop()


@pytest.mark.parametrize("domain", ["berth.localhost", "localhost", "berth-tools.localhost"])
def test_on_a_tools_site_a_tool_page_plants_no_session_even_for_a_visitor_who_signs_out(
        tools_site, chromium, domain):
    """The attack that plain HTTP allows under one domain: a tool's page writes the author's
    session for the whole domain, and a visitor who is signed out (or signs out) then works in
    the author's account. With tools on a site of their own, Chromium refuses the cookie for
    Berth's host or a parent of it: after signing out, the visitor is simply signed out."""
    stack = tools_site
    attacker, visitor = stack.create_user(), stack.create_user()
    as_attacker = stack.login(attacker)
    stack.open_tool(as_attacker, "hostile", attacker)
    session = as_attacker.cookies.get("berth_session")
    _share_hostile_tool(stack, attacker, visitor)
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(20_000)
        _sign_in(page, stack, visitor)
        page.goto(_evil_url(stack, attacker, domain=domain, session=session, session_cookie="berth_session"))
        page.wait_for_selector("body[data-done=yes]")
        assert "planted session" in page.inner_text("#log")
        # Still themself on Berth's pages: nothing was planted beside their own cookie.
        answer = page.goto(stack.base_url + "/account")
        assert answer.status == 200 and visitor["email"] in page.inner_text("body")
        assert attacker["email"] not in page.inner_text("body")
        planted = [cookie for cookie in context.cookies(stack.base_url) if cookie["value"] == session]
        assert planted == [], planted
        # Signed out, and so with no cookie of their own to collide with, they are not the author.
        page.get_by_role("navigation").get_by_role("link", name="Sign out").click()
        page.get_by_role("button", name="Sign out").click()
        for path in ("/", "/account"):
            page.goto(stack.base_url + path)
            assert "/auth/login" in page.url, page.url
            assert attacker["email"] not in page.inner_text("body")
    finally:
        context.close()

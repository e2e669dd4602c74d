"""Signing in and out through the real nginx: the login form, the session cookie, where
`next` may send a browser, and what a missing, broken, expired or revoked cookie gets."""
import hashlib
import html
import re
from urllib.parse import quote

import pytest
import requests

from tests.actions import csrf_token, form_token, post_login

COOKIE = "berth_session"
NEXT_FIELD = re.compile(r'<input type="hidden" name="next" value="([^"]*)">')


def _csrf_token(stack, browser):
    """Open the login form in browser (which gets Flask's CSRF cookie) and return its token."""
    return form_token(browser, f"{stack.base_url}/auth/login")


def _post_login(stack, browser, token, user, next_url="/", password=None):
    return post_login(browser, stack.base_url, token, user["email"], password or user["password"], next_url)


def _set_cookies(response, name):
    """The Set-Cookie headers for name, each as (value, {attribute: value})."""
    found = []
    for header in response.raw.headers.getlist("Set-Cookie"):
        first, *attributes = [part.strip() for part in header.split(";")]
        cookie_name, _, value = first.partition("=")
        if cookie_name == name:
            found.append((value, {k.lower(): v for k, _, v in (a.partition("=") for a in attributes)}))
    return found


def _session_cookie(response):
    """The session cookie a sign-in sets, beside the deletion of any copy scoped to the whole
    domain (which earlier versions set): (value, attributes)."""
    [legacy] = [cookie for cookie in _set_cookies(response, COOKIE) if "domain" in cookie[1]]
    assert legacy[0] == "" and legacy[1]["max-age"] == "0" and legacy[1]["domain"] == "berth.localhost"
    [cookie] = [cookie for cookie in _set_cookies(response, COOKIE) if "domain" not in cookie[1]]
    return cookie


def _session_token(response):
    return _session_cookie(response)[0]


def _hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def _get(url, cookie=None, **headers):
    """One request with exactly the Cookie header given, as an attacker or a stale tab sends it."""
    if cookie is not None:
        headers["Cookie"] = cookie
    return requests.get(url, headers=headers, allow_redirects=False, timeout=10)


def _login_redirect(stack, original):
    return f"{stack.base_url}/auth/login?next={quote(original, safe='')}"


def _handoff_redirect(stack, host, path):
    return f"{stack.base_url}/auth/handoff?host={host}&next={quote(path, safe='')}"


# -- the login form -----------------------------------------------------------------------

def test_login_form_sets_a_host_only_session_cookie_and_redirects_to_next(stack, alice):
    with requests.Session() as browser:
        form = browser.get(f"{stack.base_url}/auth/login", headers={"Accept": "text/html"}, timeout=10)
        # Flask's CSRF cookie is host-only: a browser keeps it on the main host, away from tools.
        [(_, csrf_attributes)] = _set_cookies(form, "berth_csrf")
        assert "domain" not in csrf_attributes and "httponly" in csrf_attributes
        answer = _post_login(stack, browser, csrf_token(form.text), alice, next_url="/?tab=mine")
        assert answer.status_code == 302
        assert answer.headers["Location"] == f"{stack.base_url}/?tab=mine"
        token, attributes = _session_cookie(answer)
        assert len(token) >= 40
        assert "httponly" in attributes
        assert attributes["samesite"] == "Lax"
        assert "domain" not in attributes  # host-only: no tool host ever receives it
        assert attributes["path"] == "/"
        assert "secure" not in attributes  # plain http: a Secure cookie would never come back

        catalogue = browser.get(answer.headers["Location"], allow_redirects=False, timeout=10)
        assert catalogue.status_code == 200
        assert alice["email"].split("@")[0] in catalogue.text
        assert "Echo" in catalogue.text
        # One sign-in reaches every tool host too, through the sign-in hand-off.
        status = browser.get(stack.tool_url("echo", alice, "/__berth/status"), headers={"Accept": "text/html"},
                             timeout=10)
        assert status.status_code == 200
        assert [answer.url.split("?")[0] for answer in status.history] == [
            stack.tool_url("echo", alice, "/__berth/status"), f"{stack.base_url}/auth/handoff",
            stack.tool_url("echo", alice, "/__berth/handoff")]
        assert status.json()["state"] is None

    # The database keeps only the hash of the token.
    [row] = stack.query("SELECT user_id, revoked_at FROM sessions WHERE token_hash = :h", h=_hash(token))
    assert row["user_id"] == alice["id"] and row["revoked_at"] is None
    assert stack.query("SELECT id FROM sessions WHERE token_hash = :t", t=token) == []


def test_wrong_password_is_refused_with_a_message_and_an_audit_event(stack, alice):
    with requests.Session() as browser:
        answer = _post_login(stack, browser, _csrf_token(stack, browser), alice, password="wrong password")
        assert answer.status_code == 401
        assert "That email and password do not match an active account." in answer.text
        assert _set_cookies(answer, COOKIE) == []
        assert browser.get(stack.base_url + "/", headers={"Accept": "text/html"}, allow_redirects=False,
                           timeout=10).status_code == 302

        stranger = {"email": "nobody-" + alice["email"], "password": "whatever"}
        unknown = _post_login(stack, browser, _csrf_token(stack, browser), stranger)
        assert unknown.status_code == 401
        assert _set_cookies(unknown, COOKIE) == []

    failed = stack.query("SELECT actor, message FROM events WHERE kind = 'auth.login_failed' "
                         "AND user_id = :id", id=alice["id"])
    assert [row["actor"] for row in failed] == ["anonymous"]
    assert alice["email"] in failed[0]["message"]
    assert stack.query("SELECT id FROM events WHERE kind = 'auth.login_failed' AND message LIKE :m",
                       m=f"%{stranger['email']}%")
    assert stack.query("SELECT id FROM sessions WHERE user_id = :id", id=alice["id"]) == []


def test_login_without_a_valid_csrf_token_is_refused(stack, alice):
    with requests.Session() as browser:
        token = _csrf_token(stack, browser)
        missing = _post_login(stack, browser, None, alice)
        assert missing.status_code == 400
        assert "CSRF token is missing" in missing.text
        assert _set_cookies(missing, COOKIE) == []
        forged = _post_login(stack, browser, token[:-4] + "AAAA", alice)
        assert forged.status_code == 400
        assert _set_cookies(forged, COOKIE) == []
    # A real token, but from another browser (a cross-site form has no CSRF cookie).
    with requests.Session() as other:
        stolen = _post_login(stack, other, token, alice)
        assert stolen.status_code == 400
        assert _set_cookies(stolen, COOKIE) == []
    assert stack.query("SELECT id FROM sessions WHERE user_id = :id", id=alice["id"]) == []


# -- a new token at every sign-in -------------------------------------------------------------

def test_login_issues_a_new_token_every_time_and_never_keeps_a_planted_one(stack, alice, bob):
    with requests.Session() as browser:
        csrf = _csrf_token(stack, browser)
        browser.cookies.set(COOKIE, "planted-by-an-attacker", domain=".berth.localhost", path="/")
        first = _post_login(stack, browser, csrf, alice)
        assert first.status_code == 302
        first_token = _session_token(first)
        assert first_token != "planted-by-an-attacker"
        assert stack.query("SELECT id FROM sessions WHERE token_hash = :h",
                           h=_hash("planted-by-an-attacker")) == []

        second = _post_login(stack, browser, csrf, alice)  # signing in again, in the same browser
        assert second.status_code == 302
        second_token = _session_token(second)
        assert second_token != first_token

    # The sign-in replaced the old one: the first token no longer works.
    assert _get(stack.base_url + "/", f"{COOKIE}={first_token}", Accept="application/json").status_code == 401
    assert _get(stack.base_url + "/", f"{COOKIE}={second_token}", Accept="application/json").status_code == 200

    # An attacker plants their own valid session in the victim's browser: the victim's
    # sign-in gets a fresh token, as the victim, and the planted one stops working.
    with stack.login(bob) as attacker:
        planted = next(c.value for c in attacker.cookies if c.name == COOKIE)
    with requests.Session() as victim:
        csrf = _csrf_token(stack, victim)
        victim.cookies.set(COOKIE, planted, domain=".berth.localhost", path="/")
        answer = _post_login(stack, victim, csrf, alice)
        assert answer.status_code == 302
        assert _session_token(answer) != planted
        home = victim.get(stack.base_url + "/", allow_redirects=False, timeout=10)
        assert home.status_code == 200
        assert alice["email"].split("@")[0] in home.text
        assert bob["email"].split("@")[0] not in home.text
    assert _get(stack.base_url + "/", f"{COOKIE}={planted}", Accept="application/json").status_code == 401


# -- logout ---------------------------------------------------------------------------------

def test_logout_asks_first_then_revokes_the_session_everywhere_at_once(stack, alice):
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
        token = next(c.value for c in browser.cookies if c.name == COOKIE)
        tool_token = next(c.value for c in browser.cookies if c.name == COOKIE + "_tool")

        confirm = browser.get(stack.base_url + "/auth/logout", allow_redirects=False, timeout=10)
        assert confirm.status_code == 200
        assert "Sign out" in confirm.text and 'action="/auth/logout"' in confirm.text
        # Showing the form, or posting it without its CSRF token, signs nobody out.
        refused = browser.post(stack.base_url + "/auth/logout", allow_redirects=False, timeout=10)
        assert refused.status_code == 400 and _set_cookies(refused, COOKIE) == []
        assert browser.get(stack.base_url + "/", allow_redirects=False, timeout=10).status_code == 200

        out = browser.post(stack.base_url + "/auth/logout", allow_redirects=False, timeout=10,
                           data={"csrf_token": csrf_token(confirm.text)})
        assert out.status_code == 302
        assert out.headers["Location"].endswith("/auth/login?signed_out=1")
        value, attributes = _session_cookie(out)
        assert value == "" and attributes["max-age"] == "0"

    [row] = stack.query("SELECT revoked_at FROM sessions WHERE token_hash = :h", h=_hash(token))
    assert row["revoked_at"] is not None
    assert stack.query("SELECT id FROM events WHERE kind = 'auth.logout' AND user_id = :id", id=alice["id"])

    # A copy of the old cookies (another tab, a stolen value) is refused at once, everywhere.
    old = f"{COOKIE}={token}"
    main = _get(stack.base_url + "/", old, Accept="application/json")
    assert main.status_code == 401
    old_tool = f"{COOKIE}_tool={tool_token}"
    tool = _get(stack.tool_url("echo", alice, "/headers"), old_tool, Accept="application/json")
    assert tool.status_code == 401
    assert tool.json()["error"] == "Sign-in required."
    page = _get(stack.tool_url("echo", alice, "/headers"), old_tool, Accept="text/html")
    assert page.status_code == 302
    assert page.headers["Location"].startswith(stack.base_url + "/auth/handoff?host=")


# -- where `next` may send the browser --------------------------------------------------------

def _assert_sent_to(stack, browser, token, user, target, expected):
    """Signing in with next=target sends the browser to expected; so does the login page, at
    once, to a browser that is signed in already."""
    answer = _post_login(stack, browser, token, user, next_url=target)
    assert answer.status_code == 302
    assert answer.headers["Location"] == expected
    again = browser.get(f"{stack.base_url}/auth/login", params={"next": target}, allow_redirects=False, timeout=10)
    assert again.status_code == 302
    assert again.headers["Location"] == expected


@pytest.mark.parametrize("target", [
    "/reports?q=1&sort=name",
    "http://berth.localhost:{port}/",
    "http://berth.localhost:{port}/some/page?x=1#section",
    "http://echo--{address_name}.berth.localhost:{port}/deep/link?x=1",
    "http://echo-{host_key}.berth.localhost:{port}/deep/link?x=1",
])
def test_next_may_send_the_browser_to_the_main_host_or_a_tool_host(stack, alice, target):
    target = target.format(port=stack.port, host_key=alice["host_key"], address_name=alice["address_name"])
    expected = stack.base_url + target if target.startswith("/") else target
    with requests.Session() as browser:
        _assert_sent_to(stack, browser, _csrf_token(stack, browser), alice, target, expected)


@pytest.mark.parametrize("target", [
    "http://evil.example/",
    "http://evil.example:{port}/",
    "//evil.example/",
    "///evil.example/",
    "https://berth.localhost:{port}/",
    "http://berth.localhost:{other_port}/",
    "http://berth.localhost/",
    "javascript:alert(document.cookie)",
    "JavaScript:alert(1)//http://berth.localhost:{port}/",
    "data:text/html,<script>alert(1)</script>",
    "/\\evil.example/",
    "\\\\evil.example/",
    "http:\\\\evil.example\\",
    "http://evil.example\\@berth.localhost:{port}/",
    "/\t/evil.example/",
    "http://berth.localhost.evil.example:{port}/",
    "http://berth.localhost:{port}@evil.example/",
    "http://user:pass@berth.localhost:{port}/",
    "http://x.y.berth.localhost:{port}/",
    "http:evil.example",
    "evil.example",
])
def test_next_to_anywhere_else_falls_back_to_the_catalogue(stack, alice, target):
    target = target.format(port=stack.port, other_port=stack.port + 1)
    home = f"http://berth.localhost:{stack.port}/"
    with requests.Session() as browser:
        form = browser.get(f"{stack.base_url}/auth/login", params={"next": target},
                           headers={"Accept": "text/html"}, timeout=10)
        assert html.unescape(NEXT_FIELD.search(form.text).group(1)) == home
        _assert_sent_to(stack, browser, csrf_token(form.text), alice, target, home)


# -- no valid session: browsers go to the login page, API and XHR clients get 401 ------------

def _expired_session(stack, user):
    with stack.login(user) as browser:
        token = next(c.value for c in browser.cookies if c.name == COOKIE)
    stack.query("UPDATE sessions SET expires_at = created_at WHERE token_hash = :h", h=_hash(token))
    return token


@pytest.mark.parametrize("kind", ["garbage", "very-long", "empty", "unknown", "expired"])
def test_a_missing_or_bad_session_sends_browsers_to_login_and_api_clients_a_401(stack, alice, kind):
    value = {
        "garbage": '"%%not a token!@#$^&*()',
        "very-long": "A" * 4000,
        "empty": "",
        "unknown": "x" * 43,
        "expired": None,
    }[kind]
    if value is None:
        value = _expired_session(stack, alice)
    path = "/deep/link?x=1&y=a%20b"
    tool = stack.tool_url("echo", alice, path)
    # The main host reads the session cookie; a tool host its own cookie, and sends a browser
    # without a good one through the sign-in hand-off, which comes back to the same path.
    for original, name, login_url in (
            (f"{stack.base_url}{path}", COOKIE, _login_redirect(stack, f"{stack.base_url}{path}")),
            (tool, COOKIE + "_tool", _handoff_redirect(stack, stack.tool_host("echo", alice), path))):
        cookie = f"other=1; {name}={value}; more=2"
        page = _get(original, cookie, Accept="text/html,application/xhtml+xml,*/*;q=0.8")
        assert page.status_code == 302, (original, page.text)
        assert page.headers["Location"] == login_url
        assert "next=" in login_url and "%3Fx%3D1%26y%3Da%2520b" in login_url

        api = _get(original, cookie, Accept="application/json")
        xhr = _get(original, cookie, Accept="text/html", **{"X-Requested-With": "XMLHttpRequest"})
        for answer in (api, xhr):
            assert answer.status_code == 401, (original, answer.text)
            assert answer.headers["Content-Type"].startswith("application/json")
            assert "Location" not in answer.headers
            assert answer.json() == {"error": "Sign-in required.", "login_url": login_url}

    # The login page the browser lands on will send it back to the original address, through
    # the hand-off for a tool host.
    with requests.Session() as browser:
        form = browser.get(login_url, headers={"Accept": "text/html"}, timeout=10)
        back = html.unescape(NEXT_FIELD.search(form.text).group(1))
        assert back == login_url
        answer = _post_login(stack, browser, csrf_token(form.text), alice, next_url=back)
        assert answer.headers["Location"] == login_url
        handoff = browser.get(login_url, allow_redirects=False, timeout=10)
        assert handoff.headers["Location"].startswith(stack.tool_url("echo", alice, "/__berth/handoff?code="))
        landed = browser.get(handoff.headers["Location"], allow_redirects=False, timeout=10)
        assert landed.status_code == 302 and landed.headers["Location"] == tool


def test_healthz_is_open_and_the_catalogue_asks_for_sign_in(stack):
    health = _get(stack.base_url + "/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    catalogue = _get(stack.base_url + "/", Accept="text/html")
    assert catalogue.status_code == 302
    assert catalogue.headers["Location"] == _login_redirect(stack, stack.base_url + "/")
    assert _get(stack.base_url + "/", Accept="application/json").status_code == 401

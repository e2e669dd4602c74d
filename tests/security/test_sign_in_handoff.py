"""The platform session stays on the main host, and tool hosts are signed in one by one through
the sign-in hand-off. Each attack here fails: a session cookie planted for the whole domain, a
session cookie sent to a tool host, one tool host's cookie replayed on another, a hand-off code
replayed or taken to another host, a hand-off that would send the browser elsewhere, and a tool
cookie kept after signing out.
"""
import hashlib
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

import auth_service
from berth.extensions import db
from berth.models import User
from berth.settings import load_settings
from tests.actions import csrf_token, post_form, sign_in
from tests.conftest import _make_stack
from tests.local_stack import TOOL_COOKIE

SESSION = "berth_session"


def _get(url, cookie=None, **headers):
    """One request with exactly the Cookie header given, as an attacker sends it; not followed."""
    if cookie is not None:
        headers["Cookie"] = cookie
    headers.setdefault("Accept", "application/json")
    return requests.get(url, headers=headers, allow_redirects=False, timeout=10)


def _cookie(browser, name, host):
    return next(c.value for c in browser.cookies if c.name == name and c.domain == host)


def _code_url(stack, browser, host, next_path="/__berth/status"):
    """The main host's answer to a hand-off for host: the tool host's address with a fresh code."""
    answer = browser.get(f"{stack.base_url}/auth/handoff", params={"host": host, "next": next_path},
                         allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    return answer.headers["Location"]


# -- the session cookie ------------------------------------------------------------------------

def test_a_session_cookie_on_a_tool_host_signs_nobody_in(stack, alice):
    """The session is host-only: a browser never sends it to a tool host. One that arrives there
    anyway (planted for the whole domain, or sent by hand) is ignored, and never reaches the tool."""
    with stack.login(alice) as browser:
        session = _cookie(browser, SESSION, "berth.localhost")
        assert not [c for c in browser.cookies if c.name == SESSION and c.domain != "berth.localhost"]
    url = stack.tool_url("echo", alice, "/__berth/status")
    for cookie in (f"{SESSION}={session}", f"__Host-{SESSION}={session}"):
        assert _get(url, cookie).status_code == 401
        page = _get(url, cookie, Accept="text/html")
        assert page.status_code == 302
        assert page.headers["Location"].startswith(f"{stack.base_url}/auth/handoff?host=")


def test_a_session_planted_for_the_whole_domain_is_refused_beside_the_real_one(stack, alice, bob):
    """A tool's page may set a cookie for the parent domain named like the session (plain HTTP
    has no __Host- prefix to stop it): beside the visitor's own, Berth trusts neither."""
    with stack.login(bob) as attacker:
        planted = _cookie(attacker, SESSION, "berth.localhost")
    with stack.login(alice) as victim:
        victim.cookies.set(SESSION, planted, domain=".berth.localhost", path="/")
        answer = victim.get(stack.base_url + "/account", allow_redirects=False, timeout=10)
        assert answer.request.headers["Cookie"].count(f"{SESSION}=") == 2
        assert answer.status_code == 403
        assert "two Berth session cookies" in answer.text
        assert bob["email"] not in answer.text
        # Signing in again clears the planted copy (it deletes the domain-wide cookie).
        assert sign_in(victim, stack.base_url, alice["email"], alice["password"]).status_code == 302
        assert [c.domain for c in victim.cookies if c.name == SESSION] == ["berth.localhost"]
        home = victim.get(stack.base_url + "/", allow_redirects=False, timeout=10)
        assert home.status_code == 200 and alice["email"].split("@")[0] in home.text


# -- tool cookies ------------------------------------------------------------------------------

def test_a_tool_cookie_opens_its_own_host_only(stack, alice):
    first, second = stack.tool_host("echo", alice), stack.tool_host("echo-api", alice)
    with stack.login(alice) as browser:
        stack.hand_off(browser, "echo", alice)
        token = _cookie(browser, TOOL_COOKIE, first)
        # Host-only, HttpOnly, SameSite=Lax (not Secure on plain HTTP).
        [cookie] = [c for c in browser.cookies if c.name == TOOL_COOKIE]
        assert cookie.domain == first and not cookie.domain_specified and cookie.path == "/"
        assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Lax"
    assert _get(stack.tool_url("echo", alice, "/__berth/status"), f"{TOOL_COOKIE}={token}").status_code == 200
    # Replayed on another tool host of the same user, or on the main host: nobody.
    assert _get(stack.tool_url("echo-api", alice, "/__berth/status"), f"{TOOL_COOKIE}={token}").status_code == 401
    assert _get(stack.base_url + "/", f"{TOOL_COOKIE}={token}").status_code == 401
    assert _get(stack.base_url + "/", f"{SESSION}={token}").status_code == 401
    assert second != first


def test_signing_out_ends_every_tool_cookie_of_the_session(stack, alice):
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
        stack.hand_off(browser, "echo-api", alice)
        tokens = {slug: _cookie(browser, TOOL_COOKIE, stack.tool_host(slug, alice)) for slug in ("echo", "echo-api")}
        assert _get(stack.tool_url("echo", alice, "/headers"), f"{TOOL_COOKIE}={tokens['echo']}").status_code == 200
        out = post_form(browser, f"{stack.base_url}/auth/logout", page=f"{stack.base_url}/auth/logout",
                        allow_redirects=False)
        assert out.status_code == 302
    for slug, token in tokens.items():
        url = stack.tool_url(slug, alice, "/headers")
        # A running tool's answer may come from nginx's auth cache for the rest of its second.
        stack.until_auth_cache_ends(lambda: _get(url, f"{TOOL_COOKIE}={token}").status_code, 401)
        page = _get(url, f"{TOOL_COOKIE}={token}", Accept="text/html")
        assert page.status_code == 302 and "/auth/handoff?" in page.headers["Location"]


def test_ending_a_session_from_another_browser_ends_its_tool_cookies(stack, alice):
    laptop, phone = stack.login(alice), stack.login(alice)
    stack.hand_off(phone, "echo", alice)
    token = _cookie(phone, TOOL_COOKIE, stack.tool_host("echo", alice))
    url = stack.tool_url("echo", alice, "/__berth/status")
    assert _get(url, f"{TOOL_COOKIE}={token}").status_code == 200
    [row] = stack.query("SELECT id FROM sessions WHERE user_id = :u AND token_hash = :h", u=alice["id"],
                        h=hashlib.sha256(_cookie(phone, SESSION, "berth.localhost").encode()).hexdigest())
    ended = post_form(laptop, f"{stack.base_url}/account/sessions/{row['id']}/end", page=f"{stack.base_url}/account")
    assert "The session is ended" in ended.text
    assert _get(url, f"{TOOL_COOKIE}={token}").status_code == 401
    laptop.close()
    phone.close()


# -- hand-off codes ----------------------------------------------------------------------------

def test_a_hand_off_code_works_once_on_its_own_host_and_not_after_a_minute(stack, alice):
    host = stack.tool_host("echo", alice)
    with stack.login(alice) as browser:
        code_url = _code_url(stack, browser, host)
        assert code_url.startswith(stack.tool_url("echo", alice, "/__berth/handoff?code="))
    first = requests.get(code_url, allow_redirects=False, timeout=10)
    assert first.status_code == 302
    assert first.headers["Location"] == stack.tool_url("echo", alice, "/__berth/status")
    assert TOOL_COOKIE in first.cookies
    # The same address again (a replayed link, a leaked log line): refused, and no cookie.
    replayed = requests.get(code_url, allow_redirects=False, timeout=10)
    assert replayed.status_code == 403 and "already used, has expired" in replayed.text
    assert TOOL_COOKIE not in replayed.cookies

    with stack.login(alice) as browser:
        # A code for one tool host, taken to another.
        code = parse_qs(urlsplit(_code_url(stack, browser, host)).query)["code"][0]
        other = stack.tool_url("echo-api", alice, f"/__berth/handoff?code={code}&next=%2F")
        assert requests.get(other, allow_redirects=False, timeout=10).status_code == 403
        # A code that waited longer than its minute.
        late = _code_url(stack, browser, host)
        stack.query("UPDATE tool_sign_ins SET code_expires_at = :t WHERE token_hash IS NULL",
                    t=datetime.now(timezone.utc) - timedelta(seconds=1))
        assert requests.get(late, allow_redirects=False, timeout=10).status_code == 403
        # A made-up code.
        made_up = stack.tool_url("echo", alice, "/__berth/handoff?code=guess&next=%2F")
        assert requests.get(made_up, allow_redirects=False, timeout=10).status_code == 403


def test_a_code_from_a_session_that_ended_before_redemption_opens_nothing(stack, alice):
    host = stack.tool_host("echo", alice)
    browser = stack.login(alice)
    code_url = _code_url(stack, browser, host)
    post_form(browser, f"{stack.base_url}/auth/logout", page=f"{stack.base_url}/auth/logout", allow_redirects=False)
    landed = requests.get(code_url, allow_redirects=False, timeout=10)
    token = landed.cookies.get(TOOL_COOKIE)
    # Redeemed or not, the cookie holds only while its session does.
    assert token is None or _get(stack.tool_url("echo", alice, "/__berth/status"),
                                 f"{TOOL_COOKIE}={token}").status_code == 401
    browser.close()


@pytest.mark.parametrize("next_path", [
    "//evil.example/", "https://evil.example/", "http://evil.example", "/\\evil.example", "\\\\evil.example",
    "evil.example", "javascript:alert(1)", "/%0d%0aSet-Cookie:x=1".replace("%0d%0a", "\r\n"), "",
])
def test_a_hand_off_never_sends_the_browser_to_another_site(stack, alice, next_path):
    host = stack.tool_host("echo", alice)
    with stack.login(alice) as browser:
        start = browser.get(f"{stack.base_url}/auth/handoff", params={"host": host, "next": next_path},
                            allow_redirects=False, timeout=10)
        assert start.status_code == 400 and "Location" not in start.headers, next_path
        # Past the main host (a code got by the book), the tool host refuses such a next too.
        code_url = _code_url(stack, browser, host)
    code = parse_qs(urlsplit(code_url).query)["code"][0]
    end = requests.get(stack.tool_url("echo", alice, "/__berth/handoff"), params={"code": code, "next": next_path},
                       allow_redirects=False, timeout=10)
    assert end.status_code == 400 and "Location" not in end.headers, next_path
    assert TOOL_COOKIE not in end.cookies


@pytest.mark.parametrize("host", ["evil.example", "berth.localhost", "echo.evil.example",
                                  "a.b.berth.localhost", "berth.localhost.evil.example", ""])
def test_a_hand_off_is_only_for_a_tool_host_of_this_berth(stack, alice, host):
    with stack.login(alice) as browser:
        answer = browser.get(f"{stack.base_url}/auth/handoff", params={"host": host, "next": "/"},
                             allow_redirects=False, timeout=10)
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert stack.query("SELECT id FROM tool_sign_ins WHERE host = :h", h=host) == []


def test_the_hand_off_is_answered_on_its_own_host_only(stack, alice):
    with stack.login(alice) as browser:
        # The main host's half on a tool host, and the tool host's half on the main host.
        on_tool = browser.get(stack.tool_url("echo", alice, "/auth/handoff?host=x&next=%2F"),
                              allow_redirects=False, timeout=10)
        assert "Location" not in on_tool.headers or "/__berth/handoff" not in on_tool.headers["Location"]
        on_main = browser.get(f"{stack.base_url}/__berth/handoff?code=x&next=%2F", allow_redirects=False, timeout=10)
        assert on_main.status_code in (404, 302) and TOOL_COOKIE not in on_main.cookies


def test_a_browser_that_is_not_signed_in_signs_in_first_then_lands_on_the_tool(stack, alice):
    path = "/__berth/status?x=1"
    with requests.Session() as browser:
        browser.headers["Accept"] = "text/html"
        start = browser.get(stack.tool_url("echo", alice, path), allow_redirects=False, timeout=10)
        handoff = start.headers["Location"]
        assert handoff == (f"{stack.base_url}/auth/handoff?host={stack.tool_host('echo', alice)}"
                           f"&next={quote(path, safe='')}")
        login = browser.get(handoff, allow_redirects=False, timeout=10)
        assert login.headers["Location"].startswith(f"{stack.base_url}/auth/login?next=%2Fauth%2Fhandoff")
        form = browser.get(login.headers["Location"], timeout=10)
        signed_in = browser.post(f"{stack.base_url}/auth/login", timeout=10, data={
            "csrf_token": csrf_token(form.text), "email": alice["email"], "password": alice["password"],
            "next": parse_qs(urlsplit(login.headers["Location"]).query)["next"][0]})
        assert signed_in.status_code == 200
        assert signed_in.url == stack.tool_url("echo", alice, path)
        assert signed_in.json()["state"] is None


# -- BERTH_TOOLS_DOMAIN: tools on a domain of their own -------------------------------------------

@pytest.fixture(scope="module")
def separate_tools_domain(dockerd, tmp_path_factory):
    """A Berth whose tools live under berth-tools.localhost, apart from berth.localhost."""
    stack = _make_stack("tools", None, None, tmp_path_factory.mktemp("tools"), dockerd.url,
                        extra_env={"BERTH_TOOLS_DOMAIN": "berth-tools.localhost"})
    stack.start()
    yield stack
    stack.stop()


def test_with_a_tools_domain_of_its_own_tools_open_through_the_hand_off(separate_tools_domain):
    stack = separate_tools_domain
    user = stack.create_user()
    host = stack.tool_host("echo", user)
    assert host == f"echo--{user['address_name']}.berth-tools.localhost"
    with stack.login(user) as browser:
        assert f"http://{host}:{stack.port}/" in browser.get(stack.base_url + "/", timeout=10).text
        seen = stack.open_tool(browser, "echo", user, "/headers").json()
        assert seen["cookies"] == {} and SESSION not in str(seen)
        assert {c.domain for c in browser.cookies if c.name == TOOL_COOKIE} == {host}
        assert {c.domain for c in browser.cookies if c.name == SESSION} == {"berth.localhost"}
        # Under the main domain, a tool-shaped name is no tool any more, in either form.
        for label in (f"echo--{user['address_name']}", f"echo-{user['host_key']}"):
            old = browser.get(f"http://{label}.berth.localhost:{stack.port}/", allow_redirects=False, timeout=10)
            assert old.status_code == 404
            # A hand-off only ever leads to the tools domain.
            wrong = browser.get(f"{stack.base_url}/auth/handoff", allow_redirects=False, timeout=10,
                                params={"host": f"{label}.berth.localhost", "next": "/"})
            assert wrong.status_code == 400


# -- over HTTPS, in process --------------------------------------------------------------------

@pytest.fixture
def https_auth_app(tmp_path):
    config = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_SCHEME": "https", "BERTH_HTTP_PORT": "443"})
    config.update(SQLALCHEMY_DATABASE_URI="sqlite://", TESTING=True)
    app = auth_service.create_app(config)
    with app.app_context():
        db.create_all()
        user = User(email="user@example.org", name="user")
        user.set_password("a long password")
        db.session.add(user)
        db.session.commit()
        address_name = user.address_name
    yield app, address_name
    with app.app_context():
        db.engine.dispose()


def _set_cookie(answer, name):
    [header] = [value for value in answer.headers.getlist("Set-Cookie") if value.startswith(name + "=")]
    first, *attributes = [part.strip() for part in header.split(";")]
    return first.partition("=")[2], {key.lower(): value for key, _, value in (a.partition("=") for a in attributes)}


def test_over_https_both_cookies_are_host_only_secure_and_carry_the_host_prefix(https_auth_app):
    app, address_name = https_auth_app
    proxy = {"X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"]}
    main = app.test_client()
    page = main.get("/auth/login", base_url="https://berth.localhost", headers=proxy).get_data(as_text=True)
    proxy["Referer"] = "https://berth.localhost/auth/login"  # Flask-WTF checks it over HTTPS
    signed_in = main.post("/auth/login", base_url="https://berth.localhost", headers=proxy, data={
        "csrf_token": csrf_token(page), "email": "user@example.org", "password": "a long password", "next": "/"})
    assert signed_in.status_code == 302
    token, attributes = _set_cookie(signed_in, "__Host-berth_session")
    assert token and "domain" not in attributes and attributes["path"] == "/"
    assert {"secure", "httponly"} <= set(attributes) and attributes["samesite"] == "Lax"

    host = f"echo--{address_name}.berth.localhost"
    handoff = main.get(f"/auth/handoff?host={host}&next=%2Flab", base_url="https://berth.localhost", headers=proxy)
    assert handoff.status_code == 302
    code_url = urlsplit(handoff.headers["Location"])
    assert f"{code_url.scheme}://{code_url.netloc}{code_url.path}" == f"https://{host}/__berth/handoff"

    tool = app.test_client()
    landed = tool.get(f"{code_url.path}?{code_url.query}", base_url=f"https://{host}", headers=proxy)
    assert landed.status_code == 302 and landed.headers["Location"] == f"https://{host}/lab"
    tool_token, attributes = _set_cookie(landed, "__Host-berth_session_tool")
    assert tool_token and tool_token != token
    assert "domain" not in attributes and attributes["path"] == "/"
    assert {"secure", "httponly"} <= set(attributes) and attributes["samesite"] == "Lax"

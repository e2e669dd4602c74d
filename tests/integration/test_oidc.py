"""Single sign-on against a real OpenID provider (npm oidc-provider on loopback), through nginx.

The provider's own login and consent forms are driven over HTTP; Berth's side is the real
auth service behind the real nginx. Failure paths use the real provider too: a tampered
state, a replayed code, an ID token signed with the provider's clock set back (so it has
expired), and a provider that is stopped.
"""
import hashlib
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.actions import post_form
from tests.local_stack import TOOL_COOKIE
from tests.oidc_provider import ProviderForms
from tests.services import wait_for_port

COOKIE = "berth_session"


@pytest.fixture
def sso(stack, oidc_provider):
    return ProviderForms(oidc_provider, stack.base_url)


def _session_token(response):
    found = re.search(rf"{COOKIE}=([^;]+);", response.headers.get("Set-Cookie", ""))
    return found.group(1) if found else None


def _hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def _user(stack, email):
    rows = stack.query("SELECT * FROM users WHERE email = :e", e=email)
    return rows[0] if rows else None


def _groups(stack, user_id):
    return [row["name"] for row in stack.query(
        "SELECT g.name, m.source FROM memberships m JOIN groups g ON g.id = m.group_id "
        "WHERE m.user_id = :u ORDER BY g.name", u=user_id)]


def _assert_failure_page(answer, status, title):
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("text/html")
    assert f"<h1>{title}</h1>" in answer.text, answer.text
    assert COOKIE not in answer.headers.get("Set-Cookie", "")


# -- signing in -----------------------------------------------------------------------------------

def test_a_new_user_signs_in_through_the_provider_and_lands_where_they_were_going(stack, oidc_provider, sso):
    account = oidc_provider.add_account(name="Grace Hopper", groups=["analysts", "staff"])
    target = f"{stack.base_url}/?from=sso"
    with requests.Session() as browser:
        authorization = sso.start(browser, next_url=target)
        # The authorization-code flow, with state, nonce and PKCE (S256), to the registered callback.
        query = parse_qs(urlsplit(authorization).query)
        assert query["response_type"] == ["code"]
        assert query["redirect_uri"] == [f"{stack.base_url}/auth/oidc/callback"]
        assert query["code_challenge_method"] == ["S256"]
        assert len(query["code_challenge"][0]) >= 43 and len(query["state"][0]) >= 20
        assert len(query["nonce"][0]) >= 20
        assert set(query["scope"][0].split()) == {"openid", "email", "profile", "groups"}
        # What the browser carries meanwhile is a signed cookie for Berth's main host only.
        csrf_cookie = [c for c in browser.cookies if c.name == "berth_csrf"]
        assert [c.domain for c in csrf_cookie] == ["berth.localhost"]
        assert query["state"][0] not in csrf_cookie[0].value  # signed and compressed, not plain

        callback = sso.authorize(browser, authorization, account)
        landed = browser.get(callback, allow_redirects=False, timeout=20)
        assert landed.status_code == 302, landed.text
        assert landed.headers["Location"] == target
        token = _session_token(landed)
        assert token and "Domain=berth.localhost" in landed.headers["Set-Cookie"]

        catalogue = browser.get(target, allow_redirects=False, timeout=10)
        assert catalogue.status_code == 200
        assert "<h1>Tools</h1>" in catalogue.text and "Grace Hopper" in catalogue.text

    user = _user(stack, account["email"])
    assert user["oidc_subject"] == account["sub"] and user["oidc_issuer"] == oidc_provider.issuer
    assert user["name"] == "Grace Hopper" and user["password_hash"] is None
    assert _groups(stack, user["id"]) == ["analysts", "staff"]
    [session] = stack.query("SELECT method, user_id FROM sessions WHERE token_hash = :h", h=_hash(token))
    assert dict(session) == {"method": "oidc", "user_id": user["id"]}
    assert stack.query("SELECT id FROM events WHERE kind = 'user.create' AND user_id = :u", u=user["id"])


def test_a_returning_user_is_matched_on_sub_and_kept_up_to_date(stack, oidc_provider, sso):
    account = oidc_provider.add_account(name="Ada", groups=["analysts", "old-team"])
    with requests.Session() as browser:
        assert sso.sign_in(browser, account).status_code == 302
    first = _user(stack, account["email"])
    # A membership given in Berth itself (not by the provider) survives the sync.
    stack.query("INSERT INTO groups (name, created_at) VALUES (:n, CURRENT_TIMESTAMP)", n=f"local-{first['id']}")
    stack.query("INSERT INTO memberships (group_id, user_id, source, created_at) "
                "SELECT id, :u, 'local', CURRENT_TIMESTAMP FROM groups WHERE name = :n",
                u=first["id"], n=f"local-{first['id']}")

    new_email = "renamed-" + account["email"]
    oidc_provider.update_account(account, email=new_email, name="Ada Lovelace", groups=["analysts", "new-team"])
    with requests.Session() as browser:
        assert sso.sign_in(browser, account).status_code == 302
    again = _user(stack, new_email)
    assert again["id"] == first["id"]
    assert again["name"] == "Ada Lovelace"
    assert _user(stack, account["email"].removeprefix("renamed-")) is None
    assert _groups(stack, first["id"]) == ["analysts", f"local-{first['id']}", "new-team"]


def test_a_local_account_is_never_taken_over_by_a_sign_in_with_its_email(stack, oidc_provider, sso):
    local = stack.create_user()
    for verified in (False, True):
        claimant = oidc_provider.add_account(email=local["email"], email_verified=verified)
        with requests.Session() as browser:
            refused = sso.sign_in(browser, claimant)
        _assert_failure_page(refused, 409, "Sign-in refused")
        assert "exists already" in refused.text and "Link single sign-on" in refused.text
    assert _user(stack, local["email"])["oidc_subject"] is None


def test_the_sign_in_page_offers_single_sign_on_and_passwords(stack):
    page = requests.get(f"{stack.base_url}/auth/login", params={"next": f"{stack.base_url}/x"}, timeout=10)
    assert page.status_code == 200
    assert "Sign in with Test Identity Provider" in page.text
    assert 'href="/auth/oidc/login?next=http%3A//berth.localhost' in page.text
    assert 'name="password"' in page.text


# -- what goes wrong ------------------------------------------------------------------------------

def test_a_user_who_cancels_at_the_provider_gets_a_page_saying_so(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    with requests.Session() as browser:
        callback = sso.authorize(browser, sso.start(browser), account, action="abort")
        assert parse_qs(urlsplit(callback).query)["error"] == ["access_denied"]
        answer = browser.get(callback, allow_redirects=False, timeout=10)
    _assert_failure_page(answer, 403, "Sign-in cancelled")
    assert "The user declined to sign in." in answer.text
    assert 'href="/auth/oidc/login?next=' in answer.text  # and a way to try again
    assert _user(stack, account["email"]) is None


def test_a_callback_whose_state_does_not_match_is_refused(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    with requests.Session() as browser:
        callback = sso.authorize(browser, sso.start(browser), account)
        parts = urlsplit(callback)
        query = parse_qs(parts.query)
        tampered = callback.replace(f"state={query['state'][0]}", "state=forged-by-an-attacker")
        answer = browser.get(tampered, allow_redirects=False, timeout=10)
        _assert_failure_page(answer, 400, "Sign-in expired")
        # The genuine callback, opened in another browser (no Berth cookie there), is refused too:
        # a code stolen or planted from elsewhere cannot sign anyone in.
        with requests.Session() as other:
            _assert_failure_page(other.get(callback, allow_redirects=False, timeout=10), 400, "Sign-in expired")
        # A callback with no state at all, and one with an error but an unknown state.
        _assert_failure_page(browser.get(f"{stack.base_url}/auth/oidc/callback?code=x", allow_redirects=False,
                                         timeout=10), 400, "Sign-in expired")
        _assert_failure_page(browser.get(f"{stack.base_url}/auth/oidc/callback?error=access_denied&state=nope",
                                         allow_redirects=False, timeout=10), 400, "Sign-in expired")
    assert _user(stack, account["email"]) is None
    assert stack.query("SELECT id FROM events WHERE kind = 'auth.sso_failed' AND message LIKE '%state_mismatch%'")


def test_a_replayed_code_is_refused(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    with requests.Session() as browser:
        callback = sso.authorize(browser, sso.start(browser), account)
        assert browser.get(callback, allow_redirects=False, timeout=20).status_code == 302
        # The same callback again: its state was used up with the first sign-in.
        _assert_failure_page(browser.get(callback, allow_redirects=False, timeout=10), 400, "Sign-in expired")
        # The old code with a fresh, valid state: now the provider itself refuses the used code.
        fresh_state = parse_qs(urlsplit(sso.start(browser)).query)["state"][0]
        old = parse_qs(urlsplit(callback).query)
        replay = browser.get(f"{stack.base_url}/auth/oidc/callback", allow_redirects=False, timeout=20,
                             params={"code": old["code"][0], "state": fresh_state, "iss": old["iss"][0]})
    _assert_failure_page(replay, 400, "Sign-in failed")
    assert "(invalid_grant)" in replay.text
    assert stack.query("SELECT id FROM events WHERE kind = 'auth.sso_failed' AND message LIKE '%token_refused%'")


def test_an_expired_id_token_is_refused(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    oidc_provider.set_token_endpoint_skew(-2 * 3600)  # the provider signs tokens that expired an hour ago
    try:
        with requests.Session() as browser:
            answer = sso.sign_in(browser, account)
    finally:
        oidc_provider.set_token_endpoint_skew(0)
    _assert_failure_page(answer, 401, "Sign-in could not be verified")
    assert "ID token has expired" in answer.text
    assert _user(stack, account["email"]) is None


def test_a_deactivated_user_is_told_so(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    with requests.Session() as browser:
        assert sso.sign_in(browser, account).status_code == 302
    stack.query("UPDATE users SET is_active = :f WHERE email = :e", f=False, e=account["email"])
    with requests.Session() as browser:
        answer = sso.sign_in(browser, account)
    _assert_failure_page(answer, 403, "Account deactivated")
    assert "Ask an administrator" in answer.text
    assert "again</a>" not in answer.text  # no point offering to try again


def test_a_provider_that_is_down_gets_a_clear_page(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    with requests.Session() as browser:
        callback = sso.authorize(browser, sso.start(browser), account)
        oidc_provider.stop()
        try:
            # The code cannot be exchanged: the provider is gone.
            down = browser.get(callback, allow_redirects=False, timeout=30)
            _assert_failure_page(down, 503, "Sign-in provider unavailable")
            assert "could not reach Test Identity Provider" in down.text
            # With the discovery document already read, a new sign-in is told at once too,
            # rather than being sent to a provider that cannot answer.
            cached = browser.get(f"{stack.base_url}/auth/oidc/login", allow_redirects=False, timeout=30)
            _assert_failure_page(cached, 503, "Sign-in provider unavailable")
            # A fresh auth service has not read the provider's discovery yet, and cannot.
            stack.processes.stop("auth")
            stack.processes.start("auth")
            wait_for_port(int(stack.env["BERTH_AUTH_PORT"]), what="auth service")
            start = browser.get(f"{stack.base_url}/auth/oidc/login", allow_redirects=False, timeout=30)
            _assert_failure_page(start, 503, "Sign-in provider unavailable")
            # Password sign-in still works meanwhile.
            assert stack.login(stack.create_user()).get(stack.base_url + "/", timeout=10).status_code == 200
        finally:
            oidc_provider.start()
        # Back up: the next attempt works, with no restart of Berth.
        assert sso.sign_in(browser, account).status_code == 302
    assert stack.query("SELECT id FROM events WHERE kind = 'auth.sso_failed' AND message LIKE '%provider_down%'")


# -- signing out ----------------------------------------------------------------------------------

def test_logout_ends_the_session_everywhere_and_signs_out_at_the_provider(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    with requests.Session() as browser:
        token = _session_token(sso.sign_in(browser, account))
        user = _user(stack, account["email"])
        tool_status = stack.tool_url("echo", user, "/__berth/status")
        assert stack.hand_off(browser, "echo", user).status_code == 200
        tool_token = stack.tool_cookie(browser, stack.tool_host("echo", user))

        out = post_form(browser, f"{stack.base_url}/auth/logout", allow_redirects=False)
        assert out.status_code == 302
        # On to the provider's end_session_endpoint, which sends the browser back to Berth's login page.
        location = urlsplit(out.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == f"{oidc_provider.issuer}/session/end"
        query = parse_qs(location.query)
        assert query["post_logout_redirect_uri"] == [f"{stack.base_url}/auth/login?signed_out=1"]
        assert query["client_id"] == [stack.env["BERTH_OIDC_CLIENT_ID"]]

        # Berth's session is over at once, on the main host and on every tool host.
        old = {"Cookie": f"{COOKIE}={token}", "Accept": "application/json"}
        assert requests.get(stack.base_url + "/", headers=old, timeout=10).status_code == 401
        old_tool = {"Cookie": f"{TOOL_COOKIE}={tool_token}", "Accept": "application/json"}
        assert requests.get(tool_status, headers=old_tool, timeout=10).status_code == 401

        # The provider asks, signs out, and comes back to Berth.
        ask = browser.get(out.headers["Location"], timeout=10)
        assert "Sign out of the test provider?" in ask.text
        form = re.search(r'<form id="op.logoutForm" method="post" action="([^"]+)"', ask.text)
        xsrf = re.search(r'name="xsrf" value="([^"]+)"', ask.text).group(1)
        back = browser.post(requests.compat.urljoin(out.headers["Location"], form.group(1)),
                            data={"xsrf": xsrf, "logout": "yes"}, allow_redirects=False, timeout=10)
        assert back.status_code in (302, 303)
        assert back.headers["Location"].startswith(f"{stack.base_url}/auth/login?signed_out=1")

        # Signed out at the provider too: signing in again asks for the password there.
        page = browser.get(sso.start(browser), timeout=10)
        assert 'name="password"' in page.text

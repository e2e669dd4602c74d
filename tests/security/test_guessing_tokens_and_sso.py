"""Guessing API tokens, failing single sign-on callbacks on purpose, taking over local accounts
through single sign-on, and the client address in the audit log: through the real nginx, against
the real OpenID provider (tests/oidc_provider.py).

The `guarded` stack has one trusted proxy in front of nginx (at 127.0.0.2), so that each test
plays clients at addresses of its own through X-Forwarded-For, and single sign-on that may link
accounts by a verified email (BERTH_OIDC_LINK_BY_EMAIL). The waits are production's.
"""
import json
import os
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from berth.throttle import delay
from berth.tokens import TOKEN_REFUSALS
from tests.actions import form_token, post_form, post_login
from tests.conftest import _make_stack, _sso_env
from tests.integration.test_access import _FromAddress
from tests.integration.test_tokens import _assert_json_error, make_token
from tests.oidc_provider import ADMIN_GROUP, ProviderForms

PROXY = "127.0.0.2"


@pytest.fixture(scope="module")
def guarded(request, postgres, redis_server, dockerd, tmp_path_factory):
    stack = _make_stack("guarded", postgres.create_database(f"berth_guarded_{os.urandom(3).hex()}"),
                        redis_server.url(6), tmp_path_factory.mktemp("guarded"), dockerd.url,
                        extra_env={"BERTH_TRUSTED_HOPS": "1", "BERTH_TRUSTED_PROXIES": f"{PROXY}/32",
                                   "BERTH_OIDC_LINK_BY_EMAIL": "true", **_sso_env(request)})
    stack.start()
    yield stack
    stack.stop()


def _client(address, source=PROXY, forwarded=None):
    """A requests.Session of a client at address, behind the trusted proxy (or, with another
    source, connecting to nginx itself and writing its own X-Forwarded-For)."""
    browser = requests.Session()
    browser.mount("http://", _FromAddress(source))
    browser.headers["X-Forwarded-For"] = forwarded or address
    return browser


def _signed_in(stack, user, address):
    browser = _client(address)
    browser.headers["Accept"] = "text/html"
    token = form_token(browser, f"{stack.base_url}/auth/login")
    answer = browser.post(f"{stack.base_url}/auth/login", allow_redirects=False, timeout=10,
                          data={"csrf_token": token, "email": user["email"], "password": user["password"], "next": "/"})
    assert answer.status_code == 302, answer.text[:300]
    return browser


def _bearer(browser, stack, token, path="/api/me"):
    return browser.get(stack.base_url + path, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False,
                       timeout=10)


def _events(stack, kind):
    rows = stack.query("SELECT message, data, user_id FROM events WHERE kind = :k ORDER BY id", k=kind)
    return [{"message": row["message"], "user_id": row["user_id"],
             "data": json.loads(row["data"]) if isinstance(row["data"], str) else row["data"]} for row in rows]


# -- guessing API tokens ----------------------------------------------------------------------------

WAIT = re.compile(r"^Too many unknown API tokens came from your address\. Wait (\d+) seconds?, then try again\.$")


def _guess_until_refused(stack, guesser, threshold):
    """Unknown tokens from guesser until the door makes its address wait: how many were answered
    "not valid" first, and the seconds of the wait. (Guessing on past the threshold keeps the test
    honest on a slow machine, where the first wait, 1 s, may be over before the next request.)"""
    for answered in range(threshold + 8):
        message = _assert_json_error(_bearer(guesser, stack, f"berth_{os.urandom(32).hex()[:43]}"), 401)
        waiting = WAIT.match(message)
        if waiting:
            return answered, int(waiting.group(1))
        assert message == TOKEN_REFUSALS["invalid"]
    raise AssertionError(f"{threshold + 8} unknown tokens and still no wait")


def test_guessing_tokens_from_one_address_backs_off_whatever_the_token(guarded):
    stack = guarded
    user = stack.create_user()
    with stack.login(user) as browser:
        good = make_token(stack, browser, scope="read")
    threshold = stack.config["BERTH_TOKEN_ADDRESS_FAILURES"]
    with _client("203.0.113.50") as guesser:
        answered, _ = _guess_until_refused(stack, guesser, threshold)
        assert answered >= threshold
        # Now even the right token from that address waits: the answer does not depend on it.
        refused = WAIT.match(_assert_json_error(_bearer(guesser, stack, good), 401))
        assert refused, "the right token was looked at"
        # From anywhere else the token works.
        with _client("203.0.113.51") as other:
            assert _bearer(other, stack, good).status_code == 200
        # A back-off, not a lock: after the wait, the owner's token works from there too.
        time.sleep(int(refused.group(1)) + 0.3)
        assert _bearer(guesser, stack, good).status_code == 200
    events = [e for e in _events(stack, "auth.token_throttled") if e["data"]["ip"] == "203.0.113.50"]
    assert events and all(e["data"]["throttle"] == "token" and e["data"]["retry_after"] >= 1 for e in events)
    assert events[0]["data"]["retry_after"] == delay(stack.config, threshold, threshold)


def test_rotating_forwarded_for_without_the_trusted_proxy_gains_nothing(guarded):
    """A client that reaches nginx itself writes whatever X-Forwarded-For it likes: it is counted
    at its own address all the same."""
    stack = guarded
    threshold = stack.config["BERTH_TOKEN_ADDRESS_FAILURES"]
    counter = iter(range(1000))

    class Rotating(requests.Session):
        def request(self, *args, **kwargs):
            number = next(counter)
            self.headers["X-Forwarded-For"] = f"198.18.{number % 250}.{number // 250 + 1}"
            return super().request(*args, **kwargs)

    with Rotating() as guesser:
        guesser.mount("http://", _FromAddress("127.0.0.3"))
        answered, _ = _guess_until_refused(stack, guesser, threshold)
    assert answered >= threshold
    assert "127.0.0.3" in [e["data"]["ip"] for e in _events(stack, "auth.token_throttled")]


def test_expired_and_revoked_tokens_are_not_counted_as_guesses(guarded):
    stack = guarded
    user = stack.create_user()
    with stack.login(user) as browser:
        token = make_token(stack, browser, scope="read")
    stack.query("UPDATE api_tokens SET revoked_at = created_at WHERE user_id = :u", u=user["id"])
    with _client("203.0.113.60") as client:
        for _ in range(stack.config["BERTH_TOKEN_ADDRESS_FAILURES"] + 2):
            assert _assert_json_error(_bearer(client, stack, token), 401) == TOKEN_REFUSALS["revoked"]
    assert stack.query("SELECT key FROM sign_in_throttles WHERE key = 'token:203.0.113.60'") == []


# -- failed single sign-on callbacks ----------------------------------------------------------------

def test_failed_sso_callbacks_from_one_address_back_off(guarded, oidc_provider):
    stack = guarded
    threshold = stack.config["BERTH_OIDC_CALLBACK_FAILURES"]
    with _client("203.0.113.70") as attacker:
        # On past the threshold until the wait shows, as for tokens (_guess_until_refused).
        for i in range(threshold + 8):
            waited = attacker.get(f"{stack.base_url}/auth/oidc/callback", params={"code": f"c{i}", "state": f"s{i}"},
                                  allow_redirects=False, timeout=10)
            if waited.status_code == 429:
                break
            assert waited.status_code == 400 and "<h1>Sign-in expired</h1>" in waited.text
        assert i >= threshold
        assert waited.status_code == 429 and int(waited.headers["Retry-After"]) >= 1
        assert "Too many single sign-ons failed from your address" in waited.text
    [event] = [e for e in _events(stack, "auth.sso_throttled") if e["data"]["ip"] == "203.0.113.70"]
    assert event["data"]["throttle"] == "oidc"
    # Someone else signs in meanwhile.
    account = oidc_provider.add_account()
    with _client("203.0.113.71") as person:
        assert ProviderForms(oidc_provider, stack.base_url).sign_in(person, account).status_code == 302


# -- the real client address in the audit log -------------------------------------------------------

@pytest.mark.parametrize("kind", ["token.create", "token.revoke", "grant.add", "user.deactivate"])
def test_audit_events_carry_the_client_address_seen_past_the_trusted_proxy(guarded, kind):
    stack = guarded
    admin, user, other = stack.create_user(is_admin=True), stack.create_user(), stack.create_user()
    # The client wrote 6.6.6.6 itself; the trusted proxy appended the address it saw.
    real = f"198.51.100.{os.urandom(1)[0] % 200 + 1}"
    actor = admin if kind == "user.deactivate" else user
    browser = _signed_in(stack, actor, real)
    browser.headers["X-Forwarded-For"] = f"6.6.6.6, {real}"
    with browser:
        token = make_token(stack, browser, scope="admin" if actor is admin else "launch")
        api = _client(real, forwarded=f"6.6.6.6, {real}")
        api.headers["Authorization"] = f"Bearer {token}"
        if kind == "token.revoke":
            [row] = stack.query("SELECT id FROM api_tokens WHERE user_id = :u", u=user["id"])
            assert api.delete(f"{stack.base_url}/api/tokens/{row['id']}", timeout=10).status_code == 204
        elif kind == "grant.add":
            answer = api.post(f"{stack.base_url}/api/tools/echo/grants", json={"user": other["email"]}, timeout=10)
            assert answer.status_code == 201, answer.text
        elif kind == "user.deactivate":
            answer = api.patch(f"{stack.base_url}/api/admin/users/{other['id']}", json={"is_active": False}, timeout=10)
            assert answer.status_code == 200, answer.text
        api.close()
    events = [e for e in _events(stack, kind) if e["user_id"] in (actor["id"], other["id"])]
    assert events, kind
    assert events[-1]["data"]["ip"] == real, events[-1]


# -- single sign-on never takes over a local account ------------------------------------------------

@pytest.fixture
def sso(stack, oidc_provider):
    return ProviderForms(oidc_provider, stack.base_url)


def _user(stack, email):
    rows = stack.query("SELECT * FROM users WHERE lower(email) = lower(:e)", e=email)
    return rows[0] if rows else None


@pytest.mark.parametrize("victim", ["user", "admin"])
@pytest.mark.parametrize("email", ["same", "upper case", "spaces"])
def test_a_provider_account_with_a_local_accounts_email_is_refused(stack, oidc_provider, sso, victim, email):
    local = stack.create_user(is_admin=victim == "admin")
    claimed = {"same": local["email"], "upper case": local["email"].upper(), "spaces": f"  {local['email']} "}[email]
    claimant = oidc_provider.add_account(email=claimed, email_verified=True, groups=["staff"])
    with requests.Session() as browser:
        answer = sso.sign_in(browser, claimant)
        assert answer.status_code == 409 and "exists already" in answer.text
        assert browser.get(stack.base_url + "/api/me", headers={"Accept": "application/json"},
                           timeout=10).status_code == 401
    row = _user(stack, local["email"])
    assert row["oidc_subject"] is None and row["is_admin"] == (victim == "admin")


def test_linking_by_a_verified_email_when_allowed_never_reaches_an_administrator(guarded, oidc_provider):
    stack = guarded
    sso = ProviderForms(oidc_provider, stack.base_url)
    person, admin = stack.create_user(), stack.create_user(is_admin=True)
    unverified = oidc_provider.add_account(email=person["email"], email_verified=False)
    with requests.Session() as browser:
        assert sso.sign_in(browser, unverified).status_code == 409
    for_admin = oidc_provider.add_account(email=admin["email"], email_verified=True, groups=[ADMIN_GROUP])
    with requests.Session() as browser:
        assert sso.sign_in(browser, for_admin).status_code == 409
    assert _user(stack, admin["email"])["oidc_subject"] is None
    verified = oidc_provider.add_account(email=person["email"], email_verified=True)
    with requests.Session() as browser:
        assert sso.sign_in(browser, verified).status_code == 302
    linked = _user(stack, person["email"])
    assert linked["id"] == person["id"] and linked["oidc_subject"] == verified["sub"]


@pytest.mark.parametrize("groups", [["admins"], ["administrators", "Administrators"], [ADMIN_GROUP.upper()],
                                    [f"{ADMIN_GROUP}-x"], [f"x-{ADMIN_GROUP}"], []])
def test_no_group_but_the_configured_admin_group_makes_an_administrator(stack, oidc_provider, sso, groups):
    account = oidc_provider.add_account(groups=groups)
    with requests.Session() as browser:
        assert sso.sign_in(browser, account).status_code == 302
    assert not _user(stack, account["email"])["is_admin"]


def test_the_admin_group_grants_and_takes_administration_at_each_sign_in(stack, oidc_provider, sso):
    account = oidc_provider.add_account(groups=["staff", ADMIN_GROUP])
    with requests.Session() as browser:
        assert sso.sign_in(browser, account).status_code == 302
    assert _user(stack, account["email"])["is_admin"]
    oidc_provider.update_account(account, groups=["staff"])
    with requests.Session() as browser:
        assert sso.sign_in(browser, account).status_code == 302
    assert not _user(stack, account["email"])["is_admin"]


def _link(stack, sso, browser, account):
    """The Account page's Link single sign-on, then the provider: the answer of Berth's callback."""
    page = browser.get(f"{stack.base_url}/account", timeout=10)
    assert 'href="/auth/oidc/link"' in page.text
    started = post_form(browser, f"{stack.base_url}/auth/oidc/link", allow_redirects=False)
    assert started.status_code == 302, started.text[:300]
    callback = sso.authorize(browser, started.headers["Location"], account)
    return browser.get(callback, allow_redirects=False, timeout=20)


def test_the_owner_links_single_sign_on_from_the_account_page(stack, oidc_provider, sso):
    local = stack.create_user()
    account = oidc_provider.add_account(email=f"other-{local['email']}")
    with stack.login(local) as browser:
        landed = _link(stack, sso, browser, account)
        assert landed.status_code == 302 and landed.headers["Location"] == f"{stack.base_url}/account"
        assert browser.get(f"{stack.base_url}/account", timeout=10).status_code == 200
    row = stack.query("SELECT oidc_subject FROM users WHERE id = :u", u=local["id"])[0]
    assert row["oidc_subject"] == account["sub"]
    with requests.Session() as fresh:
        assert sso.sign_in(fresh, account).status_code == 302
        me = fresh.get(f"{stack.base_url}/api/me", headers={"Accept": "application/json"}, timeout=10).json()
    assert me["id"] == local["id"]
    assert stack.query("SELECT id FROM events WHERE kind = 'user.link' AND user_id = :u", u=local["id"])


def test_linking_needs_a_signed_in_owner_and_the_forms_token(stack):
    anonymous = requests.get(f"{stack.base_url}/auth/oidc/link", allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and "/auth/login?next=" in anonymous.headers["Location"]
    local = stack.create_user()
    with stack.login(local) as browser:
        forged = browser.post(f"{stack.base_url}/auth/oidc/link", allow_redirects=False, timeout=10)
        assert forged.status_code == 400
        foreign = browser.post(f"{stack.base_url}/auth/oidc/link", allow_redirects=False, timeout=10,
                               data={"csrf_token": form_token(browser, f"{stack.base_url}/auth/oidc/link")},
                               headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
    assert _user(stack, local["email"])["oidc_subject"] is None


def test_an_identity_linked_to_another_account_is_not_linked_again(stack, oidc_provider, sso):
    account = oidc_provider.add_account()
    with requests.Session() as browser:
        assert sso.sign_in(browser, account).status_code == 302
    local = stack.create_user()
    with stack.login(local) as browser:
        refused = _link(stack, sso, browser, account)
    assert refused.status_code == 409 and "linked to another Berth account" in refused.text
    assert _user(stack, local["email"])["oidc_subject"] is None


def test_a_link_finished_in_another_sign_in_links_nobody(stack, oidc_provider, sso):
    """The victim starts linking; before the callback, the browser is signed in as someone else
    (or signed out): the provider's identity goes to neither."""
    victim, attacker = stack.create_user(), stack.create_user()
    account = oidc_provider.add_account()
    with stack.login(victim) as browser:
        started = post_form(browser, f"{stack.base_url}/auth/oidc/link", allow_redirects=False)
        callback = sso.authorize(browser, started.headers["Location"], account)
        for cookie in [c for c in browser.cookies if c.name == "berth_session"]:
            browser.cookies.clear(cookie.domain, cookie.path, cookie.name)
        token = form_token(browser, f"{stack.base_url}/auth/login")
        assert post_login(browser, stack.base_url, token, attacker["email"], attacker["password"]).status_code == 302
        refused = browser.get(callback, allow_redirects=False, timeout=20)
    assert refused.status_code == 403 and "no longer signed in as the account" in refused.text
    assert _user(stack, victim["email"])["oidc_subject"] is None
    assert _user(stack, attacker["email"])["oidc_subject"] is None
    # And the callback opened in the attacker's own browser, at an address of its own (this
    # suite's failed callbacks from 127.0.0.1 add up towards that address's wait), is refused:
    # its state is not there.
    with requests.Session() as other:
        other.mount("http://", _FromAddress(f"127.92.{os.urandom(1)[0]}.{1 + os.urandom(1)[0] % 250}"))
        assert other.get(callback, allow_redirects=False, timeout=10).status_code == 400
    assert parse_qs(urlsplit(callback).query)["state"]
    assert re.search("link_session_ended", json.dumps([e["message"] for e in _events(stack, "auth.sso_failed")]))

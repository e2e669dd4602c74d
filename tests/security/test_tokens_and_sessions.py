"""Attacks on API tokens and sessions, through the real nginx and auth service: scopes on every
API verb and on tool hosts, escalation by minting, path tricks, the expiry cap, deactivation and
reactivation, caps under racing requests, and the clear 401 answers."""
import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from berth.tokens import TOKEN_REFUSALS
from tests.actions import form_token, post_form, post_login
from tests.integration.test_tokens import _api, _assert_json_error, _hash, make_token

READ_ONLY = "This API token is read-only"
NO_ADMIN_SCOPE = "lacks the admin scope"
NO_MINTING = "An API token cannot create tokens"


def _token(stack, user, scope="read", days=30):
    with stack.login(user) as browser:
        return make_token(stack, browser, scope=scope, days=days)


def _live_tokens(stack, user):
    return stack.query("SELECT id, scope, expires_at FROM api_tokens WHERE user_id = :u AND revoked_at IS NULL",
                       u=user["id"])


# -- scopes on every verb of the API ------------------------------------------------------------------

def _launch(stack, user):
    """A running personal tool of user's (through a launch-scoped token): its instance id."""
    token = _token(stack, user, "launch")
    made = _api(stack, token, "/api/instances", "POST", json={"tool": "echo-api"})
    assert made.status_code in (200, 202), made.text
    return made.json()["id"]


@pytest.mark.parametrize("verb", ["launch", "stop", "share", "unshare", "revoke token", "mint token",
                                  "admin change user", "admin stop"])
def test_a_read_only_token_changes_nothing_whatever_the_verb(stack, alice, verb):
    admin = stack.create_user(is_admin=True)
    owner = admin if verb.startswith("admin") else alice
    read = _token(stack, owner, "read")
    instance_id = _launch(stack, alice) if verb in ("stop", "admin stop") else 0
    grant = None
    if verb == "unshare":
        grant = _api(stack, _token(stack, alice, "launch"), "/api/tools/echo/grants", "POST",
                     json={"user": admin["email"]}).json()["id"]
    other_token = _live_tokens(stack, owner)[0]["id"]
    requests_by_verb = {
        "launch": ("POST", "/api/instances", {"tool": "echo-api"}),
        "stop": ("POST", f"/api/instances/{instance_id}/stop", None),
        "share": ("POST", "/api/tools/echo/grants", {"user": admin["email"]}),
        "unshare": ("DELETE", f"/api/tools/echo/grants/{grant}", None),
        "revoke token": ("DELETE", f"/api/tokens/{other_token}", None),
        "mint token": ("POST", "/api/tokens", {"name": "more", "scope": "launch"}),
        "admin change user": ("PATCH", f"/api/admin/users/{alice['id']}", {"is_active": False}),
        "admin stop": ("POST", f"/api/admin/instances/{instance_id}/stop", None),
    }
    method, path, body = requests_by_verb[verb]
    before = (stack.query("SELECT id, state IN ('STOPPING', 'STOPPED') AS stopping FROM tool_instances ORDER BY id"),
              stack.query("SELECT id FROM tool_grants ORDER BY id"),
              stack.query("SELECT id, revoked_at FROM api_tokens ORDER BY id"),
              stack.query("SELECT id, is_active FROM users ORDER BY id"))
    refused = _api(stack, read, path, method, json=body)
    message = _assert_json_error(refused, 403)
    expected = {"mint token": NO_MINTING, "admin change user": NO_ADMIN_SCOPE, "admin stop": NO_ADMIN_SCOPE}
    assert expected.get(verb, READ_ONLY) in message, message
    after = (stack.query("SELECT id, state IN ('STOPPING', 'STOPPED') AS stopping FROM tool_instances ORDER BY id"),
             stack.query("SELECT id FROM tool_grants ORDER BY id"),
             stack.query("SELECT id, revoked_at FROM api_tokens ORDER BY id"),
             stack.query("SELECT id, is_active FROM users ORDER BY id"))
    assert after == before
    # Looking is what it is for.
    assert _api(stack, read, "/api/me").status_code == 200
    assert _api(stack, read, "/api/instances").status_code == 200


@pytest.mark.parametrize("is_admin, scope, reaches", [
    (False, "read", False), (False, "launch", False), (True, "read", False), (True, "launch", False),
    (True, "admin", True),
])
def test_only_an_admin_scope_on_an_administrators_token_reaches_administration(stack, is_admin, scope, reaches):
    user = stack.create_user(is_admin=is_admin)
    token = _token(stack, user, scope)
    for path in ("/api/admin/users", "/api/admin/instances", f"/api/admin/users/{user['id']}"):
        answer = _api(stack, token, path)
        if reaches:
            assert answer.status_code == 200, (path, answer.text)
        else:
            _assert_json_error(answer, 403)


def test_an_ordinary_user_cannot_make_an_admin_token_on_any_path(stack, alice):
    with stack.login(alice) as browser:
        page = post_form(browser, f"{stack.base_url}/account/tokens", {"name": "x", "days": 7, "scope": "admin"},
                         page=f"{stack.base_url}/account")
        assert page.status_code == 400 and "Only administrators may create tokens with the admin scope." in page.text
        csrf = {"X-CSRFToken": form_token(browser, f"{stack.base_url}/account")}
        api = browser.post(f"{stack.base_url}/api/tokens", json={"name": "x", "scope": "admin"}, headers=csrf,
                           timeout=10)
        assert "admin scope" in _assert_json_error(api, 400)
        unknown = browser.post(f"{stack.base_url}/api/tokens", json={"name": "x", "scope": "root"}, headers=csrf,
                               timeout=10)
        _assert_json_error(unknown, 400)
    assert _live_tokens(stack, alice) == []


@pytest.mark.parametrize("scope", ["read", "launch", "admin"])
def test_a_token_never_mints_a_token_of_more_scope_or_a_later_expiry(stack, scope):
    """A 7-day token asks for a 365-day admin token: no token makes any token at all."""
    admin = stack.create_user(is_admin=True)
    token = _token(stack, admin, scope, days=7)
    for body in ({"name": "forever", "expires_in_days": 365, "scope": "admin"},
                 {"name": "same", "expires_in_days": 7, "scope": scope}, {"name": "bare"}):
        assert NO_MINTING in _assert_json_error(_api(stack, token, "/api/tokens", "POST", json=body), 403)
    # Nor by another door: the Account page's form takes no token.
    assert _api(stack, token, "/account/tokens", "POST", data={"name": "x", "days": 365}).status_code == 403
    assert len(_live_tokens(stack, admin)) == 1


@pytest.mark.parametrize("path", ["/api//admin/users", "/api/admin//users", "/api/./admin/users",
                                  "/api/tools/../admin/users", "/api/admin%2fusers", "/api/%61dmin/users",
                                  "//api/admin/users", "/api/admin/users/", "/api/admin"])
def test_path_tricks_do_not_carry_a_launch_token_into_administration(stack, path):
    admin = stack.create_user(is_admin=True)
    token = _token(stack, admin, "launch")
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    connection.request("GET", path, headers={"Host": f"berth.localhost:{stack.port}",
                                             "Authorization": f"Bearer {token}"})
    answer = connection.getresponse()
    body = answer.read()
    connection.close()
    assert answer.status in (403, 404, 308), (path, answer.status, body[:300])
    assert b"users" not in body or b"error" in body, body[:300]
    if answer.status == 308:  # werkzeug tidies slashes: the tidied address is refused in turn
        assert _api(stack, token, answer.getheader("Location").split(str(stack.port), 1)[-1]).status_code == 403


@pytest.mark.parametrize("override", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_a_method_override_header_does_not_turn_a_read_token_into_a_write(stack, alice, override):
    read = _token(stack, alice, "read")
    answer = _api(stack, read, "/api/instances", "POST", json={"tool": "echo-api"}, headers={override: "GET"})
    assert READ_ONLY in _assert_json_error(answer, 403)
    assert stack.instances(stack.tool_host("echo-api", alice)) == []


# -- scopes on tool hosts -------------------------------------------------------------------------------

def test_a_read_only_token_never_starts_a_tool(stack, alice):
    read = _token(stack, alice, "read")
    answer = requests.get(stack.tool_url("echo-api", alice), allow_redirects=False, timeout=10,
                          headers={"Authorization": f"Bearer {read}", "Accept": "text/html",
                                   "Sec-Fetch-Mode": "navigate"})
    assert READ_ONLY in _assert_json_error(answer, 403)
    assert stack.instances(stack.tool_host("echo-api", alice)) == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_a_read_only_token_only_looks_at_a_running_tool(stack, alice, method):
    _launch(stack, alice)
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo-api", alice)
    read = _token(stack, alice, "read")
    headers = {"Authorization": f"Bearer {read}"}
    looked = requests.get(stack.tool_url("echo-api", alice, "/headers"), headers=headers, timeout=10)
    assert looked.status_code == 200, looked.text
    changed = requests.request(method, stack.tool_url("echo-api", alice, "/headers"), headers=headers,
                               data="x", allow_redirects=False, timeout=10)
    assert READ_ONLY in _assert_json_error(changed, 403)
    socket = requests.get(stack.tool_url("echo-api", alice, "/ws"), allow_redirects=False, timeout=10,
                          headers={**headers, "Upgrade": "websocket", "Connection": "Upgrade",
                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    assert socket.status_code == 403


# -- the expiry cap, on every path ----------------------------------------------------------------------

@pytest.mark.parametrize("days", ["max+1", 100000, 0, -1])
def test_the_expiry_cap_holds_on_the_account_page_and_the_api(stack, alice, days):
    max_days = stack.app.config["BERTH_TOKEN_MAX_DAYS"]
    days = max_days + 1 if days == "max+1" else days
    with stack.login(alice) as browser:
        page = post_form(browser, f"{stack.base_url}/account/tokens", {"name": "long", "days": days},
                         page=f"{stack.base_url}/account")
        assert page.status_code == 400
        csrf = {"X-CSRFToken": form_token(browser, f"{stack.base_url}/account")}
        api = browser.post(f"{stack.base_url}/api/tokens", json={"name": "long", "expires_in_days": days},
                           headers=csrf, timeout=10)
        _assert_json_error(api, 400)
    assert _live_tokens(stack, alice) == []


# -- deactivation is for good ---------------------------------------------------------------------------

@pytest.mark.parametrize("door", ["api", "admin page"])
def test_a_deactivated_users_tokens_and_sessions_stay_dead_after_reactivation(stack, alice, door):
    admin = stack.create_user(is_admin=True)
    tokens = [_token(stack, alice, scope) for scope in ("read", "launch")]
    browser = stack.login(alice)
    admin_token = _token(stack, admin, "admin")

    def set_active(active):
        if door == "api":
            answer = _api(stack, admin_token, f"/api/admin/users/{alice['id']}", "PATCH", json={"is_active": active})
            assert answer.status_code == 200, answer.text
        else:
            with stack.login(admin) as page:
                answer = post_form(page, f"{stack.base_url}/admin/users/{alice['id']}/flags",
                                   {"is_active": "1" if active else "0"},
                                   page=f"{stack.base_url}/admin/users/{alice['id']}")
                assert answer.status_code == 200, answer.text[:300]

    set_active(False)
    set_active(True)
    for token in tokens:
        assert _assert_json_error(_api(stack, token), 401) == TOKEN_REFUSALS["revoked"]
    assert browser.get(stack.base_url + "/", headers={"Accept": "application/json"}, timeout=10).status_code == 401
    assert stack.query("SELECT id FROM api_tokens WHERE user_id = :u AND revoked_at IS NULL", u=alice["id"]) == []
    assert stack.query("SELECT id FROM sessions WHERE user_id = :u AND revoked_at IS NULL", u=alice["id"]) == []
    browser.close()
    # The person signs in again and makes new ones: those work.
    assert _api(stack, _token(stack, alice, "read")).status_code == 200


# -- caps, under racing requests ------------------------------------------------------------------------

def test_racing_token_creations_never_pass_the_cap(stack, alice):
    cap = stack.app.config["BERTH_MAX_TOKENS_PER_USER"]
    with stack.login(alice) as browser:
        csrf = form_token(browser, f"{stack.base_url}/account")
        cookies = browser.cookies.get_dict()
    racers = cap + 8
    start = threading.Barrier(racers)

    def create(number):
        start.wait()
        return requests.post(f"{stack.base_url}/api/tokens", json={"name": f"racer {number}"}, cookies=cookies,
                             headers={"X-CSRFToken": csrf, "Accept": "application/json"}, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=racers) as pool:
        statuses = list(pool.map(create, range(racers)))
    assert statuses.count(201) == cap, statuses
    assert set(statuses) == {201, 400}, statuses
    assert len(_live_tokens(stack, alice)) == cap
    # Revoking one makes room for one.
    with stack.login(alice) as browser:
        post_form(browser, f"{stack.base_url}/account/tokens/{_live_tokens(stack, alice)[0]['id']}/revoke",
                  page=f"{stack.base_url}/account")
        room = post_form(browser, f"{stack.base_url}/account/tokens", {"name": "one more", "days": 7},
                         page=f"{stack.base_url}/account", allow_redirects=False)
        assert room.status_code == 303
        again = post_form(browser, f"{stack.base_url}/account/tokens", {"name": "too many", "days": 7},
                          page=f"{stack.base_url}/account")
        assert again.status_code == 400 and "the most allowed per person" in again.text


def test_racing_sign_ins_end_the_oldest_sessions_and_never_pass_the_cap(stack, alice):
    cap = stack.app.config["BERTH_MAX_SESSIONS_PER_USER"]
    oldest = stack.login(alice)
    # Four at a time: more sign-ins of one account at once than BERTH_SIGN_IN_ACCOUNT_FAILURES
    # are refused by the guessing throttle, which counts each attempt before checking it.
    racers, at_once = cap + 5, 4
    browsers = [requests.Session() for _ in range(racers)]
    tokens = [form_token(browser, f"{stack.base_url}/auth/login") for browser in browsers]

    def sign_in(number):
        return post_login(browsers[number], stack.base_url, tokens[number], alice["email"], alice["password"]).status_code

    try:
        with ThreadPoolExecutor(max_workers=at_once) as pool:
            statuses = list(pool.map(sign_in, range(racers)))
        assert statuses == [302] * racers  # nobody is refused: the oldest sessions end instead
        live = stack.query("SELECT id FROM sessions WHERE user_id = :u AND revoked_at IS NULL", u=alice["id"])
        assert len(live) == cap
        assert oldest.get(stack.base_url + "/", headers={"Accept": "application/json"}, timeout=10).status_code == 401
        working = sum(browser.get(stack.base_url + "/", headers={"Accept": "application/json"},
                                  timeout=10).status_code == 200 for browser in browsers)
        assert working == cap
    finally:
        oldest.close()
        for browser in browsers:
            browser.close()
    assert stack.query("SELECT id FROM events WHERE kind = 'auth.session_end' AND user_id = :u "
                       "AND message LIKE '%at most%'", u=alice["id"])


# -- clear answers for tokens that are no good ----------------------------------------------------------

def test_invalid_expired_and_revoked_tokens_each_say_why(stack, alice):
    expired = _token(stack, alice, "read")
    stack.query("UPDATE api_tokens SET expires_at = created_at WHERE token_hash = :h", h=_hash(expired))
    revoked = _token(stack, alice, "read")
    stack.query("UPDATE api_tokens SET revoked_at = created_at WHERE token_hash = :h", h=_hash(revoked))
    messages = {
        "unknown": _assert_json_error(_api(stack, "berth_" + "Q" * 43), 401),
        "expired": _assert_json_error(_api(stack, expired), 401),
        "revoked": _assert_json_error(_api(stack, revoked), 401),
    }
    assert messages["unknown"] == TOKEN_REFUSALS["invalid"]
    assert messages["expired"] == TOKEN_REFUSALS["expired"]
    assert messages["revoked"] == TOKEN_REFUSALS["revoked"]
    answer = _api(stack, expired)
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    # Without any credential it is still the plain sign-in answer.
    bare = requests.get(f"{stack.base_url}/api/me", headers={"Accept": "application/json"}, timeout=10)
    assert bare.status_code == 401 and bare.json()["error"] == "Sign-in required."


def test_a_token_from_one_user_with_another_users_id_header_is_refused(stack, alice, bob):
    """A forged X-Berth-User-Id never pairs one user's token with another user."""
    token = _token(stack, alice, "launch")
    answer = _api(stack, token, headers={"X-Berth-User-Id": str(bob["id"])})
    _assert_json_error(answer, 403)
    assert json.loads(answer.text)["error"].startswith("The request carries a reserved header")

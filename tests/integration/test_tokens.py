"""Personal API tokens at the door: made on the Account page, shown once, stored hashed, with an
expiry; accepted as `Authorization: Bearer` for the API on the main host and for tools whose
template allows it; refused with plain JSON 401 or 403, never a login redirect."""
import hashlib
import http.client
import json
from datetime import datetime, timedelta
import html
import re

import pytest
import requests

from berth.tokens import TOKEN_REFUSALS
from tests.actions import form_token, post_form

NEW_TOKEN = re.compile(r'id="new-token-value" class="token-value" type="text" readonly value="([^"]+)"')


def _hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def make_token(stack, browser, name="laptop script", days=30, scope="launch"):
    """Create a token through the Account page, as a person does; return the token shown."""
    answer = post_form(browser, f"{stack.base_url}/account/tokens", {"name": name, "days": days, "scope": scope},
                       page=f"{stack.base_url}/account", allow_redirects=False)
    assert answer.status_code == 303, answer.text
    shown = browser.get(f"{stack.base_url}/account", timeout=10)
    assert shown.status_code == 200
    return html.unescape(NEW_TOKEN.search(shown.text).group(1))


def _api(stack, token, path="/api/me", method="GET", **kwargs):
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return requests.request(method, stack.base_url + path, headers=headers, allow_redirects=False,
                            timeout=10, **kwargs)


def _assert_json_error(answer, status):
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    assert "Location" not in answer.headers
    assert isinstance(answer.json()["error"], str) and answer.json()["error"]
    return answer.json()["error"]


def test_a_token_made_on_the_account_page_is_shown_once_and_stored_hashed(stack, alice):
    with stack.login(alice) as browser:
        token = make_token(stack, browser, name="nightly <report>")
        assert token.startswith("berth_") and len(token) >= 49
        page = browser.get(f"{stack.base_url}/account", timeout=10)
        assert token not in page.text  # never again
        assert "nightly &lt;report&gt;" in page.text and token[:12] + "…" in page.text
        assert token not in str(browser.cookies.get_dict())
    [row] = stack.query("SELECT * FROM api_tokens WHERE user_id = :u", u=alice["id"])
    assert row["token_hash"] == _hash(token) and row["prefix"] == token[:12]
    assert stack.query("SELECT id FROM api_tokens WHERE token_hash = :t", t=token) == []
    me = _api(stack, token)
    assert me.status_code == 200, me.text
    assert me.json()["email"] == alice["email"]
    [listed] = _api(stack, token, "/api/tokens").json()["tokens"]
    lifetime = datetime.fromisoformat(listed["expires_at"]) - datetime.fromisoformat(listed["created_at"])
    assert lifetime == timedelta(days=30)
    assert listed["name"] == "nightly <report>" and listed["prefix"] == token[:12] and "token" not in listed


def test_the_account_page_refuses_forms_without_csrf_and_bad_input(stack, alice):
    with stack.login(alice) as browser:
        browser.get(f"{stack.base_url}/account", timeout=10)
        no_csrf = browser.post(f"{stack.base_url}/account/tokens", data={"name": "x", "days": 30}, timeout=10)
        assert no_csrf.status_code == 400
        csrf = form_token(browser, f"{stack.base_url}/account")
        for data, message in (({"name": "  ", "days": 30}, "Give the token a name."),
                              ({"name": "x" * 101, "days": 30}, "Field cannot be longer than 100 characters."),
                              ({"name": "ok", "days": 100000}, "The lifetime must be a whole number of days"),
                              ({"name": "a\x00b", "days": 30}, "The name may not contain control characters."),
                              ({"name": "ok", "days": "soon"}, "Not a valid integer value.")):
            answer = browser.post(f"{stack.base_url}/account/tokens", data={"csrf_token": csrf, **data},
                                  timeout=10)
            assert answer.status_code == 400, data
            assert message in html.unescape(answer.text), (data, answer.text)
    assert stack.query("SELECT id FROM api_tokens WHERE user_id = :u", u=alice["id"]) == []


def test_a_revoked_token_is_refused_on_the_next_request(stack, alice, bob):
    with stack.login(alice) as browser:
        token = make_token(stack, browser)
        assert _api(stack, token).status_code == 200
        [row] = stack.query("SELECT id FROM api_tokens WHERE user_id = :u", u=alice["id"])
        # Another user cannot revoke it.
        with stack.login(bob) as other:
            post_form(other, f"{stack.base_url}/account/tokens/{row['id']}/revoke", page=f"{stack.base_url}/account")
        assert _api(stack, token).status_code == 200

        done = post_form(browser, f"{stack.base_url}/account/tokens/{row['id']}/revoke",
                         page=f"{stack.base_url}/account")
        assert done.status_code == 200
        assert "The token is revoked" in done.text and f'data-token="{row["id"]}"' not in done.text
    # Browsers' Accept header or not, an API client is never redirected to a login page.
    assert _assert_json_error(_api(stack, token), 401) == TOKEN_REFUSALS["revoked"]
    _assert_json_error(_api(stack, token, headers={"Accept": "text/html"}), 401)
    assert stack.query("SELECT id FROM events WHERE kind = 'token.revoke' AND user_id = :u", u=alice["id"])


@pytest.mark.parametrize("case, error", [
    ("expired", TOKEN_REFUSALS["expired"]), ("deactivated", TOKEN_REFUSALS["inactive"]),
    ("unknown", TOKEN_REFUSALS["invalid"]), ("not-berth", "Sign-in required."), ("garbage", "Sign-in required."),
])
def test_a_token_that_is_no_longer_good_gets_a_401_that_says_why(stack, alice, case, error):
    with stack.login(alice) as browser:
        token = make_token(stack, browser)
    if case == "expired":
        stack.query("UPDATE api_tokens SET expires_at = created_at WHERE token_hash = :h", h=_hash(token))
    elif case == "deactivated":
        stack.query("UPDATE users SET is_active = :f WHERE id = :u", f=False, u=alice["id"])
    elif case == "unknown":
        token = "berth_" + "x" * 43
    elif case == "not-berth":
        token = "some-other-bearer-token"
    else:
        token = "berth_" + "A" * 400
    for accept in ("application/json", "text/html", "*/*"):
        assert _assert_json_error(_api(stack, token, headers={"Accept": accept}), 401) == error


def test_tokens_reach_only_the_api_on_the_main_host(stack, alice):
    with stack.login(alice) as browser:
        token = make_token(stack, browser)
    assert _api(stack, token, "/api/tools").status_code == 200
    # Sent byte for byte (requests would tidy the dot segments away first).
    for path in ("/", "/account", "/api/../account", "/api/%2e%2e/account", "/api/./me", "/api//../account",
                 "/%61pi/me", "/api/..%2faccount"):
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        connection.request("GET", path, headers={"Host": f"berth.localhost:{stack.port}", "Accept": "text/html",
                                                 "Authorization": f"Bearer {token}"})
        answer = connection.getresponse()
        body = answer.read()
        connection.close()
        assert answer.status == 403 and answer.getheader("Content-Type").startswith("application/json"), path
        assert json.loads(body) == {"error": "API tokens are accepted only for the API, under /api/."}, path
    # The login pages take no token: a POST there with only a token does nothing.
    assert _api(stack, token, "/account/tokens", "POST", data={"name": "x"}).status_code == 403


def test_tools_take_tokens_only_when_their_template_allows_it_and_never_see_them(stack, alice, bob):
    with stack.login(alice) as browser:
        token = make_token(stack, browser)
        stack.open_tool(browser, "echo", alice)
        stack.open_tool(browser, "echo-api", alice)

    refused = requests.get(stack.tool_url("echo", alice, "/headers"), allow_redirects=False, timeout=10,
                           headers={"Authorization": f"Bearer {token}", "Accept": "text/html"})
    assert _assert_json_error(refused, 403) == "This tool does not accept API tokens."

    allowed = requests.get(stack.tool_url("echo-api", alice, "/headers"), timeout=10,
                           headers={"Authorization": f"Bearer {token}"})
    assert allowed.status_code == 200, allowed.text
    seen = {name.lower(): value for name, value in allowed.json()["headers"].items()}
    assert "authorization" not in seen and token not in str(allowed.json())
    # A tool's own Authorization scheme passes through untouched (the tool host's cookie decides).
    with stack.login(alice) as browser:
        stack.hand_off(browser, "echo-api", alice)
        own = browser.get(stack.tool_url("echo-api", alice, "/headers"), timeout=10,
                          headers={"Authorization": "Bearer the-tools-own-token"})
        assert own.json()["headers"]["Authorization"] == "Bearer the-tools-own-token"
    # Another user's token does not open alice's tool.
    with stack.login(bob) as browser:
        bobs = make_token(stack, browser)
    other = requests.get(stack.tool_url("echo-api", alice, "/headers"), allow_redirects=False, timeout=10,
                         headers={"Authorization": f"Bearer {bobs}"})
    assert "belongs to another user" in _assert_json_error(other, 403)


def test_using_a_token_marks_it_used_without_a_write_per_request(stack, alice):
    with stack.login(alice) as browser:
        token = make_token(stack, browser)
    [before] = stack.query("SELECT last_used_at FROM api_tokens WHERE token_hash = :h", h=_hash(token))
    assert before["last_used_at"] is None
    for _ in range(5):
        assert _api(stack, token).status_code == 200
    [after] = stack.query("SELECT last_used_at FROM api_tokens WHERE token_hash = :h", h=_hash(token))
    assert after["last_used_at"] is not None
    # Set it back within the interval: further requests leave it alone.
    stack.query("UPDATE api_tokens SET last_used_at = :t WHERE token_hash = :h",
                t=after["last_used_at"], h=_hash(token))
    assert _api(stack, token).status_code == 200
    [again] = stack.query("SELECT last_used_at FROM api_tokens WHERE token_hash = :h", h=_hash(token))
    assert again["last_used_at"] == after["last_used_at"]

"""The REST API through nginx, with API tokens: the catalogue, my instances, my tokens, admin
endpoints, JSON errors; and a schemathesis run against /api/openapi.json."""
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from berth.tokens import TOKEN_REFUSALS
from tests.actions import form_token
from tests.integration.test_tokens import make_token

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(stack):
    """api(user) -> a requests.Session that sends a fresh API token of user's, made on the Account page."""
    sessions = []

    def make(user, scope="launch"):
        with stack.login(user) as browser:
            token = make_token(stack, browser, scope=scope)
        client = requests.Session()
        client.headers["Authorization"] = f"Bearer {token}"
        client.token = token
        sessions.append(client)
        return client

    yield make
    for client in sessions:
        client.close()


def _wait_state(stack, client, instance_id, states, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"{stack.base_url}/api/instances/{instance_id}", timeout=10).json()
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"instance {instance_id} never reached {states}: {status}")


def _error(answer, status):
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json", answer.headers
    body = answer.json()
    assert isinstance(body["error"], str) and body["error"], body
    assert set(body) <= {"error", "login_url"}, body  # nginx's 401 also names the login page
    return body["error"]


# -- the catalogue and my instances -----------------------------------------------------------------

def test_me_and_the_catalogue(stack, alice, api):
    client = api(alice)
    me = client.get(f"{stack.base_url}/api/me", timeout=10).json()
    assert me["id"] == alice["id"] and me["email"] == alice["email"] and me["is_admin"] is False
    tools = {tool["slug"]: tool for tool in client.get(f"{stack.base_url}/api/tools", timeout=10).json()["tools"]}
    assert tools["echo-api"]["api_tokens"] is True and tools["echo"]["api_tokens"] is False
    assert [size["name"] for size in tools["echo-api"]["sizes"]] == ["small", "large"]
    assert tools["echo"]["url"] == stack.tool_url("echo", alice)


def test_start_with_a_size_follow_its_status_and_stop_it(stack, alice, bob, api):
    client = api(alice)
    started = client.post(f"{stack.base_url}/api/instances", json={"tool": "echo-api", "size": "large"}, timeout=10)
    assert started.status_code == 202, started.text
    instance = started.json()
    assert instance["tool"] == "echo-api" and instance["size"] == {"name": "large", "cpu": 1, "memory_mb": 512}
    assert instance["url"] == stack.tool_url("echo-api", alice)

    # Starting it again while it is live returns the same instance (200), not a second one.
    again = client.post(f"{stack.base_url}/api/instances", json={"tool": "echo-api"}, timeout=10)
    assert again.status_code == 200 and again.json()["id"] == instance["id"]

    running = _wait_state(stack, client, instance["id"], ("RUNNING",))
    assert running["running_at"] and isinstance(running["step"], str)
    assert "Launch of Echo for API clients requested (large: 1 CPU, 512 MB)" in [e["message"] for e in running["events"]]
    # The tool answers the same token at its own address.
    tool = client.get(stack.tool_url("echo-api", alice, "/headers"), timeout=10)
    assert tool.status_code == 200 and tool.json()["path"] == "/headers"

    listed = client.get(f"{stack.base_url}/api/instances", params={"state": "live"}, timeout=10).json()
    assert [item["id"] for item in listed["instances"]] == [instance["id"]]
    # Bob sees none of it.
    other = api(bob)
    assert other.get(f"{stack.base_url}/api/instances", timeout=10).json() == {"instances": []}
    _error(other.get(f"{stack.base_url}/api/instances/{instance['id']}", timeout=10), 404)
    _error(other.post(f"{stack.base_url}/api/instances/{instance['id']}/stop", timeout=10), 404)

    stopped = client.post(f"{stack.base_url}/api/instances/{instance['id']}/stop", timeout=10)
    assert stopped.status_code == 202 and stopped.json()["state"] == "STOPPING"
    _wait_state(stack, client, instance["id"], ("STOPPED",))
    assert "not running" in _error(client.post(f"{stack.base_url}/api/instances/{instance['id']}/stop",
                                               timeout=10), 409)
    ended = client.get(f"{stack.base_url}/api/instances", params={"state": "ended"}, timeout=10).json()
    assert [item["state"] for item in ended["instances"]] == ["STOPPED"]


@pytest.mark.parametrize("body, status, message", [
    ({"tool": "nope"}, 404, "There is no tool 'nope' in the catalogue."),
    ({"tool": "echo-api", "size": "huge"}, 404, "Echo for API clients has no size 'huge' (sizes: small, large)."),
    ({"tool": "echo", "size": "small"}, 404, "Echo has no size 'small' (sizes: none)."),
    ({}, 400, "Invalid body: 'tool' is a required property"),
    ({"tool": "echo", "colour": "red"}, 400, "Invalid body: Additional properties are not allowed ('colour' was "
                                             "unexpected)"),
    ({"tool": 5}, 400, "Invalid body: tool: 5 is not of type 'string'"),
    ([], 400, "Invalid body: [] is not of type 'object'"),
])
def test_a_bad_launch_request_says_what_is_wrong(stack, alice, api, body, status, message):
    client = api(alice)
    assert _error(client.post(f"{stack.base_url}/api/instances", json=body, timeout=10), status) == message
    assert client.get(f"{stack.base_url}/api/instances", timeout=10).json() == {"instances": []}


def test_every_error_is_json_with_a_message(stack, alice, api):
    client = api(alice)
    base = stack.base_url
    assert _error(client.get(f"{base}/api/nothing-here", timeout=10), 404)
    assert _error(client.delete(f"{base}/api/me", timeout=10), 405)
    assert _error(client.get(f"{base}/api/instances/99999999999", timeout=10), 404)
    assert _error(client.get(f"{base}/api/instances", params={"limit": "many"}, timeout=10), 400) == \
        "limit must be a whole number from 1 to 200."
    assert _error(client.get(f"{base}/api/instances", params={"state": "sleeping"}, timeout=10), 400)
    assert _error(client.post(f"{base}/api/instances", data="{not json", timeout=10,
                              headers={"Content-Type": "application/json"}), 400) == "The body is not valid JSON."
    assert "Content-Type: application/json" in _error(
        client.post(f"{base}/api/instances", data="tool=echo", timeout=10), 400)
    # A launch token reaches no administration endpoint, whoever holds it (the door says why).
    assert "lacks the admin scope" in _error(client.get(f"{base}/api/admin/users", timeout=10), 403)
    # nginx refuses TRACE before any routing; the answer is still JSON, and says what is allowed.
    connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    connection.request("TRACE", "/api/instances", headers={"Host": f"berth.localhost:{stack.port}"})
    trace = connection.getresponse()
    assert trace.status == 405 and trace.getheader("Content-Type") == "application/json"
    assert json.loads(trace.read())["error"] == "This method is not allowed here."
    assert set(trace.getheader("Allow").split(", ")) >= {"GET", "POST"}
    connection.close()
    # No credentials at all: 401 JSON from nginx.
    anonymous = requests.get(f"{base}/api/me", headers={"Accept": "application/json"}, allow_redirects=False,
                             timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "Sign-in required."


def test_a_browser_session_may_use_the_api_but_must_send_the_csrf_token_to_change_anything(stack, alice):
    with stack.login(alice) as browser:
        browser.headers["Accept"] = "application/json"
        assert browser.get(f"{stack.base_url}/api/me", timeout=10).json()["id"] == alice["id"]
        refused = browser.post(f"{stack.base_url}/api/tokens", json={"name": "x"}, timeout=10)
        assert "CSRF" in _error(refused, 400)
        csrf = form_token(browser, f"{stack.base_url}/account")
        made = browser.post(f"{stack.base_url}/api/tokens", json={"name": "from the page"}, timeout=10,
                            headers={"X-CSRFToken": csrf})
        assert made.status_code == 201, made.text


# -- my tokens ----------------------------------------------------------------------------------------

def test_tokens_through_the_api(stack, alice, api):
    client = api(alice)
    with stack.login(alice) as browser:
        browser.headers["Accept"] = "application/json"
        csrf = {"X-CSRFToken": form_token(browser, f"{stack.base_url}/account")}
        made = browser.post(f"{stack.base_url}/api/tokens", json={"name": "ci", "expires_in_days": 7}, timeout=10,
                            headers=csrf)
        assert made.status_code == 201
        new = made.json()
        assert new["token"].startswith("berth_") and new["prefix"] == new["token"][:12] and new["expired"] is False
        assert new["scope"] == "read"  # the least, unless asked for more
        listed = client.get(f"{stack.base_url}/api/tokens", timeout=10).json()["tokens"]
        assert [(token["name"], token["scope"]) for token in listed] == [("ci", "read"), ("laptop script", "launch")]
        assert all("token" not in token for token in listed)

        with requests.Session() as ci:
            ci.headers["Authorization"] = f"Bearer {new['token']}"
            assert ci.get(f"{stack.base_url}/api/me", timeout=10).status_code == 200
            assert client.delete(f"{stack.base_url}/api/tokens/{new['id']}", timeout=10).status_code == 204
            assert _error(ci.get(f"{stack.base_url}/api/me", timeout=10), 401) == TOKEN_REFUSALS["revoked"]
        _error(client.delete(f"{stack.base_url}/api/tokens/{new['id']}", timeout=10), 404)
        max_days = stack.app.config["BERTH_TOKEN_MAX_DAYS"]
        assert f"expires_in_days: {max_days + 1} is greater than the maximum of {max_days}" in _error(
            browser.post(f"{stack.base_url}/api/tokens", json={"name": "x", "expires_in_days": max_days + 1},
                         timeout=10, headers=csrf), 400)
        assert _error(browser.post(f"{stack.base_url}/api/tokens", json={"name": "   "}, timeout=10, headers=csrf),
                      400)
        # PostgreSQL stores no NUL in text: refused as bad input, never a server error.
        assert _error(browser.post(f"{stack.base_url}/api/tokens", json={"name": "a\u0000b"}, timeout=10,
                                   headers=csrf), 400)
    # A token makes no tokens, whatever it asks for.
    assert "cannot create tokens" in _error(
        client.post(f"{stack.base_url}/api/tokens", json={"name": "x", "expires_in_days": 1}, timeout=10), 403)


# -- administration -------------------------------------------------------------------------------

def test_an_admin_deactivates_a_user_who_is_then_refused_on_the_next_request(stack, alice, api):
    admin = api(stack.create_user(is_admin=True), scope="admin")
    victim = api(alice)
    with stack.login(alice) as browser:
        assert browser.get(stack.base_url + "/", timeout=10).status_code == 200
        # The suite's stack holds a user for each test before this one: the most a page lists.
        listed = admin.get(f"{stack.base_url}/api/admin/users", params={"limit": 500}, timeout=10).json()["users"]
        assert alice["email"] in [user["email"] for user in listed]

        changed = admin.patch(f"{stack.base_url}/api/admin/users/{alice['id']}", json={"is_active": False},
                              timeout=10)
        assert changed.status_code == 200 and changed.json()["is_active"] is False
        # The next request, by session or by token, is refused.
        assert browser.get(stack.base_url + "/", headers={"Accept": "application/json"}, timeout=10).status_code == 401
        assert victim.get(f"{stack.base_url}/api/me", timeout=10).status_code == 401
        # Reactivated, the user's old tokens and sessions stay dead.
        admin.patch(f"{stack.base_url}/api/admin/users/{alice['id']}", json={"is_active": True}, timeout=10)
        assert _error(victim.get(f"{stack.base_url}/api/me", timeout=10), 401) == TOKEN_REFUSALS["revoked"]
        assert browser.get(stack.base_url + "/", headers={"Accept": "application/json"}, timeout=10).status_code == 401
    me = admin.get(f"{stack.base_url}/api/me", timeout=10).json()
    assert "cannot deactivate your own account" in _error(
        admin.patch(f"{stack.base_url}/api/admin/users/{me['id']}", json={"is_active": False}, timeout=10), 409)
    _error(admin.patch(f"{stack.base_url}/api/admin/users/{me['id']}", json={}, timeout=10), 400)
    _error(admin.patch(f"{stack.base_url}/api/admin/users/2147483647", json={"is_admin": True}, timeout=10), 404)


def test_an_admin_sees_and_stops_everyones_instances(stack, alice, api):
    admin = api(stack.create_user(is_admin=True), scope="admin")
    client = api(alice)
    instance = client.post(f"{stack.base_url}/api/instances", json={"tool": "echo-api"}, timeout=10).json()
    everyone = admin.get(f"{stack.base_url}/api/admin/instances", params={"state": "live"}, timeout=10).json()
    assert instance["id"] in [item["id"] for item in everyone["instances"]]
    _error(client.get(f"{stack.base_url}/api/admin/instances", timeout=10), 403)
    stopped = admin.post(f"{stack.base_url}/api/admin/instances/{instance['id']}/stop", timeout=10)
    assert stopped.status_code == 202
    _wait_state(stack, client, instance["id"], ("STOPPED",))


# -- the OpenAPI document, and schemathesis against it ------------------------------------------

def test_the_openapi_document_describes_the_api(stack, alice, api):
    document = api(alice).get(f"{stack.base_url}/api/openapi.json", timeout=10).json()
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": f"{stack.base_url}/api"}]
    routes = {(rule.rule, method) for rule in stack.app.url_map.iter_rules() if rule.rule.startswith("/api/")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {("/api" + path.replace("{slug}", "<slug>").replace("{", "<int:").replace("}", ">"),
                   method.upper())
                  for path, operations in document["paths"].items() for method in operations}
    # The document itself and its rendering for people are no operations of the API.
    assert documented == routes - {("/api/openapi.json", "GET"), ("/api/docs", "GET")}


@pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)
def test_schemathesis_finds_nothing_wrong(stack, tmp_path):
    """Every operation, with valid and invalid input, as an administrator (which reaches every one)."""
    admin = stack.create_user(is_admin=True)
    with stack.login(admin) as browser:
        token = make_token(stack, browser, name="schemathesis", scope="admin")
    # Hypothesis and schemathesis keep their files here, not in the checkout.
    env = {**os.environ, "HOME": str(tmp_path), "SCHEMATHESIS_HOOKS": "", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.localhost_cli", "schemathesis.cli:schemathesis",
               "run", f"{stack.base_url}/api/openapi.json",
               "--header", f"Authorization: Bearer {token}", "--checks", "all",
               "--max-examples", "30", "--seed", "20261126", "--generation-database", "none",
               "--workers", "1", "--request-timeout", "20", "--no-color", "--warnings", "off",
               "--report", "junit", "--report-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "No issues found" in done.stdout or " passed" in done.stdout, done.stdout[-5000:]
    # Whatever it started is stopped again.
    for row in stack.query("SELECT id FROM tool_instances WHERE owner_id = :u AND state IN "
                           "('QUEUED', 'SPAWNING', 'RUNNING')", u=admin["id"]):
        requests.post(f"{stack.base_url}/api/instances/{row['id']}/stop", timeout=10,
                      headers={"Authorization": f"Bearer {token}"})

"""Who may open what, through the real nginx: the permission matrix over HTTP and WebSocket,
template groups, sharing a personal tool and revoking it, shared tools, identity headers, and
IP allowlists with X-Forwarded-For spoofing. Each action's audit entry is checked too."""
import json
import os
import threading
import time
from urllib.parse import unquote

import pytest
import requests
import websocket
from requests.adapters import HTTPAdapter

from tests.actions import post_form
from tests.conftest import DOMAIN, _make_stack
from tests.integration.test_launch import _wait_state
from tests.local_stack import TOOL_COOKIE, BerthStack

COOKIE = "berth_session"


# -- helpers ----------------------------------------------------------------------------------

def _share(stack, browser, slug, kind, name):
    """Share the signed-in user's tool through the sharing page, as a person would."""
    return post_form(browser, f"{stack.base_url}/sharing/{slug}", {"kind": kind, "name": name},
                     allow_redirects=False)


def _revoke(stack, browser, slug, grant_id):
    url = f"{stack.base_url}/sharing/{slug}"
    return post_form(browser, f"{url}/{grant_id}/revoke", page=url, allow_redirects=False)


def _group(stack, name, *users):
    stack.query("INSERT INTO groups (name, created_at) VALUES (:name, CURRENT_TIMESTAMP)", name=name)
    [row] = stack.query("SELECT id FROM groups WHERE name = :name", name=name)
    for user in users:
        stack.query("INSERT INTO memberships (group_id, user_id, source, created_at) "
                    "VALUES (:g, :u, 'local', CURRENT_TIMESTAMP)", g=row["id"], u=user["id"])
    return row["id"]


def _join(stack, group_name, user):
    [row] = stack.query("SELECT id FROM groups WHERE name = :name", name=group_name)
    stack.query("INSERT INTO memberships (group_id, user_id, source, created_at) "
                "VALUES (:g, :u, 'local', CURRENT_TIMESTAMP)", g=row["id"], u=user["id"])




def _websocket_status(url, browser):
    """101 when the handshake succeeds, else the status nginx answered."""
    try:
        host = url.split("//", 1)[1].split(":", 1)[0]
        socket = websocket.create_connection(url.replace("http://", "ws://", 1),
                                             cookie=f"{TOOL_COOKIE}={BerthStack.tool_cookie(browser, host)}",
                                             header=["Origin: " + url.split("/ws")[0]], timeout=10)
    except websocket.WebSocketBadStatusException as refused:
        return refused.status_code
    try:
        socket.send("ping")
        assert socket.recv() == "ping"
        return socket.getstatus()
    finally:
        socket.close()


def _events(stack, kind, **data):
    rows = stack.query("SELECT * FROM events WHERE kind = :kind ORDER BY id", kind=kind)
    found = []
    for row in rows:
        values = row["data"] if isinstance(row["data"], dict) else json.loads(row["data"] or "{}")
        if all(values.get(key) == value for key, value in data.items()):
            found.append({**row, "data": values})
    return found


def _shared_url(stack, slug, path="/"):
    return f"http://{slug}.{DOMAIN}:{stack.port}{path}"


# -- the permission matrix ----------------------------------------------------------------------

def test_permission_matrix_for_a_shared_personal_tool_over_http_and_websocket(stack):
    owner, grantee, member, outsider = (stack.create_user() for _ in range(4))
    admin = stack.create_user(is_admin=True)
    group = f"viewers-{os.urandom(3).hex()}"
    _group(stack, group, member, owner)  # an ordinary user shares only with their own groups
    browsers = {name: stack.login(user) for name, user in
                (("owner", owner), ("grantee", grantee), ("member", member), ("outsider", outsider),
                 ("admin", admin))}
    stack.open_tool(browsers["owner"], "echo", owner)

    assert _share(stack, browsers["owner"], "echo", "user", grantee["email"].upper()).status_code == 302
    assert _share(stack, browsers["owner"], "echo", "group", group).status_code == 302

    expected = {"owner": 200, "grantee": 200, "member": 200, "outsider": 403, "admin": 403}
    for name, status in expected.items():
        page = browsers[name].get(stack.tool_url("echo", owner, "/headers"), timeout=10)
        assert page.status_code == status, (name, page.text[:300])
        if status == 403:
            assert "belongs to another user, who has not shared it with you." in page.text
        assert _websocket_status(stack.tool_url("echo", owner, "/ws"), browsers[name]) == \
            (101 if status == 200 else 403), name

    # The tool sees neither the platform session nor who the user is (its template did not ask).
    seen = browsers["grantee"].get(stack.tool_url("echo", owner, "/headers"), timeout=10).json()
    assert COOKIE not in seen["cookies"] and TOOL_COOKIE not in seen["cookies"]
    assert not {"X-Berth-User-Id", "X-Berth-User-Email", "X-Berth-Proxy-Secret"} & set(seen["headers"])

    # The grants are recorded, with who made them.
    assert [e["actor"] for e in _events(stack, "grant.add", host=stack.tool_host("echo", owner))] == \
        [f"user:{owner['id']}"] * 2

    # Revoking: the grantee's requests and WebSocket handshakes are refused once the auth cache's
    # second is over; the group stays.
    grant_id = next(row["id"] for row in stack.query("SELECT id FROM tool_grants WHERE user_id = :u",
                                                     u=grantee["id"]))
    assert _revoke(stack, browsers["owner"], "echo", grant_id).status_code == 302
    stack.until_auth_cache_ends(
        lambda: browsers["grantee"].get(stack.tool_url("echo", owner, "/headers"), timeout=10).status_code, 403)
    stack.until_auth_cache_ends(
        lambda: _websocket_status(stack.tool_url("echo", owner, "/ws"), browsers["grantee"]), 403)
    assert browsers["member"].get(stack.tool_url("echo", owner, "/headers"), timeout=10).status_code == 200
    [revoked] = _events(stack, "grant.revoke", grant_id=grant_id)
    assert revoked["actor"] == f"user:{owner['id']}" and revoked["data"]["grantee_user_id"] == grantee["id"]

    # Leaving the group ends the member's access too.
    stack.query("DELETE FROM memberships WHERE user_id = :u", u=member["id"])
    stack.until_auth_cache_ends(
        lambda: browsers["member"].get(stack.tool_url("echo", owner, "/headers"), timeout=10).status_code, 403)


def test_sharing_page_refuses_unknown_groups_non_emails_and_duplicates(stack, alice, bob):
    browser = stack.login(alice)
    assert _share(stack, browser, "echo", "user", "not an email").status_code == 400
    assert _share(stack, browser, "echo", "group", "no-such-group").status_code == 404
    assert _share(stack, browser, "echo", "user", alice["email"]).status_code == 400
    assert _share(stack, browser, "echo", "user", bob["email"]).status_code == 302
    again = _share(stack, browser, "echo", "user", bob["email"])
    assert again.status_code == 409 and "has access already" in again.text
    assert browser.get(f"{stack.base_url}/sharing/board", timeout=10).status_code == 404  # a shared tool
    # Without the form's CSRF token nothing is granted.
    forged = browser.post(f"{stack.base_url}/sharing/echo", data={"kind": "user", "name": "x@example.org"},
                          timeout=10)
    assert forged.status_code == 400


def test_a_grantee_cannot_start_the_owners_stopped_tool(stack, alice, bob):
    owner = stack.login(alice)
    assert _share(stack, owner, "echo", "user", bob["email"]).status_code == 302
    grantee = stack.login(bob)
    page = stack.navigate(grantee, stack.tool_url("echo", alice))
    assert page.status_code == 503
    assert "Only its owner can start it." in page.text
    assert stack.instances(stack.tool_host("echo", alice)) == []
    # The catalogue lists it under "Shared with you", as not running.
    catalogue = grantee.get(stack.base_url + "/", timeout=10).text
    assert "Shared with you" in catalogue and "Only " in catalogue


def test_grants_through_the_api(stack, alice, bob):
    from tests.integration.test_tokens import make_token

    owner = stack.login(alice)
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {make_token(stack, owner)}"
    base = f"{stack.base_url}/api/tools/echo/grants"
    created = api.post(base, json={"user": bob["email"]}, timeout=10)
    assert created.status_code == 201, created.text
    assert created.json()["user"] == bob["email"] and created.json()["group"] is None
    assert api.get(base, timeout=10).json()["grants"] == [created.json()]
    assert api.post(base, json={"user": bob["email"], "group": "x"}, timeout=10).status_code == 400
    assert api.get(f"{stack.base_url}/api/tools/board/grants", timeout=10).status_code == 409
    assert api.delete(f"{base}/{created.json()['id']}", timeout=10).status_code == 204
    assert api.delete(f"{base}/{created.json()['id']}", timeout=10).status_code == 404
    assert api.get(base, timeout=10).json()["grants"] == []


# -- template groups ------------------------------------------------------------------------------

def test_a_template_restricted_to_a_group(stack):
    member, outsider = stack.create_user(), stack.create_user()
    admin = stack.create_user(is_admin=True)
    if not stack.query("SELECT id FROM groups WHERE name = 'team-a'"):
        _group(stack, "team-a")
    _join(stack, "team-a", member)
    as_member, as_outsider, as_admin = stack.login(member), stack.login(outsider), stack.login(admin)

    # The catalogue shows only what each may launch.
    assert 'data-slug="echo-team"' in as_member.get(stack.base_url + "/", timeout=10).text
    assert 'data-slug="echo-team"' in as_admin.get(stack.base_url + "/", timeout=10).text
    assert 'data-slug="echo-team"' not in as_outsider.get(stack.base_url + "/", timeout=10).text
    assert "echo-team" not in [tool["slug"] for tool in
                               as_outsider.get(stack.base_url + "/api/tools", timeout=10).json()["tools"]]

    # The outsider's own address for it is refused by the auth service: 403, not a starting page.
    page = stack.navigate(as_outsider, stack.tool_url("echo-team", outsider))
    assert page.status_code == 403
    assert "You are not in a group that may use Team echo." in page.text
    assert _websocket_status(stack.tool_url("echo-team", outsider, "/ws"), as_outsider) == 403
    launch_url = f"{stack.base_url}/launch/echo-team"
    refused = post_form(as_outsider, launch_url, page=stack.base_url + "/")
    assert refused.status_code == 403
    assert stack.instances(stack.tool_host("echo-team", outsider)) == []

    # The member launches it; the tool is told who is using it, from the auth answer.
    seen = stack.open_tool(as_member, "echo-team", member, "/headers").json()["headers"]
    assert unquote(seen["X-Berth-User-Email"]) == member["email"]
    assert unquote(seen["X-Berth-User-Name"]) == member["email"].split("@")[0]
    assert "team-a" in [unquote(name) for name in seen["X-Berth-User-Groups"].split(",")]

    # A client cannot supply identity itself.
    forged = as_member.get(stack.tool_url("echo-team", member, "/headers"),
                           headers={"X-Berth-User-Email": "boss@example.org"}, timeout=10)
    assert forged.status_code == 403 and "reserved header" in forged.text


# -- shared tools ----------------------------------------------------------------------------------

def test_a_shared_tool_is_opened_by_two_users_at_once(stack):
    first, second = stack.create_user(), stack.create_user()
    browsers = [stack.login(first), stack.login(second)]
    host = f"board.{DOMAIN}"
    for row in stack.instances(host):  # an earlier run on this stack may have left it running
        if row["state"] in ("QUEUED", "SPAWNING", "RUNNING"):
            stack.query("UPDATE tool_instances SET state = 'STOPPING' WHERE id = :id", id=row["id"])
            stack.berth("reconcile")
            _wait_state(stack, host, ("STOPPED",))

    answers = [None, None]
    start = threading.Barrier(2)

    def visit(index):
        start.wait()
        answers[index] = stack.navigate(browsers[index], _shared_url(stack, "board"))

    threads = [threading.Thread(target=visit, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert [answer.status_code for answer in answers] == [202, 202], [a.text[:200] for a in answers]
    _wait_state(stack, host, ("RUNNING",))
    live = [row for row in stack.instances(host) if row["state"] not in ("STOPPED", "FAILED")]
    assert len(live) == 1, live

    # Both reach the same tool, each under their own name.
    seen = [browser.get(_shared_url(stack, "board", "/headers"), timeout=10) for browser in browsers]
    assert [page.status_code for page in seen] == [200, 200]
    assert [unquote(page.json()["headers"]["X-Berth-User-Email"]) for page in seen] == \
        [first["email"], second["email"]]
    assert _websocket_status(_shared_url(stack, "board", "/ws"), browsers[1]) == 101

    # Its personal-looking address is no tool, and the catalogue offers no Stop for it.
    assert stack.navigate(browsers[0], stack.tool_url("board", first)).status_code == 404
    card = browsers[0].get(stack.base_url + "/", timeout=10).text.split('data-slug="board"')[1].split("</li>")[0]
    assert "Open" in card and "Stop" not in card


# -- IP allowlists --------------------------------------------------------------------------------

def test_an_allowlist_refuses_the_address_nginx_sees(stack, alice):
    browser = stack.login(alice)
    for forwarded in (None, "1.2.3.4"):  # no trusted hops: X-Forwarded-For counts for nothing
        headers = {"Sec-Fetch-Mode": "navigate", **({"X-Forwarded-For": forwarded} if forwarded else {})}
        page = browser.get(stack.tool_url("fenced", alice), headers=headers, timeout=10)
        assert page.status_code == 403
        assert "Fenced echo cannot be reached from your address, 127.0.0.1." in page.text


class _FromAddress(HTTPAdapter):
    """Connect from a chosen loopback address (a stand-in for a proxy in front of nginx)."""

    def __init__(self, address):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


@pytest.fixture(scope="module")
def behind_a_proxy(postgres, redis_server, dockerd, tmp_path_factory):
    """A Berth whose nginx has one trusted proxy in front of it, at 127.0.0.2."""
    stack = _make_stack("proxied", postgres.create_database(f"berth_proxied_{time.monotonic_ns()}"),
                        redis_server.url(4), tmp_path_factory.mktemp("proxied"), dockerd.url,
                        extra_env={"BERTH_TRUSTED_HOPS": "1", "BERTH_TRUSTED_PROXIES": "127.0.0.2/32"})
    stack.start()
    yield stack
    stack.stop()


@pytest.mark.parametrize("source, forwarded, seen", [
    ("127.0.0.2", "1.2.3.4, 5.6.7.8", "5.6.7.8"),   # the client wrote 1.2.3.4; the proxy appended the truth
    ("127.0.0.2", "5.6.7.8", "5.6.7.8"),
    ("127.0.0.1", "1.2.3.4", "127.0.0.1"),          # straight to nginx, not through the proxy
    ("127.0.0.2", "not-an-address", "an unreadable address"),
    ("127.0.0.2", None, "127.0.0.2"),               # the proxy itself, with no client behind it
])
def test_spoofed_forwarded_for_never_passes_the_allowlist(behind_a_proxy, source, forwarded, seen):
    stack = behind_a_proxy
    user = stack.create_user()
    browser = stack.login(user)
    browser.mount("http://", _FromAddress(source))
    headers = {"Sec-Fetch-Mode": "navigate", **({"X-Forwarded-For": forwarded} if forwarded else {})}
    page = browser.get(stack.tool_url("fenced", user), headers=headers, timeout=10)
    assert page.status_code == 403, page.text[:300]
    assert f"Fenced echo cannot be reached from your address, {seen}." in page.text
    assert stack.instances(stack.tool_host("fenced", user)) == []


def test_the_allowed_address_through_the_trusted_proxy_reaches_the_tool(behind_a_proxy):
    stack = behind_a_proxy
    user = stack.create_user()
    browser = stack.login(user)
    browser.mount("http://", _FromAddress("127.0.0.2"))
    browser.headers["X-Forwarded-For"] = "1.2.3.4"
    seen = stack.open_tool(browser, "fenced", user, "/headers")
    assert seen.status_code == 200
    # The same session from anywhere else is refused, even while the tool runs.
    browser.headers["X-Forwarded-For"] = "1.2.3.5"
    assert browser.get(stack.tool_url("fenced", user, "/headers"), timeout=10).status_code == 403


def test_identity_headers_of_a_user_in_hundreds_of_groups(stack):
    """A user in many groups (single sign-on can bring hundreds) still reaches the tool."""
    member = stack.create_user()
    if not stack.query("SELECT id FROM groups WHERE name = 'team-a'"):
        _group(stack, "team-a")
    _join(stack, "team-a", member)
    prefix = f"department-of-very-long-group-names-{os.urandom(3).hex()}-"
    for number in range(300):  # about 15 KB of names: more than the header carries
        _group(stack, f"{prefix}{number:03d}", member)
    browser = stack.login(member)
    seen = stack.open_tool(browser, "echo-team", member, "/headers")
    assert seen.status_code == 200
    groups = seen.json()["headers"]["X-Berth-User-Groups"].split(",")
    assert len(groups) > 150 and all(name.startswith(prefix) or name == "team-a" for name in groups)
    assert len(",".join(groups)) <= 8 * 1024

"""Readable tool addresses through the real stack: a personal tool opens at
<slug>--<address name>, and its older address, <slug>-<host key>, keeps working: a browser's
navigation goes on to the current address, an API token or a WebSocket is answered there as it is
(docs/decisions/0022-readable-addresses.md)."""
import requests
import websocket

from tests.integration.test_tokens import make_token

TOOL_COOKIE = "berth_session_tool"


def test_a_personal_tool_opens_at_its_readable_address(stack):
    jane = stack.create_user(email="Jane.Smith+work@example.org")
    assert jane["address_name"].startswith("jane-smith")
    browser = stack.login(jane)
    tool = stack.open_tool(browser, "echo", jane, "/deep/link?x=1")
    assert tool.status_code == 200 and tool.json()["path"] == "/deep/link?x=1"
    host = stack.tool_host("echo", jane)
    assert host == f"echo--{jane['address_name']}.berth.localhost"
    assert [row["state"] for row in stack.instances(host)] == ["RUNNING"]
    # The catalogue links to it there, the API gives it, and administrators see it.
    assert f"http://{host}:{stack.port}/" in browser.get(stack.base_url + "/", timeout=10).text
    with stack.login(stack.create_user(is_admin=True)) as admin:
        assert host in admin.get(f"{stack.base_url}/admin/instances", timeout=10).text
        page = admin.get(f"{stack.base_url}/admin/users/{jane['id']}", timeout=10).text
        assert f"&lt;tool&gt;--{jane['address_name']}" in page and f"&lt;tool&gt;-{jane['host_key']}" in page


def test_a_navigation_to_the_legacy_address_goes_on_to_the_same_path_at_the_current_one(stack, alice):
    browser = stack.login(alice)
    legacy = f"http://{stack.legacy_tool_host('echo', alice)}:{stack.port}/deep/link?x=1"
    moved = stack.navigate(browser, legacy)  # signs in on the old host first, through the hand-off
    assert moved.status_code == 302
    assert moved.headers["Location"] == stack.tool_url("echo", alice, "/deep/link?x=1")
    # The old address started nothing: the navigation to the current one does.
    assert not [row for row in stack.instances() if row["owner_id"] == alice["id"]]
    tool = stack.open_tool(browser, "echo", alice, "/deep/link?x=1")
    assert tool.status_code == 200
    # Running, the old address still sends a navigation on, and a browser following it lands on the tool.
    again = browser.get(legacy, headers={"Sec-Fetch-Mode": "navigate"}, timeout=10)
    assert again.status_code == 200 and again.url.startswith(stack.tool_url("echo", alice))
    assert again.json()["path"] == "/deep/link?x=1"
    assert len(stack.instances(stack.tool_host("echo", alice))) == 1
    assert stack.instances(stack.legacy_tool_host("echo", alice)) == []


def test_requests_that_are_no_navigation_are_served_at_the_legacy_address(stack, alice):
    legacy = stack.legacy_tool_host("echo", alice)
    with stack.login(alice) as browser:
        token = make_token(stack, browser)
        stack.open_tool(browser, "echo-api", alice)
        stack.open_tool(browser, "echo", alice)
        # A cookie for the old address, as a page still open there got it from the hand-off.
        browser.get(f"{stack.base_url}/auth/handoff", params={"host": legacy, "next": "/__berth/status"}, timeout=10)
        # That page's own fetch reaches the tool there.
        fetched = browser.get(f"http://{legacy}:{stack.port}/headers?from=page", timeout=10, allow_redirects=False,
                              headers={"Accept": "application/json", "Sec-Fetch-Mode": "cors"})
        assert fetched.status_code == 200 and fetched.json()["path"] == "/headers?from=page"
        tool_token = stack.tool_cookie(browser, legacy)

    # An API token: the tool answers at the old address, even to a client that asks for HTML,
    # and never sees the token.
    by_token = requests.get(f"http://{stack.legacy_tool_host('echo-api', alice)}:{stack.port}/headers", timeout=10,
                            headers={"Authorization": f"Bearer {token}", "Accept": "text/html"},
                            allow_redirects=False)
    assert by_token.status_code == 200, by_token.text
    assert token not in by_token.text
    # A WebSocket from the old address's own pages.
    socket = websocket.create_connection(f"ws://{legacy}:{stack.port}/ws", cookie=f"{TOOL_COOKIE}={tool_token}",
                                         header=[f"Origin: http://{legacy}:{stack.port}"], timeout=20)
    try:
        assert socket.getstatus() == 101
        socket.send("hello from the old address")
        assert socket.recv() == "hello from the old address"
    finally:
        socket.close()
    # Still the one instance, kept under the current address.
    assert len(stack.instances(stack.tool_host("echo", alice))) == 1
    assert stack.instances(legacy) == []

"""WebSockets through the real nginx to a running tool, and what a handshake without a valid
session gets: a plain 401, never a redirect a WebSocket client could not follow."""
import os

import pytest
import websocket

COOKIE = "berth_session_tool"  # a tool host's own cookie, from the sign-in hand-off


def _ws_url(stack, user, path="/ws"):
    return stack.tool_url("echo", user, path).replace("http://", "ws://", 1)


def _origin(stack, user):
    return "Origin: " + stack.tool_url("echo", user).rstrip("/")


def test_websocket_echo_through_nginx_carries_text_and_a_large_binary_message(stack, alice):
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
        token = next(c.value for c in browser.cookies if c.name == COOKIE)

    socket = websocket.create_connection(_ws_url(stack, alice), cookie=f"{COOKIE}={token}",
                                         header=[_origin(stack, alice)], timeout=20)
    try:
        assert socket.getstatus() == 101
        socket.send("hello, tool")
        assert socket.recv() == "hello, tool"
        socket.send("héllo ⚓ again")
        assert socket.recv() == "héllo ⚓ again"

        payload = os.urandom(1024 * 1024)
        socket.send_binary(payload)
        echoed = socket.recv()
        assert isinstance(echoed, bytes)
        assert len(echoed) == len(payload) and echoed == payload
    finally:
        socket.close()


@pytest.mark.parametrize("client", ["no-cookie", "bad-cookie", "browser-like", "accepts-html"])
def test_websocket_without_a_session_gets_401_and_never_a_redirect(stack, alice, client):
    cookie = f"{COOKIE}=not-a-session" if client == "bad-cookie" else None
    header = [_origin(stack, alice)]
    if client == "browser-like":
        # What a browser's WebSocket handshake carries: no text/html in Accept, no XHR marker.
        header += ["Accept: */*", "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                   "Sec-Fetch-Mode: websocket", "Sec-Fetch-Dest: websocket"]
    if client == "accepts-html":
        # A client that copies a page's headers: still a WebSocket, which cannot follow a redirect.
        header += ["Accept: text/html,application/xhtml+xml,*/*;q=0.8"]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(_ws_url(stack, alice), cookie=cookie, header=header, timeout=10)
    answer = refused.value
    assert answer.status_code == 401
    assert "location" not in {name.lower() for name in (answer.resp_headers or {})}
    assert b"Sign-in required." in (answer.resp_body or b"")

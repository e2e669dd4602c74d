"""One client cannot take the door down: slow clients by the hundred, oversized bodies, floods
from one address, and a client that rotates X-Forwarded-For to pass for many.

The deadlines here (8 s, the time after which the platform counted as down) are for failing
loudly, not measurements: bench/slow_clients.py measures the latency.
"""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import DOMAIN
from tests.integration.test_access import _FromAddress, behind_a_proxy  # noqa: F401 - a fixture
from tests.slow_clients import SlowClients, loopback_sources, send_from, slow_targets

DOWN = 8  # seconds: an answer slower than this is the platform down, as a user sees it
MIB = 1024 * 1024


def _answer_of(client, timeout=DOWN):
    """What nginx answered on this connection: its bytes, up to the end of the page or the connection."""
    client.settimeout(timeout)
    received = b""
    while b"</html>" not in received:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def test_hundreds_of_slow_clients_do_not_stall_signed_in_users(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    connections = 192
    attack = SlowClients(stack.port, slow_targets(DOMAIN, stack.tool_host("echo", alice)),
                         loopback_sources(48), connections).start()
    try:
        time.sleep(2)  # the slow requests are all under way: bodies and headers half sent
        assert len(attack.open) > connections * 0.9, attack.counts
        for _ in range(3):
            assert browser.get(stack.base_url + "/", timeout=DOWN).status_code == 200
            assert browser.get(stack.tool_url("echo", alice, "/headers"), timeout=DOWN).status_code == 200
        newcomer = stack.create_user()
        stack.login(newcomer).close()  # the sign-in page and form, through the same door
        assert len(attack.open) > connections * 0.9, attack.counts  # still on, none turned away
    finally:
        attack.stop()
    assert attack.counts["refused_429"] == 0  # a few connections per address: all were let in


@pytest.mark.parametrize("host, path", [(DOMAIN, "/auth/login"), (DOMAIN, "/"), ("tool", "/__berth/stop")])
def test_a_48_mib_post_to_berth_is_refused_with_413_before_its_body_is_read(stack, alice, host, path):
    host = stack.tool_host("echo", alice) if host == "tool" else host
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {48 * MIB}\r\n\r\n").encode()
    client = send_from("127.0.0.1", stack.port, head + b"email=" + b"x" * 1000)
    try:
        answer = _answer_of(client)  # only the headers and a kilobyte were sent: no waiting on 48 MiB
    finally:
        client.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"<h1>Too large</h1>" in answer and b"nginx" not in answer.split(b"\r\n\r\n", 1)[1]


def test_a_chunked_sign_in_body_is_cut_off_at_the_limit(stack):
    """Without a Content-Length, nginx counts the chunks as they come and stops at the limit."""
    head = (f"POST /auth/login HTTP/1.1\r\nHost: {DOMAIN}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = 128 * 1024
    client = send_from("127.0.0.1", stack.port, head + f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n")
    try:
        answer = _answer_of(client)
    finally:
        client.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]


def _flood(stack, source, path, count, headers=None):
    """count GETs of path from source, 16 at a time, as fast as they are answered: the answers."""
    def one(_):
        with requests.Session() as session:
            session.mount("http://", _FromAddress(source))
            return session.get(stack.base_url + path, headers=headers, timeout=DOWN)

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


def test_one_address_flooding_the_sign_in_page_is_refused_with_429_while_others_sign_in(stack):
    count = 3 * stack.config["BERTH_DOOR_BURST"]
    answers = _flood(stack, "127.78.0.1", "/auth/login", count)
    refused = [answer for answer in answers if answer.status_code == 429]
    assert refused and len(refused) < count, [answer.status_code for answer in answers]
    assert "Too many requests from your address" in refused[0].text
    assert refused[0].headers["Retry-After"] == "1"
    assert {answer.status_code for answer in answers} <= {200, 429}
    assert requests.get(stack.base_url + "/auth/login", timeout=DOWN).status_code == 200  # another address
    newcomer = stack.create_user()
    stack.login(newcomer).close()


def test_an_exempt_address_is_not_counted_and_exempts_no_one_else(stack):
    """The test driver's own address is exempt (BERTH_DOOR_EXEMPT, tests/local_stack.py): the
    same flood from it is never refused, while the one from any other address above is."""
    assert [str(network) for network in stack.config["BERTH_DOOR_EXEMPT"]] == ["127.0.0.1/32"]
    answers = _flood(stack, "127.0.0.1", "/auth/login", 3 * stack.config["BERTH_DOOR_BURST"])
    assert {answer.status_code for answer in answers} == {200}
    answers = _flood(stack, "127.78.0.2", "/auth/login", 3 * stack.config["BERTH_DOOR_BURST"])
    assert 429 in {answer.status_code for answer in answers}


def test_one_address_holding_slow_requests_gets_429_past_its_connection_limit(stack):
    limit = stack.config["BERTH_DOOR_CONNECTIONS"]
    target = slow_targets(DOMAIN)[0]  # a POST to the sign-in form, its body trickled
    held = [send_from("127.79.0.1", stack.port, target.head) for _ in range(limit)]
    try:
        time.sleep(0.5)  # nginx has read their headers: each is a request in progress
        one_more = send_from("127.79.0.1", stack.port, target.head)
        try:
            answer = _answer_of(one_more)
        finally:
            one_more.close()
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:300]
        assert requests.get(stack.base_url + "/auth/login", timeout=DOWN).status_code == 200  # another address
    finally:
        for client in held:
            client.close()


def test_rotating_x_forwarded_for_does_not_escape_the_per_address_limit(behind_a_proxy):
    """Behind a trusted proxy, clients are counted by the address the proxy appends; a client
    that reaches nginx directly and writes a new X-Forwarded-For on every request is still one."""
    stack = behind_a_proxy
    count = 3 * stack.config["BERTH_DOOR_BURST"]

    def one(number):
        with requests.Session() as session:
            session.mount("http://", _FromAddress("127.80.0.1"))
            return session.get(stack.base_url + "/healthz", timeout=DOWN,
                               headers={"X-Forwarded-For": f"198.51.100.{number % 250}"})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(count)))
    assert 429 in [answer.status_code for answer in answers]
    # Through the trusted proxy, the address it appends is the client: a fresh one is let in.
    with requests.Session() as session:
        session.mount("http://", _FromAddress("127.0.0.2"))
        assert session.get(stack.base_url + "/healthz", headers={"X-Forwarded-For": "203.0.113.9"},
                           timeout=DOWN).status_code == 200


def test_clients_that_stall_are_dropped_at_the_timeouts(stack):
    """A client trickling its headers is dropped when the whole header has not come within
    client_header_timeout (10 s), however steadily it sends; one that stops sending its body is
    dropped when none came for client_body_timeout (10 s). Neither is waited on for longer."""
    headers, body = (slow_targets(DOMAIN)[1], slow_targets(DOMAIN)[0])
    trickling = send_from("127.81.0.1", stack.port, headers.head)
    stalled = send_from("127.81.0.2", stack.port, body.head)
    started = time.monotonic()
    ended = {}
    try:
        for client in (trickling, stalled):
            client.setblocking(False)
        while len(ended) < 2 and time.monotonic() - started < 25:
            try:
                trickling.send(headers.trickle)  # a header line a second: steady, never done
            except OSError:
                ended.setdefault("headers", time.monotonic() - started)
            for name, client in (("headers", trickling), ("body", stalled)):
                try:
                    if client.recv(4096) == b"":
                        ended.setdefault(name, time.monotonic() - started)
                except BlockingIOError:
                    pass
                except OSError:
                    ended.setdefault(name, time.monotonic() - started)
            time.sleep(1)
    finally:
        trickling.close()
        stalled.close()
    assert set(ended) == {"headers", "body"}, ended
    assert all(seconds < 20 for seconds in ended.values()), ended  # nginx's own default is 60 s

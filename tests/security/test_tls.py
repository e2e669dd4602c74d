"""Berth over HTTPS, for real: nginx serves the test CA's wildcard certificate for the domain and
for tool hosts on a domain of their own, redirects plain HTTP, sends HSTS over HTTPS only, and
Berth's cookies are Secure and host-only (`__Host-`)."""
import socket
import ssl

import pytest
import requests

from tests.conftest import DOMAIN, TLS_TOOLS_DOMAIN

HSTS = "max-age=300; includeSubDomains"


@pytest.fixture
def user(https_stack):
    return https_stack.create_user()


def _plain(stack, host, path):
    """A request over plain HTTP to nginx's redirecting port, as a browser typing http:// sends it."""
    port = stack.env["BERTH_HTTP_REDIRECT_PORT"]
    return requests.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, allow_redirects=False,
                        timeout=10)


@pytest.mark.parametrize("where", ["main", "tool"])
def test_plain_http_is_redirected_to_the_same_address_over_https(https_stack, user, where):
    host = DOMAIN if where == "main" else https_stack.tool_host("echo", user)
    answer = _plain(https_stack, host, "/some/path?x=1&y=%2F")
    assert answer.status_code == 301
    assert answer.headers["Location"] == f"https://{host}:{https_stack.port}/some/path?x=1&y=%2F"
    assert "Strict-Transport-Security" not in answer.headers  # never over plain HTTP


def test_plain_http_for_a_foreign_host_is_not_redirected(https_stack):
    answer = _plain(https_stack, "evil.example", "/")
    assert answer.status_code == 404 and "Location" not in answer.headers


def test_signing_in_over_https_sets_secure_host_only_cookies(https_stack, user):
    browser = https_stack.login(user)
    https_stack.hand_off(browser, "echo", user)
    cookies = {cookie.name: cookie for cookie in browser.cookies}
    session, tool = cookies["__Host-berth_session"], cookies["__Host-berth_session_tool"]
    for cookie in (session, tool):
        assert cookie.secure and cookie.path == "/" and not cookie.domain_specified
        assert cookie.has_nonstandard_attr("HttpOnly")
    assert session.domain == DOMAIN and tool.domain == https_stack.tool_host("echo", user)
    assert not {"berth_session", "berth_session_tool"} & set(cookies)  # no unprefixed, insecure copy


def test_every_answer_over_https_carries_hsts_even_a_tools_own(https_stack, user):
    browser = https_stack.login(user)
    tool = https_stack.open_tool(browser, "echo", user, "/headers")
    assert tool.status_code == 200
    assert tool.json()["headers"].get("X-Forwarded-Proto") == "https"  # the tool knows it is served over TLS
    answers = [tool, browser.get(https_stack.base_url + "/", timeout=10),
               requests.get(https_stack.base_url + "/auth/login", verify=https_stack.verify, timeout=10),
               requests.post(https_stack.base_url + "/auth/login", data=b"x" * 200_000,
                             verify=https_stack.verify, timeout=10)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 413]
    assert all(answer.headers.get("Strict-Transport-Security") == HSTS for answer in answers)


def test_the_certificate_covers_tool_hosts_on_their_own_domain(https_stack, user):
    host = https_stack.tool_host("echo", user)
    assert host.endswith("." + TLS_TOOLS_DOMAIN)
    context = ssl.create_default_context(cafile=https_stack.verify)
    with socket.create_connection(("127.0.0.1", https_stack.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:  # checks the name against the certificate
            names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
    assert f"*.{TLS_TOOLS_DOMAIN}" in names and f"*.{DOMAIN}" in names


def test_a_name_berth_does_not_serve_gets_no_certificate(https_stack):
    """A client asking for another name (a scanner, a misdirected host) learns nothing: the TLS
    handshake itself is refused, and no certificate naming Berth's hosts is shown."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", https_stack.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="evil.example")


def test_plain_http_on_the_https_port_is_refused(https_stack):
    answer = requests.get(f"http://{DOMAIN}:{https_stack.port}/", timeout=10)
    assert answer.status_code == 400 and "Set-Cookie" not in answer.headers


def test_a_client_that_never_finishes_its_tls_handshake_is_dropped(https_stack):
    """The handshake is timed by client_header_timeout (10 s), which the listener's default
    server sets: a client that opens connections and says nothing holds none of them for long."""
    with socket.create_connection(("127.0.0.1", https_stack.port), timeout=25) as silent:
        silent.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
        assert silent.recv(4096) == b""  # nginx closed it (a timeout here would raise instead)

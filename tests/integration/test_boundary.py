"""Every rule at the tool boundary, through the real nginx: what a tool may see and set, what
another user may reach, and what cannot be reached at all without going through nginx."""
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import websocket

from tests.actions import csrf_token
from tests.local_stack import TOOL_COOKIE

SESSION = "berth_session"  # the platform session, on the main host only
COOKIE = TOOL_COOKIE  # what signs a browser in on a tool host: that host's own cookie


@pytest.fixture(scope="module")
def running_echo(berth_stack):
    """A user whose echo tool runs, their tool cookie there and their session token; shared by
    the read-only tests here."""
    user = berth_stack.create_user()
    with berth_stack.login(user) as browser:
        berth_stack.open_tool(browser, "echo", user)
        token = _token(browser)
        session = _token(browser, SESSION)
    return user, token, session


def _token(browser, name=COOKIE):
    return next(c.value for c in browser.cookies if c.name == name)


def _get(url, cookie=None, **headers):
    if cookie is not None:
        headers["Cookie"] = cookie
    headers.setdefault("Accept", "application/json")
    return requests.get(url, headers=headers, allow_redirects=False, timeout=10)


def _seen_by_tool(answer):
    """What the echo tool saw; fails unless the answer really came from the tool."""
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert set(seen) == {"headers", "cookies", "path", "peer"}
    return seen


def _set_cookie_headers(answer):
    return answer.raw.headers.getlist("Set-Cookie")


def _attributes(set_cookie):
    first, *rest = [part.strip() for part in set_cookie.split(";")]
    name, _, value = first.partition("=")
    return name, value, {k.lower(): v for k, _, v in (a.partition("=") for a in rest)}


class Recorder:
    """A plain web server that stands in as a tool and notes every request that reaches it."""

    def __init__(self):
        self.requests = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                recorder.requests.append((self.command, self.path, dict(self.headers)))
                body = b'{"recorded": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


# -- the platform session cookie never reaches a tool -----------------------------------------

def test_platform_cookie_is_stripped_wherever_it_sits_in_the_cookie_header(stack, running_echo):
    user, token, _ = running_echo
    url = stack.tool_url("echo", user, "/headers")
    cases = {
        "first": (f"{COOKIE}={token}; a=1; b=2", {"a": "1", "b": "2"}),
        "middle": (f"a=1; {COOKIE}={token}; b=2", {"a": "1", "b": "2"}),
        "last": (f"a=1; b=2; {COOKIE}={token}", {"a": "1", "b": "2"}),
        "only": (f"{COOKIE}={token}", {}),
        "no spaces": (f"a=1;{COOKIE}={token};b=2", {"a": "1", "b": "2"}),
        "quoted": (f'a=1; {COOKIE}="{token}"; b=2', {"a": "1", "b": "2"}),
        # The auth service reads "name =value" as the same cookie, so nginx must strip it too.
        "space before =": (f"a=1; {COOKIE} ={token}; b=2", {"a": "1", "b": "2"}),
        "tab before =": (f"a=1; {COOKIE}\t={token}", {"a": "1"}),
    }
    for case, (cookie, tool_cookies) in cases.items():
        seen = _seen_by_tool(_get(url, cookie))
        assert seen["cookies"] == tool_cookies, case
        assert token not in json.dumps(seen), case
    # With only the platform cookie, the tool gets no Cookie header at all.
    assert "Cookie" not in _seen_by_tool(_get(url, f"{COOKIE}={token}"))["headers"]
    # Nor does a platform session cookie that reaches a tool host (one scoped to the whole
    # domain, as earlier versions set it, or planted there) ever pass, whatever its name.
    for stray in (SESSION, "__Host-" + SESSION, "__Host-" + COOKIE):
        seen = _seen_by_tool(_get(url, f"a=1; {stray}=stray-value; {COOKIE}={token}; b=2"))
        assert seen["cookies"] == {"a": "1", "b": "2"}, stray


def test_platform_cookie_is_stripped_when_split_over_two_cookie_headers(stack, running_echo):
    user, token, _ = running_echo
    host = stack.tool_url("echo", user).split("//")[1].rstrip("/")
    for headers in (["a=1", f"{COOKIE}={token}"], [f"{COOKIE}={token}", "a=1"]):
        connection = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        try:
            connection.putrequest("GET", "/headers", skip_host=True)
            connection.putheader("Host", host)
            connection.putheader("Accept", "application/json")
            for value in headers:
                connection.putheader("Cookie", value)
            connection.endheaders()
            answer = connection.getresponse()
            body = answer.read().decode()
        finally:
            connection.close()
        # Whether or not the auth service accepts a split header, the tool never gets the token.
        assert token not in body, headers
        assert answer.status in (200, 401), body
        if answer.status == 200:
            assert json.loads(body)["cookies"] == {"a": "1"}


def test_lookalike_cookie_names_reach_the_tool_untouched(stack, running_echo):
    user, token, _ = running_echo
    cookie = f"xberth_session=keep; {COOKIE}={token}; {COOKIE}_x=also; {COOKIE.upper()}x=third"
    seen = _seen_by_tool(_get(stack.tool_url("echo", user, "/headers"), cookie))
    assert seen["cookies"] == {"xberth_session": "keep", f"{COOKIE}_x": "also", f"{COOKIE.upper()}x": "third"}
    assert token not in json.dumps(seen)


def test_a_tools_own_berth_session_cookie_never_lets_the_platform_one_through(stack, alice):
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
        token = _token(browser)
        planted = browser.get(stack.tool_url("echo", alice, "/set-cookie"),
                              params={"name": COOKIE, "value": "chosen-by-the-tool"},
                              headers={"Accept": "application/json"}, timeout=10)
        assert planted.status_code == 200
        [header] = _set_cookie_headers(planted)
        name, value, attributes = _attributes(header)
        assert (name, value) == (COOKIE, "chosen-by-the-tool") and "domain" not in attributes  # host-only
        # On its own host, a tool's cookie replaces Berth's for that host (nothing stops a
        # server's Set-Cookie there): that signs the browser out of this tool host only.
        assert [c.value for c in browser.cookies if c.name == COOKIE] == ["chosen-by-the-tool"]
        answer = browser.get(stack.tool_url("echo", alice, "/headers"),
                             headers={"Accept": "application/json"}, allow_redirects=False, timeout=10)
        assert answer.status_code == 401
        assert "chosen-by-the-tool" not in answer.text
        # The platform session is untouched: the catalogue still knows the user.
        assert browser.get(stack.base_url + "/", allow_redirects=False, timeout=10).status_code == 200

    url = stack.tool_url("echo", alice, "/headers")
    for both in (f"{COOKIE}={token}; a=1; {COOKIE}=chosen-by-the-tool",
                 f"{COOKIE}=chosen-by-the-tool; a=1; {COOKIE}={token}"):
        refused = _get(url, both)
        assert refused.status_code == 403, both
        assert token not in refused.text
    # More copies than nginx strips: refused outright rather than leaked.
    three = _get(url, f"{COOKIE}={token}; {COOKIE}=one; {SESSION}=two; {COOKIE}=three", Accept="text/html")
    assert three.status_code == 400
    assert "Too many Berth session cookies" in three.text
    assert token not in three.text


# -- headers a client forges never reach a tool ---------------------------------------------

RESERVED = [
    "X-Berth-User-Id",
    "X-Berth-User-Email",
    "X-Berth-User-Name",
    "X-Berth-User-Groups",
    "X-Berth-Upstream",
    "X-Berth-Page",
    "X-Berth-Reason",
    "X-Berth-Instance-Id",
    "X-Berth-Login-Url",
    "X-Berth-Anything-New",
    "x-berth-user-id",
]


def test_forged_berth_headers_are_refused_before_the_tool(stack, running_echo):
    user, token, _ = running_echo
    url = stack.tool_url("echo", user, "/headers")
    for number, name in enumerate(RESERVED):
        # The same request without the header first: nginx now holds its answer for this second
        # (the auth cache), and a forged header of a name Berth defines must still be refused.
        assert _get(url, f"{COOKIE}={token}", Accept="text/html").status_code == 200
        extra = {}
        if name == "X-Berth-Anything-New":
            # A name Berth does not define: nginx cannot match names by prefix, so within a
            # cached second it may pass to the tool, which no part of Berth reads it for
            # (docs/decisions/0021-one-second-auth-cache.md). The auth service refuses it
            # whenever it is asked: here, by a request whose cache key no answer has yet.
            extra = {"X-Forwarded-For": f"198.51.100.{number}"}
        answer = _get(url, f"{COOKIE}={token}", Accept="text/html", **extra, **{name: f"forged-{name}"})
        assert answer.status_code == 403, name
        assert "No access" in answer.text
        # The reason names the header (the auth service sees it with its canonical spelling).
        assert f"the request carries a reserved header ({name.lower()})." in answer.text.lower()
        assert "forged-" not in answer.text
        assert '"headers"' not in answer.text  # the answer is Berth's page, not the tool's


def test_forged_identity_headers_are_refused_on_the_main_host(stack, alice, bob):
    with stack.login(bob) as browser:
        answer = browser.get(stack.base_url + "/", headers={"X-Berth-User-Id": str(alice["id"])},
                             allow_redirects=False, timeout=10)
    assert answer.status_code == 403
    assert "The request carries a reserved header (X-Berth-User-Id)." in answer.text
    assert alice["email"].split("@")[0] not in answer.text


def test_the_proxy_secret_and_berth_headers_never_reach_the_tool(stack, running_echo):
    user, token, _ = running_echo
    url = stack.tool_url("echo", user, "/headers")
    secret = stack.app.config["BERTH_PROXY_SECRET"]
    plain = _seen_by_tool(_get(url, f"{COOKIE}={token}"))
    # Headers nginx lets through from a client, or ignores: none reaches the tool as sent.
    sneaky = _seen_by_tool(_get(url, f"{COOKIE}={token}", **{
        "X-Berth-Proxy-Secret": "client-guess",
        "X-Berth-No-Launch": "client-flag",
        "X_Berth_User_Id": "client-underscore",
    }))
    # ... including the real secret, sent back by a client who learned it.
    replayed = _seen_by_tool(_get(url, f"{COOKIE}={token}", **{"X-Berth-Proxy-Secret": secret}))
    for seen in (plain, sneaky, replayed):
        names = [name.lower() for name in seen["headers"]]
        assert not [name for name in names if "berth" in name], seen["headers"]
        assert secret not in json.dumps(seen)
        assert "client-" not in json.dumps(seen)


# -- another user's tool ---------------------------------------------------------------------

def test_another_users_tool_is_forbidden_and_never_reached(stack, alice, bob):
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
        alice_token = _token(browser)
    host = stack.tool_host("echo", alice)
    recorder = Recorder()
    try:
        # alice's tool is now the recorder: every request that reaches "the tool" is noted.
        stack.query("UPDATE tool_instances SET upstream = :address WHERE host = :host AND state = 'RUNNING'",
                    address=recorder.address, host=host)
        mine = _get(stack.tool_url("echo", alice, "/mine"), f"{COOKIE}={alice_token}")
        assert mine.json() == {"recorded": True}
        assert [(method, path) for method, path, _ in recorder.requests] == [("GET", "/mine")]

        with stack.login(bob) as intruder:
            # bob's browser gets a cookie for alice's tool host (it only says who he is)...
            page = stack.navigate(intruder, stack.tool_url("echo", alice, "/bob-was-here"))
            bob_cookie = f"{COOKIE}={_token(intruder)}"
            assert page.status_code == 403
            assert "belongs to another user, who has not shared it with you." in page.text
            posted = intruder.post(stack.tool_url("echo", alice, "/bob-posted"), data=b"x" * 5000,
                                   headers={"Accept": "application/json"}, allow_redirects=False, timeout=10)
            assert posted.status_code == 403
            assert "belongs to another user" in posted.json()["error"]
            status = intruder.get(stack.tool_url("echo", alice, "/__berth/status"),
                                  headers={"Accept": "application/json"}, allow_redirects=False, timeout=10)
            assert status.status_code == 403

        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(stack.tool_url("echo", alice, "/ws").replace("http://", "ws://"),
                                        cookie=bob_cookie, timeout=10,
                                        header=[f"Origin: {stack.tool_url('echo', alice)}".rstrip("/")])
        assert refused.value.status_code == 403
        assert b"belongs to another user" in (refused.value.resp_body or b"")

        assert [(method, path) for method, path, _ in recorder.requests] == [("GET", "/mine")]
    finally:
        recorder.close()


# -- a tool's cookies stay on its own host ---------------------------------------------------

def test_a_tools_cookies_for_the_parent_domain_are_narrowed_to_its_own_host(stack, alice):
    tool_host = stack.tool_host("echo", alice)
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
        token = _token(browser, SESSION)
        for domain in ("berth.localhost", ".berth.localhost", "BERTH.localhost",
                       "echo-00000000.berth.localhost"):
            answer = browser.get(stack.tool_url("echo", alice, "/set-cookie"),
                                 params={"name": "tool_pref", "value": "dark", "domain": domain},
                                 headers={"Accept": "application/json"}, timeout=10)
            assert answer.status_code == 200
            [header] = _set_cookie_headers(answer)
            name, value, attributes = _attributes(header)
            assert (name, value) == ("tool_pref", "dark")
            assert attributes["domain"] == tool_host, (domain, header)

        # Not even the platform's own cookie can be replaced by a tool.
        hijack = browser.get(stack.tool_url("echo", alice, "/set-cookie"),
                             params={"name": SESSION, "value": "from-the-tool", "domain": "berth.localhost"},
                             headers={"Accept": "application/json"}, timeout=10)
        [header] = _set_cookie_headers(hijack)
        assert _attributes(header)[2]["domain"] == tool_host
        home = browser.get(stack.base_url + "/", allow_redirects=False, timeout=10)
        assert home.status_code == 200
        assert alice["email"].split("@")[0] in home.text
        for_main_host = [(c.name, c.value) for c in browser.cookies if c.domain.lstrip(".") == "berth.localhost"]
        assert (SESSION, token) in for_main_host
        assert not [name for name, value in for_main_host if name == "tool_pref" or value == "from-the-tool"]


# -- only nginx may talk to Berth's services ----------------------------------------------------

def test_direct_requests_to_the_web_app_and_auth_service_are_refused(stack, running_echo):
    user, token, session = running_echo
    web = f"http://127.0.0.1:{stack.env['BERTH_WEB_PORT']}"
    auth = f"http://127.0.0.1:{stack.env['BERTH_AUTH_PORT']}"
    tool_host = stack.tool_url("echo", user).split("//")[1].rstrip("/")
    instance = stack.instances(tool_host.split(":")[0])[-1]

    # A real CSRF token, fetched through nginx, and the sign-in it is bound to, so that only
    # the missing proxy secret can be what refuses the direct POST below.
    with requests.Session() as browser:
        browser.cookies.set(SESSION, session, domain="berth.localhost", path="/")
        catalogue = browser.get(stack.base_url + "/", timeout=10)
        csrf = csrf_token(catalogue.text)
    [sign_in] = stack.query("SELECT id FROM sessions WHERE user_id = :id AND revoked_at IS NULL", id=user["id"])

    forged = {"X-Berth-User-Id": str(user["id"]), "X-Berth-Session-Id": str(sign_in["id"]), "Accept": "text/html"}
    attempts = [
        requests.get(web + "/", headers={**forged, "Host": "berth.localhost"}, timeout=10),
        requests.get(web + "/", headers={**forged, "X-Berth-Proxy-Secret": "guess"}, timeout=10),
        requests.get(web + "/__berth/status", headers={**forged, "Host": tool_host}, timeout=10),
        requests.get(web + "/headers", headers={**forged, "Host": tool_host, "X-Berth-Page": "start",
                                                 "Sec-Fetch-Mode": "navigate"}, timeout=10),
        requests.post(web + f"/instances/{instance['id']}/stop", data={"csrf_token": csrf}, timeout=10,
                      headers={**forged, "Host": "berth.localhost"}),
        requests.get(auth + "/auth/check", timeout=10, headers={
            "Cookie": f"{COOKIE}={token}", "X-Original-Host": tool_host, "X-Original-URI": "/"}),
        requests.get(auth + "/auth/login", timeout=10),
    ]
    for answer in attempts:
        assert answer.status_code == 403, (answer.url, answer.text)
        assert answer.text == "Berth answers only through its nginx.\n"
        assert not [name for name in answer.headers if name.lower().startswith("x-berth")]
    assert stack.instances(tool_host.split(":")[0])[-1]["state"] == "RUNNING"

    health = requests.get(web + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert requests.get(auth + "/auth/healthz", timeout=10).json() == {"status": "ok"}


def test_the_internal_auth_location_cannot_be_reached_from_outside(stack, running_echo):
    user, token, _ = running_echo
    cookie = f"{COOKIE}={token}"
    for base in (stack.base_url, stack.tool_url("echo", user).rstrip("/")):
        for path in ("/__berth_auth", "/__berth_auth?x=1", "//__berth_auth", "/%5F%5Fberth_auth"):
            for send_cookie in (cookie, None):
                answer = _get(base + path, send_cookie)
                assert answer.status_code == 404, (base, path, answer.text)
                assert not [name for name in answer.headers if name.lower().startswith("x-berth")]
        posted = requests.post(base + "/__berth_auth", headers={"Cookie": cookie}, timeout=10)
        assert posted.status_code == 404

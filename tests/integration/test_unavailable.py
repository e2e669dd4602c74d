"""Faults behind Berth: the database paused or stopped, a tool killed behind Berth's back.

Each gets a bounded wait and Berth's own page: 503 "temporarily unavailable" with Retry-After
within BERTH_DATABASE_STATEMENT_TIMEOUT (about 4 s) while PostgreSQL does not answer, and
everything works again once it does; the address of a tool that stopped answering shows Berth's
page with a restart button for whoever may start the tool, and a neutral page for anyone else.

The stack has a PostgreSQL server of its own, which these tests pause and stop.
"""
import time

import pytest
import requests

from berth.database import RETRY_AFTER_SECONDS
from tests.actions import csrf_token, form_token, post_form
from tests.conftest import _make_stack
from tests.integration.test_launch import _host, _wait_state
from tests.services import Postgres

WITHIN = 8  # seconds: the bound is about 4.3 s (statement timeout + margin); room for a busy machine
PAUSE = 10


@pytest.fixture(scope="module")
def own_postgres():
    server = Postgres()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faulty(own_postgres, dockerd, tmp_path_factory):
    stack = _make_stack("faults", own_postgres.create_database("berth_faults"), None,
                        tmp_path_factory.mktemp("stacks"), dockerd.url)
    stack.start()
    yield stack
    stack.stop()


def _timed_get(browser, url, **kwargs):
    started = time.monotonic()
    answer = browser.get(url, timeout=30, allow_redirects=False, **kwargs)
    return answer, time.monotonic() - started


def _wait_ok(browser, url, timeout=15):
    """The first 200 within timeout, and how long it took to come."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        answer = browser.get(url, timeout=30, allow_redirects=False)
        if answer.status_code == 200:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{url} still answers {answer.status_code}: {answer.text[:300]}")


def _assert_unavailable(answer, elapsed):
    assert answer.status_code == 503, answer.text[:500]
    assert answer.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert "Temporarily unavailable" in answer.text
    assert elapsed < WITHIN, elapsed


def test_paused_database_answers_503_within_seconds_then_recovers(faulty, own_postgres):
    alice = faulty.create_user()
    browser = faulty.login(alice)
    faulty.open_tool(browser, "echo", alice)
    tool = faulty.tool_url("echo", alice)
    html = {"Accept": "text/html"}

    own_postgres.pause()
    try:
        paused_at = time.monotonic()
        main, main_elapsed = _timed_get(browser, f"{faulty.base_url}/", headers=html)
        # The running tool: nginx's auth cache may answer for the rest of its second, no longer.
        asked = []
        faulty.until_auth_cache_ends(lambda: asked.append(_timed_get(browser, tool, headers=html))
                                     or asked[-1][0].status_code, 503)
        at_tool, tool_elapsed = asked[-1]
        print(f"paused database: main page {main_elapsed:.2f} s, tool host {tool_elapsed:.2f} s")
        _assert_unavailable(main, main_elapsed)
        _assert_unavailable(at_tool, tool_elapsed)
        time.sleep(max(0.0, PAUSE - (time.monotonic() - paused_at)))
    finally:
        own_postgres.resume()

    print(f"after SIGCONT: main page 200 within {_wait_ok(browser, f'{faulty.base_url}/'):.2f} s, "
          f"tool within {_wait_ok(browser, tool):.2f} s")
    assert browser.get(faulty.tool_url("echo", alice, "/headers"), timeout=10).status_code == 200


def test_stopped_database_answers_503_then_200_after_it_starts(faulty, own_postgres):
    alice = faulty.create_user()
    browser = faulty.login(alice)
    faulty.open_tool(browser, "echo", alice)
    tool = faulty.tool_url("echo", alice)

    own_postgres.stop_immediately()
    try:
        for url in (f"{faulty.base_url}/", tool):
            # The running tool: nginx's auth cache may answer for the rest of its second, no longer.
            asked = []
            faulty.until_auth_cache_ends(lambda: asked.append(_timed_get(browser, url, headers={"Accept": "text/html"}))
                                         or asked[-1][0].status_code, 503)
            answer, elapsed = asked[-1]
            print(f"stopped database: {url} {answer.status_code} in {elapsed:.2f} s")
            _assert_unavailable(answer, elapsed)
        api, _ = _timed_get(browser, f"{faulty.base_url}/api/instances", headers={"Accept": "application/json"})
        assert api.status_code == 503 and "error" in api.json()
    finally:
        own_postgres.start()

    print(f"after the restart: main page 200 within {_wait_ok(browser, f'{faulty.base_url}/'):.2f} s, "
          f"tool within {_wait_ok(browser, tool):.2f} s")


def test_sign_in_pages_answer_503_while_the_database_is_stopped(faulty, own_postgres):
    """The auth service's own pages (sign-in, the hand-off to a tool host) answer as the web
    app's do: Berth's page, 503 with Retry-After, not the framework's bare 500."""
    alice = faulty.create_user()
    browser = faulty.login(alice)
    stranger = requests.Session()
    login_token = form_token(stranger, f"{faulty.base_url}/auth/login")
    html = {"Accept": "text/html"}

    own_postgres.stop_immediately()
    try:
        asked = {
            "hand-off on the main host": lambda: browser.get(
                f"{faulty.base_url}/auth/handoff", params={"host": faulty.tool_host("echo", alice), "next": "/"},
                headers=html, allow_redirects=False, timeout=30),
            "hand-off on the tool host": lambda: browser.get(
                faulty.tool_url("echo", alice, "/__berth/handoff"), params={"code": "x" * 43, "next": "/"},
                headers=html, allow_redirects=False, timeout=30),
            "sign-in": lambda: stranger.post(
                f"{faulty.base_url}/auth/login", headers=html, allow_redirects=False, timeout=30,
                data={"csrf_token": login_token, "email": alice["email"], "password": alice["password"]}),
        }
        for what, ask in asked.items():
            started = time.monotonic()
            answer = ask()
            print(f"stopped database: {what} {answer.status_code}")
            _assert_unavailable(answer, time.monotonic() - started)
            assert "Content-Security-Policy" in answer.headers and "Traceback" not in answer.text
    finally:
        own_postgres.start()
    _wait_ok(browser, f"{faulty.base_url}/")


def test_a_tool_that_stops_answering_gets_berths_page_with_a_restart_for_its_owner_only(faulty):
    # Its process runs on and refuses connections: the reconciler ends it only after 10 s of
    # that (test_launch.py), so each request here meets a tool that is still RUNNING. (A killed
    # tool is noticed within BERTH_RECONCILE_SECONDS, and then shows the failed page.)
    alice, bob = faulty.create_user(), faulty.create_user()
    owner = faulty.login(alice)
    assert faulty.open_tool(owner, "deaf", alice, "/stop-listening").text == "listening"
    shared = post_form(owner, f"{faulty.base_url}/sharing/deaf", {"kind": "user", "name": bob["email"]},
                       allow_redirects=False)
    assert shared.status_code in (302, 303), shared.text[:300]
    host = _host(faulty, "deaf", alice)

    navigate = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
    page, elapsed = _timed_get(owner, faulty.tool_url("deaf", alice, "/some/page?x=1"), headers=navigate)
    print(f"tool not answering: Berth's page in {elapsed:.2f} s")
    assert page.status_code == 502, page.text[:300]
    assert "Deaf is not answering" in page.text and "Restart Deaf" in page.text
    assert 'action="/__berth/restart"' in page.text and csrf_token(page.text)
    assert "Content-Security-Policy" in page.headers  # Berth's page, not nginx's

    xhr, _ = _timed_get(owner, faulty.tool_url("deaf", alice, "/api/thing"), headers={"Accept": "application/json"})
    assert xhr.status_code == 502 and "not answering" in xhr.json()["error"]

    grantee = faulty.login(bob)
    faulty.hand_off(grantee, "deaf", alice)
    neutral, _ = _timed_get(grantee, faulty.tool_url("deaf", alice), headers=navigate)
    assert neutral.status_code == 502 and "Deaf is not answering" in neutral.text
    assert "Restart" not in neutral.text and csrf_token(neutral.text) is None

    restarted = owner.post(faulty.tool_url("deaf", alice, "/__berth/restart"),
                           data={"csrf_token": csrf_token(page.text)}, allow_redirects=False, timeout=10)
    assert restarted.status_code == 303 and restarted.headers["Location"] == "/#berth-restart"
    _wait_state(faulty, host, ("STOPPED",))
    faulty.until_stopped_tool_is_let_go(owner, host)
    assert faulty.open_tool(owner, "deaf", alice).text == "listening"
    assert faulty.instances(host)[-1]["state"] == "RUNNING"


def test_web_app_answers_503_when_its_database_is_unreachable(tmp_path):
    """A page whose query fails (the database gone between the auth check and the page)."""
    from webapp import create_app

    with socket_that_refuses() as port:
        app = create_app({"SQLALCHEMY_DATABASE_URI": f"postgresql+psycopg://postgres@127.0.0.1:{port}/none",
                          "BERTH_DATA_DIR": str(tmp_path), "TESTING": True})
        client = app.test_client()
        started = time.monotonic()
        answer = client.get("/", headers={"X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"],
                                          "X-Berth-User-Id": "1", "Accept": "text/html"},
                            base_url=f"http://{app.config['BERTH_DOMAIN']}")
    assert answer.status_code == 503, answer.text[:500]
    assert answer.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert "Temporarily unavailable" in answer.text and "Traceback" not in answer.text
    assert time.monotonic() - started < WITHIN


class socket_that_refuses:
    """A loopback port that nothing listens on, for the length of a with block."""

    def __enter__(self):
        import socket

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        return self.socket.getsockname()[1]

    def __exit__(self, *exc):
        self.socket.close()


"""nginx's cache of auth answers (BERTH_AUTH_CACHE_SECONDS): fast, but never wrong for long.

The cache is keyed on the session token, Authorization, host and client address, and holds
only answers for running tools. These tests run a Berth of their own with a 2-second cache.
"""
import time

import pytest
import requests

from tests.actions import post_form
from tests.conftest import _make_stack
from tests.integration.test_launch import _host, _launch_until
from tests.local_stack import TOOL_COOKIE

CACHE_SECONDS = 2


@pytest.fixture(scope="module")
def cached(postgres, redis_server, dockerd, tmp_path_factory):
    stack = _make_stack("cache", postgres.create_database(f"berth_cache_{time.monotonic_ns()}"),
                        redis_server.url(3), tmp_path_factory.mktemp("cache"), dockerd.url,
                        extra_env={"BERTH_AUTH_CACHE_SECONDS": str(CACHE_SECONDS)})
    stack.start()
    yield stack
    stack.stop()


def test_answers_for_a_running_tool_are_stored_in_the_cache(cached):
    alice = cached.create_user()
    browser = cached.login(alice)
    cached.open_tool(browser, "echo", alice, "/headers")
    assert browser.get(cached.tool_url("echo", alice, "/headers")).status_code == 200
    stored = [path for path in (cached.data_dir / "nginx" / "auth-cache").rglob("*") if path.is_file()]
    assert stored, "nginx stored no auth answer"


def test_a_cached_answer_is_never_served_to_another_user(cached):
    alice, bob = cached.create_user(), cached.create_user()
    as_alice, as_bob = cached.login(alice), cached.login(bob)
    cached.open_tool(as_alice, "echo", alice, "/headers")
    cached.open_tool(as_bob, "echo", bob, "/headers")
    cached.hand_off(as_bob, "echo", alice)
    for _ in range(5):
        assert as_alice.get(cached.tool_url("echo", alice, "/headers")).status_code == 200
        refused = as_bob.get(cached.tool_url("echo", alice, "/headers"), headers={"Accept": "application/json"})
        assert refused.status_code == 403
        anonymous = requests.get(cached.tool_url("echo", alice, "/headers"), headers={"Accept": "application/json"})
        assert anonymous.status_code == 401
        own = as_bob.get(cached.tool_url("echo", bob, "/headers")).json()
        assert own["headers"]["Host"].startswith(_host(cached, "echo", bob))


def test_after_logout_a_cached_answer_lasts_at_most_the_cache_lifetime(cached):
    alice = cached.create_user()
    browser = cached.login(alice)
    cached.open_tool(browser, "echo", alice, "/headers")
    url = cached.tool_url("echo", alice, "/headers")
    assert browser.get(url).status_code == 200  # now cached
    host = cached.tool_host("echo", alice)
    old_cookie = cached.tool_cookie(browser, host)
    post_form(browser, cached.base_url + "/auth/logout")
    signed_out_at = time.monotonic()
    replay = requests.Session()
    replay.cookies.set(TOOL_COOKIE, old_cookie, domain=host)
    deadline = signed_out_at + CACHE_SECONDS + 1.5
    while True:
        status = replay.get(url, headers={"Accept": "application/json"}).status_code
        if status == 401:
            break
        assert status == 200
        assert time.monotonic() < deadline, "a revoked session was served past the cache lifetime"
        time.sleep(0.1)


def test_lifecycle_answers_are_never_cached(cached):
    # The starting page must turn into the tool as soon as it runs, whatever the cache lifetime.
    alice = cached.create_user()
    browser = cached.login(alice)
    _launch_until(cached, browser, "echo", alice, ("RUNNING",), path="/x")
    assert browser.get(cached.tool_url("echo", alice, "/headers")).json()["path"] == "/headers"

"""The catalogue's live state (/catalogue/state) and the starting page without JavaScript
(/__berth/progress): they follow a launch, a failure, a death and a stop, and never launch
anything themselves."""
import os
import signal
import time

import pytest

from tests.actions import post_form
from tests.integration.test_access import _share
from tests.integration.test_launch import _backend_state, _host, _launch_until, _wait_gone, _wait_state

pytestmark = pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)


def _cards(stack, browser):
    answer = browser.get(f"{stack.base_url}/catalogue/state", headers={"Accept": "application/json"}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.json()


def _card(stack, browser, slug):
    return next(card for card in _cards(stack, browser)["cards"] if card["key"] == f"tool:{slug}")


def _wait_card(stack, browser, slug, states, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        card = _card(stack, browser, slug)
        if card["state"] in states:
            return card
        time.sleep(0.1)
    raise AssertionError(f"{slug} never reached {states}: {card}")


def test_the_state_follows_a_launch_to_running_then_a_stop_to_stopped(stack, alice):
    browser = stack.login(alice)
    before = _card(stack, browser, "echo")
    assert before["state"] is None and before["label"] == ""
    assert ">Launch</button>" in before["html"] and "Stop Echo" not in before["html"]

    stack.open_tool(browser, "echo", alice)
    running = _card(stack, browser, "echo")
    assert running["label"] == "Running"
    assert ">Open</a>" in running["html"] and 'aria-label="Stop Echo"' in running["html"]
    assert running["signature"] != before["signature"]
    assert _cards(stack, browser)["poll_seconds"] == 10  # nothing on its way: a slow poll

    instance = stack.instances(_host(stack, "echo", alice))[-1]
    post_form(browser, f"{stack.base_url}/instances/{instance['id']}/stop", page=f"{stack.base_url}/")
    stopped = _wait_card(stack, browser, "echo", ("STOPPED",))
    assert stopped["label"] == "Stopped"
    assert ">Launch</button>" in stopped["html"] and "Stop Echo" not in stopped["html"]
    assert 'aria-label="Share Echo"' in stopped["html"]


def test_a_failed_launch_shows_its_reason_and_a_retry_that_launches_again(stack, alice):
    browser = stack.login(alice)
    _launch_until(stack, browser, "broken", alice, ("FAILED",))
    card = _card(stack, browser, "broken")
    assert card["label"] == "Failed"
    assert "exited with code 3" in card["error"]
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; config missing" in card["html"]
    assert "<script>alert" not in card["html"]
    assert ">Try again</button>" in card["html"]

    retry = post_form(browser, f"{stack.base_url}/launch/broken", page=f"{stack.base_url}/", allow_redirects=False)
    assert retry.status_code == 302
    assert retry.headers["Location"] == stack.tool_url("broken", alice)
    assert len(stack.instances(_host(stack, "broken", alice))) == 2


def test_a_tool_that_died_is_shown_stopped_unexpectedly_with_its_reason(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    row = stack.instances(_host(stack, "echo", alice))[-1]
    pid = _backend_state(row)["pid"]
    os.killpg(pid, signal.SIGKILL)
    _wait_gone(pid)
    with stack.app.app_context():
        from berth.launch.upkeep import reconcile

        reconcile(enqueue_launch=lambda _id: None, enqueue_stop=lambda _id: None)
    card = _wait_card(stack, browser, "echo", ("FAILED",))
    assert card["label"] == "Stopped unexpectedly"
    assert "It stopped by itself:" in card["html"] and card["error"]
    assert ">Try again</button>" in card["html"] and ">Open</a>" not in card["html"]


def test_without_javascript_the_starting_page_reloads_a_page_that_never_launches(stack, alice):
    browser = stack.login(alice)
    first = stack.navigate(browser, stack.tool_url("echo", alice, "/deep?x=1"))
    assert first.status_code == 202
    assert ('<noscript><meta http-equiv="refresh" content="2;url=/__berth/progress?next=/deep%3Fx%3D1">'
            in first.text)
    host = _host(stack, "echo", alice)
    _wait_state(stack, host, ("RUNNING",))

    progress = browser.get(stack.tool_url("echo", alice, "/__berth/progress"), params={"next": "/deep?x=1"},
                           allow_redirects=False, timeout=10)
    assert progress.status_code == 303
    assert progress.headers["Location"] == "/deep?x=1"
    elsewhere = browser.get(stack.tool_url("echo", alice, "/__berth/progress"), params={"next": "//evil.example/"},
                            allow_redirects=False, timeout=10)
    assert elsewhere.headers["Location"] == "/"

    stack.stop_instance(stack.instances(host)[-1]["id"])
    stopped = browser.get(stack.tool_url("echo", alice, "/__berth/progress"), params={"next": "/deep?x=1"},
                          headers={"Sec-Fetch-Mode": "navigate"}, allow_redirects=False, timeout=10)
    assert stopped.status_code == 202
    assert "Echo is stopped" in stopped.text and 'http-equiv="refresh"' not in stopped.text
    assert '<a href="/deep?x=1">Start it again</a>' in stopped.text
    assert [row["state"] for row in stack.instances(host)] == ["STOPPED"]


def test_the_sharing_page_is_reachable_whatever_the_tools_state_and_shares_before_a_run(stack):
    owner, colleague = stack.create_user(), stack.create_user()
    browser = stack.login(owner)
    assert 'aria-label="Share Echo"' in browser.get(f"{stack.base_url}/", timeout=10).text
    page = browser.get(f"{stack.base_url}/sharing/echo", timeout=10)
    assert page.status_code == 200 and "It is not running: only you can start it" in page.text
    assert _share(stack, browser, "echo", "user", colleague["email"]).status_code == 302
    assert colleague["email"] in browser.get(f"{stack.base_url}/sharing/echo", timeout=10).text


def test_without_javascript_the_catalogue_reloads_itself_only_while_something_starts_or_stops(stack, alice):
    browser = stack.login(alice)
    refresh = '<noscript><meta http-equiv="refresh" content="2"></noscript>'
    assert refresh not in browser.get(f"{stack.base_url}/", timeout=10).text
    _launch_until(stack, browser, "slow", alice, ("SPAWNING",))  # it takes 20 s to answer
    page = browser.get(f"{stack.base_url}/", timeout=10).text
    assert refresh in page and 'data-poll-seconds="1"' in page
    stack.stop_instance(stack.instances(_host(stack, "slow", alice))[-1]["id"])
    assert refresh not in browser.get(f"{stack.base_url}/", timeout=10).text

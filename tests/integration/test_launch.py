"""The launch path through real nginx: start page, spawning page, the tool, stop, failures."""
from markupsafe import escape
import json
import os
import signal
import threading
import time

import requests

from tests.actions import csrf_token
from tests.services import stat_fields


def _wait_state(stack, host, states, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = stack.instances(host)
        if rows and rows[-1]["state"] in states:
            return rows[-1]
        time.sleep(0.05)
    raise AssertionError(f"{host} never reached {states}: {stack.instances(host)}")


def _backend_state(row):
    state = row["backend_state"]
    return state if isinstance(state, dict) else json.loads(state)  # SQLite hands back text


def _wait_gone(pid, timeout=8):
    """Wait until pid has exited (gone, or a zombie waiting to be reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stat_fields(pid)[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")


def _host(stack, slug, user):
    return stack.tool_host(slug, user)


def _launch_until(stack, browser, slug, user, states, timeout=20, path="/"):
    """Navigate to a stopped tool as a browser does, which launches it, and wait until its
    instance reaches one of states; return that instance."""
    browser.get(stack.tool_url(slug, user, path), headers={"Sec-Fetch-Mode": "navigate"})
    return _wait_state(stack, _host(stack, slug, user), states, timeout)


def test_first_visit_shows_spawning_page_then_the_tool_at_the_same_address(stack, alice):
    browser = stack.login(alice)
    page = browser.get(stack.tool_url("echo", alice, "/deep/link?x=1"), headers={"Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 202
    assert "Starting Echo" in page.text
    tool = stack.open_tool(browser, "echo", alice, "/deep/link?x=1")
    assert tool.status_code == 200
    assert tool.json()["path"] == "/deep/link?x=1"
    assert [row["state"] for row in stack.instances(_host(stack, "echo", alice))] == ["RUNNING"]


def test_status_polling_never_launches_a_stopped_tool(stack, alice):
    browser = stack.login(alice)
    stack.hand_off(browser, "echo", alice)
    status = browser.get(stack.tool_url("echo", alice, "/__berth/status"),
                         headers={"X-Berth-No-Launch": "1", "Accept": "application/json"})
    assert status.json()["state"] is None
    background = browser.get(stack.tool_url("echo", alice, "/api/poll"),
                             headers={"Accept": "application/json", "Sec-Fetch-Mode": "cors"})
    assert background.status_code == 503
    assert stack.instances(_host(stack, "echo", alice)) == []


def test_stop_from_the_catalogue_ends_the_tool(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    host = _host(stack, "echo", alice)
    instance = stack.instances(host)[-1]
    catalogue = browser.get(stack.base_url + "/")
    assert f"/instances/{instance['id']}/stop" in catalogue.text
    stopped = browser.post(f"{stack.base_url}/instances/{instance['id']}/stop",
                           data={"csrf_token": csrf_token(catalogue.text)})
    assert stopped.status_code == 200
    assert _wait_state(stack, host, ("STOPPED",))["state"] == "STOPPED"
    stack.until_stopped_tool_is_let_go(browser, host)


def test_stop_without_csrf_token_is_refused(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    instance = stack.instances(_host(stack, "echo", alice))[-1]
    answer = browser.post(f"{stack.base_url}/instances/{instance['id']}/stop")
    assert answer.status_code == 400
    assert stack.instances(_host(stack, "echo", alice))[-1]["state"] == "RUNNING"


def test_failed_tool_shows_its_stderr_escaped_and_a_reload_retries(stack, alice):
    browser = stack.login(alice)
    failed = _launch_until(stack, browser, "broken", alice, ("FAILED",))
    assert "exited with code 3" in failed["error"]
    page = browser.get(stack.tool_url("broken", alice), headers={"Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 502
    assert "Broken did not start" in page.text
    assert str(escape("<script>alert('x')</script> config missing")) in page.text
    assert "<script>alert" not in page.text
    retry = browser.get(stack.tool_url("broken", alice), headers={"Sec-Fetch-Mode": "navigate"})
    assert retry.status_code == 202
    assert len(stack.instances(_host(stack, "broken", alice))) == 2


def test_spawn_timeout_fails_the_launch_and_kills_the_process(stack, alice):
    failed = _launch_until(stack, stack.login(alice), "silent", alice, ("FAILED",), timeout=15)
    assert "spawn timeout of 2 s" in failed["error"]
    _wait_gone(_backend_state(failed)["pid"])


def test_a_command_that_does_not_exist_fails_with_a_reason(stack, alice):
    failed = _launch_until(stack, stack.login(alice), "missing", alice, ("FAILED",))
    assert "/nonexistent/berth-tool" in failed["error"]


def test_racing_launches_create_one_instance(stack, alice):
    browser = stack.login(alice)
    url = stack.tool_url("echo", alice, "/race")
    results = []

    def visit():
        session = requests.Session()
        session.cookies.update(browser.cookies)
        results.append(session.get(url, headers={"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}).status_code)

    threads = [threading.Thread(target=visit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(code in (200, 202) for code in results), results
    _wait_state(stack, _host(stack, "echo", alice), ("RUNNING",))
    assert len(stack.instances(_host(stack, "echo", alice))) == 1


def test_unknown_tool_host_gets_a_404_page(stack, alice):
    browser = stack.login(alice)
    for host in (f"nosuchtool--{alice['address_name']}", f"nosuchtool-{alice['host_key']}"):
        page = browser.get(f"http://{host}.berth.localhost:{stack.port}/")
        assert page.status_code == 404
        assert "No such tool" in page.text
    odd = browser.get(f"http://not-a-tool-host.berth.localhost:{stack.port}/")
    assert odd.status_code == 404


def test_reconciler_marks_a_dead_tool_failed(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    host = _host(stack, "echo", alice)
    row = stack.instances(host)[-1]
    state = _backend_state(row)
    os.killpg(state["pid"], signal.SIGKILL)
    _wait_gone(state["pid"])
    with stack.app.app_context():
        from berth.launch.upkeep import reconcile

        actions = reconcile(enqueue_launch=lambda _id: None, enqueue_stop=lambda _id: None)
    after = stack.instances(host)[-1]
    assert after["state"] == "FAILED"
    assert ("failed", row["id"]) in actions or after["error"]  # or the worker's own periodic run did it
    assert "no longer running" in stack.query(
        "SELECT message FROM events WHERE instance_id = :id AND kind = 'reconcile.gone'", id=row["id"]
    )[0]["message"]


def test_a_tool_that_stops_listening_while_its_process_runs_is_noticed_and_ended(stack, alice):
    browser = stack.login(alice)
    assert stack.open_tool(browser, "deaf", alice, "/stop-listening").text == "listening"
    host = _host(stack, "deaf", alice)
    row = stack.instances(host)[-1]
    # The worker's own reconciler (every 5 s) ends it once connections were refused for 10 s.
    _wait_state(stack, host, ("FAILED",), timeout=10 + 5 + 15)
    after = stack.instances(host)[-1]
    assert "refused connections for 10 s" in after["error"]
    _wait_gone(_backend_state(row)["pid"])


def test_tool_sees_the_host_the_browser_sent_with_its_port(stack, alice):
    # Tools such as Jupyter compare Origin with Host; both must carry the public port.
    browser = stack.login(alice)
    seen = stack.open_tool(browser, "echo", alice, "/headers").json()["headers"]
    assert seen["Host"] == f"{_host(stack, 'echo', alice)}:{stack.port}"

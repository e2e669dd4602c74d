"""A tool that stops while nginx still holds a cached auth answer for it (the one-second auth
cache, docs/decisions/0021-one-second-auth-cache.md): nginx sends requests to its address for
the rest of that second, and each must end on this host, in Berth's own pages (the tool not
answering, then starting again), never in whatever answers that address elsewhere."""
import errno
import os
import socket
import threading
import time

import pytest

from berth.backends.sandbox import Sandbox
from berth.settings import load_settings
from tests.actions import stop_instance
from tests.integration.test_launch import _backend_state, _host, _wait_state

NAVIGATION = {"Sec-Fetch-Mode": "navigate", "Accept": "text/html"}


def _berths_own(answer):
    """Whether an answer to a navigation is the tool's own (echo's) or one of Berth's pages."""
    if answer.status_code == 200:
        return "<title>Echo</title>" in answer.text  # the tool itself, before the stop
    if answer.status_code == 503:  # stopping, or stopped within the cached second: back in a moment
        return answer.headers.get("Refresh") == "1" and "This page opens it again in a moment." in answer.text
    return answer.status_code in (202, 502) and "/__berth/static/" in answer.text


@pytest.mark.parametrize("slug", ["echo", "echo-docker"])
def test_a_tool_stopped_within_a_cached_second_answers_with_berths_pages(stack, alice, slug):
    assert stack.config["BERTH_AUTH_CACHE_SECONDS"] == 1  # the default
    browser = stack.login(alice)
    host = _host(stack, slug, alice)
    url = stack.tool_url(slug, alice)
    stack.open_tool(browser, slug, alice, timeout=60)
    row = stack.instances(host)[-1]

    stop_instance(browser, stack.base_url, row["id"])
    answers = []
    stopped_at = None
    while stopped_at is None or time.monotonic() < stopped_at + 1.5:
        answer = browser.get(url, headers=NAVIGATION, allow_redirects=False, timeout=10)
        answers.append((answer.status_code, answer.headers.get("Server"), answer.text[:80]))
        assert _berths_own(answer), answers[-5:]
        if stopped_at is None and stack.instances(host)[-1]["state"] == "STOPPED":
            stopped_at = time.monotonic()
        if answer.status_code == 202:
            break  # starting again: the stop is over, and so is the cached answer
    # The last answer is the starting page of a new launch, or Berth's own page about the old one.
    assert answers[-1][0] in (202, 502, 503), answers[-5:]


def test_a_script_asking_a_tool_stopped_within_a_cached_second_is_told_it_is_not_running(stack, alice):
    """A tool's own scripts (fetch, XHR) meet the stop too: within the cached second they are
    told what they are told after it, 503 (with Retry-After while it is stopping), never that the
    tool broke (502)."""
    browser = stack.login(alice)
    host = _host(stack, "echo", alice)
    url = stack.tool_url("echo", alice, "/headers")
    stack.open_tool(browser, "echo", alice)
    row = stack.instances(host)[-1]

    stop_instance(browser, stack.base_url, row["id"])
    answers = []
    stopped_at = None
    while stopped_at is None or time.monotonic() < stopped_at + 1.5:
        answer = browser.get(url, headers={"Accept": "application/json"}, allow_redirects=False, timeout=10)
        answers.append((answer.status_code, answer.text[:100]))
        assert answer.status_code in (200, 503), answers[-5:]
        if answer.status_code == 503:
            error = answer.json()["error"]
            assert error in ("Echo is stopping.", "Echo is not running. Open it in a browser to start it."), answers[-5:]
            assert answer.headers.get("Retry-After") in ("1", None)  # 1 within the cached second
        if stopped_at is None and stack.instances(host)[-1]["state"] == "STOPPED":
            stopped_at = time.monotonic()
    assert answers[-1][0] == 503


def test_a_stopped_process_tools_address_is_refused_on_this_host(stack, alice):
    browser = stack.login(alice)
    host = _host(stack, "echo", alice)
    stack.open_tool(browser, "echo", alice)
    row = stack.instances(host)[-1]
    address = _backend_state(row)["address"]
    stop_instance(browser, stack.base_url, row["id"])
    _wait_state(stack, host, ("STOPPED",))

    began = time.monotonic()
    with pytest.raises(OSError) as refused:
        socket.create_connection((address, row["port"]), timeout=5).close()
    assert refused.value.errno in (errno.EHOSTUNREACH, errno.ECONNREFUSED)
    assert time.monotonic() - began < 1  # at once, not after a timeout elsewhere


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_no_connection_to_a_tool_whose_network_is_being_removed_waits(tmp_path):
    """nginx keeps connecting to a stopping tool's address for the rest of the cached second. A
    SYN sent as the tool's link was being deleted used to vanish with it, and that connection
    then waited, unanswered, for nginx's whole connect timeout (60 s by default): about one
    such connection per stop here, with three clients connecting without pause. Each attempt
    must be refused at once, by the tool's namespace or by this host's routes."""
    network = "10.214.0.0/24"  # none of the test stacks' tools
    config = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_DEPLOYMENT": f"stop{os.getpid()}",
                            "BERTH_TOOL_NETWORK": network})
    sandbox = Sandbox(config)
    waited = []
    try:
        for instance_id, port in enumerate(range(20000, 20005), start=1):
            address = sandbox.create_network(instance_id, port)["address"]
            stopping = threading.Event()

            def connect_without_pause():
                while not stopping.is_set():
                    began = time.monotonic()
                    try:
                        socket.create_connection((address, port), timeout=2).close()
                    except socket.timeout:
                        waited.append((address, time.monotonic() - began))
                    except OSError as refused:
                        assert refused.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH), refused

            clients = [threading.Thread(target=connect_without_pause) for _ in range(3)]
            for client in clients:
                client.start()
            time.sleep(0.05)
            sandbox.remove_network(sandbox.namespace(instance_id))
            time.sleep(0.1)
            stopping.set()
            for client in clients:
                client.join()
    finally:
        for instance_id in range(1, 6):
            sandbox.remove_network(sandbox.namespace(instance_id))
        Sandbox.stop_refusing(network)
    assert waited == []

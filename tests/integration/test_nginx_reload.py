"""nginx reloads without losing a request: kept-alive clients keep sending to the main host and to
a running tool, and a WebSocket stays open, through `nginx -s reload` and through what an operator
does after changing a setting (render the configuration again, which `nginx -t` checks, then
SIGHUP to nginx's master).
"""
import os
import signal
import subprocess
import threading
import time

import pytest
import requests
import websocket
from urllib3.util.retry import Retry

from deploy.local import nginx_binary
from tests.conftest import _make_stack

COOKIE = "berth_session_tool"
CLIENTS = 6
RELOADS = 4


@pytest.fixture(scope="module")
def reload_stack(tmp_path_factory):
    stack = _make_stack("reload", None, None, tmp_path_factory.mktemp("reload"), docker_url="",
                        extra_env={"BERTH_BACKENDS": "process"})
    stack.start()
    yield stack
    stack.stop()


class Load:
    """CLIENTS threads, each a kept-alive session sending GETs in turn to the main host and the
    tool, until stopped; every answer that is not a 200 (or no answer) is kept."""

    def __init__(self, stack, browser, user):
        self.urls = [f"{stack.base_url}/", stack.tool_url("echo", user, "/headers")]
        self.cookies = browser.cookies
        self.stopping = threading.Event()
        self.sent, self.failures = 0, []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def _client(self):
        with requests.Session() as session:
            # A reload closes idle kept-alive connections; a GET sent on one just as it closes is
            # sent again on a new connection, as browsers do (an idempotent request, never seen
            # by a server). Any other failure still counts.
            session.mount("http://", requests.adapters.HTTPAdapter(max_retries=Retry(
                total=1, connect=1, read=1, redirect=0, status=0, allowed_methods=frozenset({"GET"}),
                raise_on_status=False)))
            session.cookies.update(self.cookies)
            index = 0
            while not self.stopping.is_set():
                url = self.urls[index % 2]
                index += 1
                try:
                    status = session.get(url, timeout=20).status_code
                    failure = None if status == 200 else f"{url}: {status}"
                except requests.RequestException as error:
                    failure = f"{url}: {error!r}"
                with self.lock:
                    self.sent += 1
                    if failure:
                        self.failures.append(failure)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def test_reloads_under_load_lose_no_request_and_keep_websockets_open(reload_stack):
    stack = reload_stack
    user = stack.create_user()
    browser = stack.login(user)
    stack.open_tool(browser, "echo", user)
    token = stack.tool_cookie(browser, stack.tool_host("echo", user))
    socket = websocket.create_connection(
        stack.tool_url("echo", user, "/ws").replace("http://", "ws://", 1), cookie=f"{COOKIE}={token}",
        header=["Origin: " + stack.tool_url("echo", user).rstrip("/")], timeout=20)
    prefix = stack.data_dir / "nginx"
    master = stack.processes.processes["nginx"].pid
    try:
        with Load(stack, browser, user) as load:
            time.sleep(1)
            for reload in range(RELOADS):
                if reload % 2:
                    # As an operator does after changing a setting: render again, then SIGHUP.
                    stack.processes.render_nginx(stack.config)
                    os.kill(master, signal.SIGHUP)
                else:
                    subprocess.run([nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                    "-e", str(prefix / "logs" / "error.log"), "-s", "reload"],
                                   check=True, capture_output=True, timeout=30)
                socket.send(f"through reload {reload}")
                assert socket.recv() == f"through reload {reload}"
                time.sleep(1.5)
        print(f"{load.sent} requests through {RELOADS} reloads, {len(load.failures)} failed")
        assert load.sent > 50, load.sent
        assert not load.failures, f"{len(load.failures)} of {load.sent} failed: {load.failures[:5]}"
        # The socket opened before the first reload still carries messages after the last.
        socket.send("after every reload")
        assert socket.recv() == "after every reload"
        assert stack.processes.exited() == {}
    finally:
        socket.close()
        browser.close()

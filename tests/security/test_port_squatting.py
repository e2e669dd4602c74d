"""A stray process on the host binds the port Berth gave a tool, before the tool does. Nobody
is ever routed to it.

With the process backend's default isolation (namespaces), the tool listens in a network
namespace of its own, and both the health probe and nginx go to the namespace's address
(backend_state["address"]): a host process on the same port number cannot stand in for it.
The slow tool answers 20 s after its start, so the stray server has that long to be taken for it.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.integration.test_launch import _backend_state, _wait_state

NAVIGATE = {"Sec-Fetch-Mode": "navigate"}


class Stray(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"stray"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)
def test_a_process_squatting_a_tools_port_never_gets_its_users(stack, alice):
    browser = stack.login(alice)
    host = stack.tool_host("slow", alice)
    assert browser.get(stack.tool_url("slow", alice), headers=NAVIGATE, timeout=10).status_code == 202
    row = _wait_state(stack, host, ("SPAWNING",))
    deadline = time.monotonic() + 20
    while not (row["port"] and row["step"] == "wait_healthy") and time.monotonic() < deadline:
        time.sleep(0.05)
        row = stack.instances(host)[-1]
    assert row["step"] == "wait_healthy" and _backend_state(row).get("address"), row
    squatter = ThreadingHTTPServer(("0.0.0.0", row["port"]), Stray)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    try:
        pages = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            page = browser.get(stack.tool_url("slow", alice, "/which"), timeout=10)
            pages.append((page.status_code, page.text))
            if page.status_code == 200:
                break
            time.sleep(0.2)
        assert not [text for _, text in pages if "stray" in text]
        assert pages[-1][0] == 200 and json.loads(pages[-1][1])["path"] == "/which", pages[-1]
        print(f"\n{len(pages)} requests while the stray server held port {row['port']}; none reached it")
    finally:
        squatter.shutdown()
        squatter.server_close()
        for instance in stack.instances(host):
            stack.stop_instance(instance["id"])
        browser.close()

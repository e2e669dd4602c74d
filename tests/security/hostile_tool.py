"""A hostile tool: it serves HTTP like any tool, and on request tries every way out of its box.

    python hostile_tool.py --host IP --port PORT

POST /attack with a JSON body {"read": [paths], "list": [dirs], "connect": ["host:port"],
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


def _attempt(action):
    try:
        action()
        return "ok"
    except Exception as error:  # noqa: BLE001 - the error is the answer
        return f"{type(error).__name__}: {error}"


def _read(path):
    with open(path, "rb") as handle:
        handle.read(16)


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


def attack(plan):
    report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
              "capabilities": _capabilities()}
    report["read"] = {path: _attempt(lambda path=path: _read(path)) for path in plan.get("read", [])}
    report["list"] = {path: _attempt(lambda path=path: os.listdir(path)) for path in plan.get("list", [])}
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
        self._answer({"hostile": True})

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

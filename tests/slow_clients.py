"""A slow-client attack on Berth's door, for the security tests and bench/slow_clients.py.

    attack = SlowClients(port, targets, sources=loopback_sources(32), connections=128)
    attack.start()          # opens every connection, then trickles a byte on each, every second
    ...                     # what signed-in users do meanwhile
    attack.stop()           # closes them all; attack.counts says what nginx made of them

Each connection sends the start of a request and then trickles the rest, one byte at a time,
as a client on a bad line (or an attacker) does: the body of a POST, or the header lines. When
nginx ends one (a timeout, a refusal), it is opened again, so that the pressure lasts. The
connections come from many loopback addresses (127.0.0.0/8 is all loopback on Linux), as from
many machines, so that the per-address limits alone do not turn the attack away.
"""
import select
import socket
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One kind of slow request: the start that is sent at once, then what is trickled."""
    name: str
    head: bytes
    trickle: bytes


def slow_targets(domain, tool_host=None):
    """The endpoints that need no sign-in, each as a trickled body and as trickled headers."""
    def post(host, path):
        return Target(f"POST {path} (body)", (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                      "Content-Type: application/x-www-form-urlencoded\r\n"
                      "Content-Length: 60000\r\n\r\nemail=").encode(), b"a")

    def headers(host, path):
        return Target(f"GET {path} (headers)", f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode(), b"X-a: b\r\n")

    targets = [post(domain, "/auth/login"), headers(domain, "/auth/login"), post(domain, "/auth/logout"),
               headers(domain, "/auth/oidc/callback"), headers(domain, "/healthz")]
    if tool_host:
        targets += [post(tool_host, "/__berth/handoff"), headers(tool_host, "/__berth/handoff")]
    return targets


def loopback_sources(count, block=77):
    """count loopback addresses other than 127.0.0.1: 127.<block>.0.1, 127.<block>.0.2, …"""
    return [f"127.{block}.{n // 250}.{n % 250 + 1}" for n in range(count)]


def send_from(source, port, data, timeout=10):
    """Open a connection from source to nginx on 127.0.0.1:port and send data; the socket."""
    client = socket.socket()
    client.settimeout(timeout)
    client.bind((source, 0))
    client.connect(("127.0.0.1", port))
    client.sendall(data)
    return client


class SlowClients(threading.Thread):
    """connections slow requests at once, spread over targets and sources, kept up until stop()."""

    def __init__(self, port, targets, sources, connections, interval=1.0):
        super().__init__(daemon=True)
        self.port, self.targets, self.sources = port, targets, sources
        self.connections, self.interval = connections, interval
        self.open = {}  # socket → slot number
        self.counts = {"opened": 0, "refused_429": 0, "ended_by_nginx": 0, "failed_to_connect": 0}
        self._stopping = threading.Event()
        self._ready = threading.Event()

    def start(self):
        super().start()
        self._ready.wait(60)
        return self

    def _open(self, slot):
        target = self.targets[slot % len(self.targets)]
        try:
            client = send_from(self.sources[slot % len(self.sources)], self.port, target.head)
        except OSError:
            self.counts["failed_to_connect"] += 1
            return
        client.setblocking(False)
        self.open[client] = slot
        self.counts["opened"] += 1

    def _ended(self, client):
        """nginx answered or closed this one: count how, then open its slot again."""
        slot = self.open.pop(client)
        try:
            answer = client.recv(4096)
        except OSError:
            answer = b""
        client.close()
        self.counts["refused_429" if answer.startswith(b"HTTP/1.1 429") else "ended_by_nginx"] += 1
        if not self._stopping.is_set():
            self._open(slot)

    def run(self):
        for slot in range(self.connections):
            self._open(slot)
        self._ready.set()
        while not self._stopping.is_set():
            deadline = time.monotonic() + self.interval
            while not self._stopping.is_set() and time.monotonic() < deadline:
                # poll, not select: select cannot watch file descriptors above 1023.
                watch = select.poll()
                by_fd = {client.fileno(): client for client in self.open}
                for fd in by_fd:
                    watch.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
                for fd, _event in watch.poll(max(0, min(200, int((deadline - time.monotonic()) * 1000)))):
                    self._ended(by_fd[fd])
            for client, slot in list(self.open.items()):
                try:
                    client.send(self.targets[slot % len(self.targets)].trickle)
                except OSError:
                    self._ended(client)

    def stop(self):
        self._stopping.set()
        self.join(10)
        for client in list(self.open):
            client.close()
        self.open.clear()

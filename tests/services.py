"""Real services for the tests, started on loopback with throwaway data directories.

PostgreSQL runs as the `postgres` user (initdb refuses root); Redis and nginx run as
whoever runs the tests. Nothing here is mocked: a test that needs a service gets the real
one, or the session fails loudly saying what is missing.
"""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, timeout=20, process=None, what="service"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def answers_ok(url, timeout, headers=None, interval=0.05):
    """Ask url until it answers 200 (True), or until timeout seconds have passed (False)."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, headers=headers, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(interval)
    return False


def stop_process(process, timeout=10):
    """SIGTERM, then SIGKILL after the timeout; safe on None or a process that has exited."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Postgres:
    """A PostgreSQL 15 server in a temporary directory, owned by the postgres user.

    Tuned for speed, it may lose its last commits in a crash (synchronous_commit=off), which a
    production server never does; durable=True keeps them, for tests that crash it."""

    def __init__(self, durable=False):
        self.durable = durable
        if not (PG_BIN / "postgres").exists():
            raise RuntimeError("PostgreSQL 15 is not installed (apt-get install postgresql); "
                               "`make test` installs it")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="berth-pg-"))
        account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self._as_user = {}
        if account is not None:
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        subprocess.run(
            [PG_BIN / "initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, **self._as_user,
        )
        self.start()

    def start(self):
        """Start the server (again, after stop_immediately) on the same port and data."""
        log = open(self.dir / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [PG_BIN / "postgres", "-D", self.dir / "data", "-p", str(self.port), "-k", self.dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", f"synchronous_commit={'on' if self.durable else 'off'}",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=log, **self._as_user,
        )
        log.close()
        deadline = time.monotonic() + 30
        while subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start; see {self.dir / 'postgres.log'}")
            time.sleep(0.1)

    def pids(self):
        """The postmaster and its children (the backends that hold clients' connections)."""
        children = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and int(stat_fields(entry)[1]) == self.process.pid:
                    children.append(int(entry))
            except OSError:
                continue  # it ended meanwhile
        return [self.process.pid, *children]

    def pause(self):
        """SIGSTOP the whole server: connections stay open, and nothing answers."""
        for pid in self.pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self):
        for pid in self.pids():
            os.kill(pid, signal.SIGCONT)

    def stop_immediately(self):
        """pg_ctl stop -m immediate: every connection drops, as when the server crashes.

        This server runs with synchronous_commit=off, so the last commits would be lost with it;
        a checkpoint first keeps them, as a production server's synchronous commits are kept."""
        self._sql("CHECKPOINT")
        subprocess.run([PG_BIN / "pg_ctl", "stop", "-m", "immediate", "-D", self.dir / "data"],
                       check=True, capture_output=True, **self._as_user)
        self.process.wait(timeout=10)

    def restart(self, mode):
        """Stop the server as `pg_ctl stop -m <mode>` does (fast: SIGINT, clients disconnected;
        immediate: SIGQUIT, no clean shutdown, recovery at start), then start it again on the same
        port. Returns how long it was down, in seconds."""
        down_at = time.monotonic()
        self.process.send_signal({"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])
        self.process.wait(30)
        self.start()
        return time.monotonic() - down_at
    def _sql(self, statement):
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
                        "-c", statement], check=True, capture_output=True)

    def create_database(self, name):
        self._sql(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        stop_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    def __init__(self):
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server); "
                               "`make test` installs it")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="berth-redis-")
        self.start()

    def start(self):
        """Start the server (again, after halt) on the same port, empty: it keeps nothing on disk."""
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process, what="redis-server")

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def halt(self):
        """Stop the server, keeping its port and folder for start()."""
        stop_process(self.process)

    def stop(self):
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


def stat_fields(pid):
    """The fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, …"""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_group(root):
    """root and its descendants that are in root's session (pids), while they last.

    Staying in the session keeps a tool out of the worker's group: the process backend starts
    each tool in a session of its own, as a child of the worker.
    """
    try:
        session = stat_fields(root)[3]
    except OSError:
        return
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            if stat_fields(pid)[3] != session:
                continue
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:  # exited meanwhile
            continue
        yield pid
        pending.extend(int(child) for child in children)


def _proc_kib(pid, file, field):
    """A figure in KiB from /proc/<pid>/<file>; 0 for a zombie (no memory) or a process gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid):
    """Resident memory of one process, in KiB."""
    return _proc_kib(pid, "status", "VmRSS:")


def group_rss(root):
    """(KiB, process count) of the resident memory of root's process group (process_group)."""
    pids = list(process_group(root))
    return sum(rss_kib(pid) for pid in pids), len(pids)


def group_pss(root):
    """Proportional set size (KiB) of root's process group: each shared page is split among the
    processes that map it, so forked workers' shared code is counted once in total."""
    return sum(_proc_kib(pid, "smaps_rollup", "Pss:") for pid in process_group(root))


def _unused_network():
    """A /16 of 10.224.0.0/11 that no route on this host covers yet, for one engine's networks."""
    import ipaddress
    import random

    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    taken = [ipaddress.ip_network(word, strict=False) for line in routes.splitlines()
             for word in line.split()[:1] if "/" in word]
    candidates = list(ipaddress.ip_network("10.224.0.0/11").subnets(new_prefix=16))
    random.shuffle(candidates)
    for candidate in candidates:
        if not any(candidate.overlaps(route) for route in taken):
            return str(candidate)
    raise RuntimeError("no free /16 in 10.224.0.0/11 for the test engine's networks")


class Dockerd:
    """A Docker engine of our own: throwaway data root, no default bridge, isolated tool networks.

    data_root keeps images between runs instead (tests/deploy: a cache only one engine may use at
    a time). User-defined bridge networks work here too, without iptables: see
    docs/decisions/0007-compose-on-a-test-engine.md.
    """

    def __init__(self, data_root=None):
        binary = shutil.which("dockerd")
        if not binary:
            raise RuntimeError("dockerd is not installed (apt-get install docker.io); `make test` installs it")
        # A short path: the socket's path must fit in a unix socket address.
        self.dir = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
        self.socket = self.dir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.data_root = Path(data_root) if data_root else self.dir / "data"
        log = open(self.dir / "dockerd.log", "wb")
        self.process = subprocess.Popen(
            [binary, "--data-root", self.data_root, "--exec-root", self.dir / "exec",
             "--pidfile", self.dir / "dockerd.pid", "-H", self.url, "--storage-driver", "overlay2",
             # iptables: Docker keeps tools' bridge networks apart. Its own address pool, one no
             # route on this host uses, so that engines running side by side never share a subnet.
             "--iptables=true", "--ip6tables=false", "--bridge=none",
             "--default-address-pool", f"base={_unused_network()},size=28"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; see {self.dir / 'dockerd.log'}")
            time.sleep(0.1)

    def _answers(self):
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
                probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b"200 OK" in probe.recv(200)
            except OSError:
                return False

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.url, timeout=120)

    def stop(self):
        stop_process(self.process, timeout=30)
        # dockerd leaves its network namespace mounted; unmount it so the folder can go.
        subprocess.run(["umount", self.dir / "exec" / "netns" / "default"], capture_output=True)
        subprocess.run(["umount", "-R", self.data_root], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


"""What the benchmarks share: a throwaway Berth on loopback, and the cleanup that ends every
process a run started.

    run = BenchRun(keep=False, prefix="berth-bench-")   # a work directory and a deployment label
    berth = Berth(run, postgres=False)                  # not started yet
    berth.start(catalogue_path, extra_env={...})        # nginx, auth, web, worker via deploy.local.Stack
    browser = berth.sign_in()                           # a requests.Session with the session cookie
    ...
    run.close()                                         # stops everything, on success, failure or Ctrl-C

Everything listens on 127.0.0.1. Berth's processes and the tools it starts carry the run's
BERTH_DEPLOYMENT label; whatever else a run starts names its work directory on its command
line. The last sweep of close() ends anything that still matches either.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from tests.services import free_port, stop_process, wait_for_port  # the same helpers as the tests

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "berth.localhost"


def nginx_binary():
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise SystemExit("nginx is not installed (apt-get install nginx; `make bench` does it)")
    return found


def wait_for(port, what, process=None, timeout=20):
    wait_for_port(port, timeout=timeout, process=process, what=what)


def getaddrinfo_loopback(real):
    def resolve(host, *args, **kwargs):
        if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
            host = "127.0.0.1"  # Python's resolver here does not map *.localhost to loopback
        return real(host, *args, **kwargs)
    return resolve


# -- processes ----------------------------------------------------------------------------------
def stat_fields(pid):
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def labelled_pids(deployment):
    """Processes that carry this run's BERTH_DEPLOYMENT label: Berth's own, and its tools."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            if stat_fields(entry)[0] == "Z":
                continue
        except OSError:
            continue
        if f"BERTH_DEPLOYMENT={deployment}".encode() in environ:
            found.append(int(entry))
    return found


def kill_labelled(deployment, grace=5.0):
    """The last line of cleanup: end whatever still carries this run's label.

    Berth's own processes carry it too (it is in their environment), and the tools carry it
    because the process backend labels them with it. All run in sessions of their own.
    """
    pids = labelled_pids(deployment)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                group = os.getpgid(pid)
                if group != os.getpgrp():  # never this process's own group
                    os.killpg(group, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and labelled_pids(deployment):
            time.sleep(0.05)
        pids = labelled_pids(deployment)
        if not pids:
            return []
    return pids


def pids_mentioning(text):
    """Processes whose command line names text (the work directory), other than this one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes() and stat_fields(entry)[0] != "Z":
                found.append(int(entry))
        except OSError:
            continue
    return found


def kill_mentioning(text, grace=5.0):
    """End every process whose command line names text: SIGTERM, then SIGKILL. Returns what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_mentioning(text):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pids_mentioning(text):
            time.sleep(0.05)
        if not pids_mentioning(text):
            return []
    return pids_mentioning(text)


def exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # runs every finally block, so cleanup happens


def install_signal_handlers():
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)


# -- one run ------------------------------------------------------------------------------------
class BenchRun:
    """A work directory, a deployment label, and everything to undo when the run ends.

    Register each started thing with `cleanup` (an ExitStack) right after starting it; close()
    unwinds it in reverse order, then sweeps by label and by work directory.
    """

    def __init__(self, keep=False, prefix="berth-bench-"):
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self.deployment = f"bench-{os.getpid()}-{os.urandom(2).hex()}"
        self.cleanup = ExitStack()
        self.failed = True  # until the run says otherwise
        self.children = []  # extra processes to kill first on close (e.g. a load generator)

    def close(self):
        # A second Ctrl-C or a SIGTERM must not cut the cleanup short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in self.children:
                if child is not None and child.poll() is None:
                    child.kill()
                    child.wait()
            try:
                self.cleanup.close()
            finally:
                # Whatever the orderly stops missed: Berth's processes and the tools carry the
                # run's label; everything else started names the work directory.
                left = kill_labelled(self.deployment) + kill_mentioning(str(self.work))
                if left:
                    print(f"Could not end processes {left}", file=sys.stderr)
            if self.failed or self.keep:
                print(f"Logs and data kept in {self.work}", file=sys.stderr)
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Berth:
    """Berth's four processes through deploy.local.Stack, on SQLite (or PostgreSQL and Redis),
    with one benchmark user. Stopped, with the tools it started, when the run closes."""

    def __init__(self, run, postgres=False):
        self.run = run
        self.postgres = postgres
        self.email, self.password = "bench@example.org", os.urandom(12).hex()

    def _start_databases(self):
        if not self.postgres:
            return None, None
        from tests.services import Postgres, Redis

        # Their data directories go under the work directory, so that the final sweep
        # (kill_mentioning) also ends a server whose start failed half-way.
        self.run.work.chmod(0o711)  # PostgreSQL runs as the postgres user and must pass through
        saved, tempfile.tempdir = tempfile.tempdir, str(self.run.work)
        try:
            postgres = Postgres()
            self.run.cleanup.callback(postgres.stop)
            redis = Redis()
            self.run.cleanup.callback(redis.stop)
        finally:
            tempfile.tempdir = saved
        return postgres.create_database(f"berth_bench_{os.urandom(3).hex()}"), redis.url(1)

    def start(self, catalogue, extra_env=None, port_base=24000):
        """Start Berth with this catalogue file; extra_env adds BERTH_* settings."""
        database_url, redis_url = self._start_databases()
        low = port_base + (free_port() % 40) * 100
        env = {
            **os.environ,
            "BERTH_DATA_DIR": str(self.run.work / "berth"),
            "BERTH_DOMAIN": DOMAIN,
            "BERTH_HTTP_PORT": str(free_port()),
            "BERTH_AUTH_PORT": str(free_port()),
            "BERTH_WEB_PORT": str(free_port()),
            "BERTH_DEPLOYMENT": self.run.deployment,
            "BERTH_PORT_RANGE": f"{low}-{low + 99}",
            "BERTH_CATALOGUE": str(catalogue),
            "BERTH_SCHEME": "http",
            **(extra_env or {}),
        }
        for name, value in (("BERTH_DATABASE_URL", database_url), ("BERTH_REDIS_URL", redis_url)):
            if value:
                env[name] = value
            else:
                env.pop(name, None)
        os.environ.update(env)  # before webapp is imported: it reads BERTH_* at import and app creation
        for name in ("BERTH_DATABASE_URL", "BERTH_REDIS_URL"):
            if name not in env:
                os.environ.pop(name, None)

        from deploy.local import Stack, prepare_database
        from webapp import create_app

        self.app = create_app()
        self.config = self.app.config
        self.port = int(env["BERTH_HTTP_PORT"])
        self.base_url = f"http://{DOMAIN}:{self.port}"
        with self.app.app_context():
            prepare_database(self.config, self.email, self.password)
        self.stack = Stack(env, self.run.work / "berth")
        self.run.cleanup.callback(self.stop)
        self.stack.render_nginx(self.config)
        for name in ("auth", "web", "worker", "nginx"):
            self.stack.start(name)
        self.stack.wait_ready(f"http://127.0.0.1:{self.port}/healthz", host=DOMAIN)
        # *.localhost resolves to loopback for requests in this process, for the rest of the run.
        self.run.cleanup.enter_context(
            mock.patch("socket.getaddrinfo", getaddrinfo_loopback(socket.getaddrinfo)))

    def stop(self):
        from deploy.local import stop_local_tools
        from webapp.extensions import db

        self.stack.stop_all()
        with self.app.app_context():
            try:
                stop_local_tools(self.config, backends=self.config["BERTH_BACKENDS"])
            finally:
                db.session.remove()
                db.engine.dispose()

    # -- as a browser -------------------------------------------------------------------------
    def sign_in(self):
        """A requests.Session signed in through nginx and the login form. Close it when done."""
        import requests

        browser = requests.Session()
        browser.headers["Accept"] = "text/html"
        form = browser.get(f"{self.base_url}/auth/login", timeout=10)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form.text).group(1)
        answer = browser.post(f"{self.base_url}/auth/login", allow_redirects=False, timeout=10,
                              data={"csrf_token": token, "email": self.email, "password": self.password,
                                    "next": "/"})
        if answer.status_code != 302:
            raise RuntimeError(f"sign-in failed with {answer.status_code}")
        return browser

    def session_cookie(self, browser):
        name = self.config["BERTH_SESSION_COOKIE"]
        return f"{name}={browser.cookies.get(name)}"

    def tool_host(self, slug):
        """The tool's Host header as a browser sends it: <slug>-<key>.berth.localhost:<port>."""
        from webapp.extensions import db
        from webapp.hosts import tool_host
        from webapp.models import User

        with self.app.app_context():
            host_key = db.session.execute(db.select(User.host_key).where(User.email == self.email)).scalar_one()
            db.session.remove()
        return f"{tool_host(slug, host_key, DOMAIN)}:{self.port}"

    def open_tool(self, browser, slug, path="/", timeout=30):
        """Open the tool as a browser does (first visit, starting page, polling until RUNNING)."""
        host = self.tool_host(slug)
        first = browser.get(f"http://{host}{path}", headers={"Sec-Fetch-Mode": "navigate"}, timeout=10)
        if first.status_code not in (200, 202):
            raise RuntimeError(f"first visit to the tool answered {first.status_code}")
        deadline = time.monotonic() + timeout
        while True:
            status = browser.get(f"http://{host}/__berth/status", timeout=10,
                                 headers={"X-Berth-No-Launch": "1", "Accept": "application/json"}).json()
            if status["state"] == "RUNNING":
                return host
            if status["state"] not in ("QUEUED", "SPAWNING") or time.monotonic() > deadline:
                raise RuntimeError(f"the tool did not start: {status}")
            time.sleep(0.05)

    # -- the database -------------------------------------------------------------------------
    def query(self, sql, **params):
        from webapp.extensions import db

        with self.app.app_context():
            try:
                return db.session.execute(db.text(sql), params).mappings().all()
            finally:
                db.session.remove()

    def stop_instance(self, instance_id):
        """Stop one tool now, from this process (as `berth run` does on Ctrl-C)."""
        from webapp.extensions import db
        from webapp.launcher import stop_instance
        from webapp.lifecycle.launches import request_stop
        from webapp.models import ToolInstance

        with self.app.app_context():
            try:
                request_stop(db.session.get(ToolInstance, instance_id), actor="bench", enqueue=False)
                stop_instance(instance_id)
            finally:
                db.session.remove()

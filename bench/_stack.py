"""What the benchmarks share: a throwaway Berth on loopback, and the cleanup that ends every
process a run started.

    run = BenchRun(keep=False, prefix="berth-bench-")   # a work directory and a deployment label
    berth = Berth(run, postgres=False)                  # not started yet
    berth.start(catalogue_path, extra_env={...})        # nginx, auth, web, worker via deploy.local.Stack
    browser = berth.sign_in()                           # a requests.Session with the session cookie
    ...
    run.close()                                         # stops everything, on success, failure or Ctrl-C

    run_wrk(run, url, duration, ...)                    # one wrk measurement, as a dict
    start_nginx(conf, prefix, log); Chp(run).start()    # peers: a plain nginx, configurable-http-proxy
    MemorySampler({"name": pid, ...})                   # RSS of process groups, sampled in a thread
    check_target(...)                                   # one line of a "targets" section

Everything listens on 127.0.0.1. Berth's processes and the tools it starts carry the run's
BERTH_DEPLOYMENT label; whatever else a run starts names its work directory on its command
line. The last sweep of close() ends anything that still matches either.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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


def add_run_arguments(parser, postgres=True):
    """The options every benchmark takes: the database (where it has a choice) and --keep."""
    if postgres:
        parser.add_argument("--postgres", action="store_true",
                            help="run Berth on PostgreSQL and Redis instead of SQLite")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and its logs")


def run_benchmark(bench):
    """Run bench.execute(), always undoing its run_state; interruptions and failures exit clearly."""
    install_signal_handlers()
    try:
        try:
            bench.execute()
            bench.run_state.failed = False
        except (KeyboardInterrupt, SystemExit):
            bench.run_state.failed = False  # stopped on purpose: nothing to look into
            raise
        finally:
            bench.run_state.close()
    except KeyboardInterrupt:
        raise SystemExit("Interrupted; every process the benchmark started has been stopped.")
    except RuntimeError as error:
        raise SystemExit(f"Benchmark failed: {error}")


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
        from berth.extensions import db

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
        from tests.actions import signed_in

        return signed_in(self.base_url, self.email, self.password)

    def session_cookie(self, browser):
        name = self.config["BERTH_SESSION_COOKIE"]
        return f"{name}={browser.cookies.get(name)}"

    def tool_host(self, slug):
        """The tool's Host header as a browser sends it: <slug>-<key>.berth.localhost:<port>."""
        from berth.extensions import db
        from berth.hosts import tool_host
        from berth.models import User

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
        from berth.extensions import db

        with self.app.app_context():
            try:
                return db.session.execute(db.text(sql), params).mappings().all()
            finally:
                db.session.remove()

    def stop_instance(self, instance_id):
        """Stop one tool now, from this process (as `berth run` does on Ctrl-C)."""
        from berth.extensions import db
        from berth.launch.state_machine import begin_stop, stop_instance
        from berth.models import ToolInstance

        with self.app.app_context():
            try:
                begin_stop(db.session.get(ToolInstance, instance_id), actor="bench")
                stop_instance(instance_id)
            finally:
                db.session.remove()


# -- load, peers and memory, for the measuring benchmarks ---------------------------------------
# wrk prints its own report; this adds one machine-readable line (latencies in microseconds).
WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BERTH_BENCH {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"non_2xx_3xx\": %d, " ..
    "\"connect_errors\": %d, \"read_errors\": %d, \"write_errors\": %d, \"timeouts\": %d, " ..
    "\"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, \"max_us\": %d, \"mean_us\": %.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def run_wrk(run, url, duration, threads=2, connections=32, headers=None):
    """One `wrk --latency` measurement: requests, req/s, latency percentiles (µs), errors.

    Any answer other than 2xx or 3xx stops the benchmark: a proxy that answered 401 or 503
    quickly would otherwise look fast.
    """
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk; `make bench` does it)")
    script = run.work / "report.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script)]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True, text=True)
    run.children.append(process)  # killed first if the run ends meanwhile
    try:
        output, _ = process.communicate(timeout=duration + 60)
    finally:
        run.children.remove(process)
    line = next((l for l in output.splitlines() if l.startswith("BERTH_BENCH ")), None)
    if process.returncode or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    result = json.loads(line.split(" ", 1)[1])
    result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    if result["non_2xx_3xx"]:
        raise RuntimeError(f"wrk saw {result['non_2xx_3xx']} answers that were not 2xx/3xx "
                           f"out of {result['requests']} from {url}; the numbers would be meaningless")
    return result


def start_nginx(conf, prefix, log):
    """An nginx of the benchmark's own (a peer or an upstream), in the foreground, in its own session."""
    command = [nginx_binary(), "-p", f"{prefix}/", "-c", str(conf), "-e", f"{prefix}/error.log",
               "-g", "daemon off;"]
    checked = subprocess.run(command[:-2] + ["-t", "-q"], capture_output=True, text=True)
    if checked.returncode:
        raise RuntimeError(f"nginx rejected {conf}:\n{checked.stderr}")
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def nginx_user_line():
    """nginx as root drops its workers to nobody, who cannot read the work directory."""
    return "user root root;\n" if os.geteuid() == 0 else ""


CHP_DIR = ROOT / "bench" / "chp"  # package.json and package-lock.json pin the version


def chp_command():
    """JupyterHub's configurable-http-proxy, installed into bench/chp with `npm ci` when missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise SystemExit("node and npm are not installed (deploy/install-system-packages.sh nodejs npm; "
                         "`make bench` does it)")
    script = CHP_DIR / "node_modules" / "configurable-http-proxy" / "bin" / "configurable-http-proxy"
    installed = CHP_DIR / "node_modules" / ".package-lock.json"  # npm writes it on every install
    lock = CHP_DIR / "package-lock.json"
    if not script.exists() or not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        print("Installing configurable-http-proxy into bench/chp (npm ci)…", flush=True)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CHP_DIR, check=True,
                       stdin=subprocess.DEVNULL)
    return [node, str(script)]


def chp_version():
    return json.loads((CHP_DIR / "node_modules" / "configurable-http-proxy" / "package.json")
                      .read_text())["version"]


class Chp:
    """configurable-http-proxy as JupyterHub runs it: a proxy port, and a REST API on another port
    through which routes are added (JupyterHub adds one per user server). Its --pid-file names the
    run's work directory, so the final sweep finds it too."""

    def __init__(self, run):
        self.run = run
        self.port, self.api_port = free_port(), free_port()
        self.token = os.urandom(16).hex()
        self.process = None

    def start(self):
        command = chp_command() + [
            "--ip", "127.0.0.1", "--port", str(self.port),
            "--api-ip", "127.0.0.1", "--api-port", str(self.api_port),
            "--pid-file", str(self.run.work / "chp.pid"), "--log-level", "warn"]
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.token}
        with open(self.run.work / "chp.log", "ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.run.cleanup.callback(stop_process, self.process)
        wait_for(self.port, "configurable-http-proxy", self.process)
        wait_for(self.api_port, "configurable-http-proxy's API", self.process)
        return self

    def add_route(self, path, target):
        """A static route: requests under path go to target (http://host:port)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/routes{path}", method="POST",
            data=json.dumps({"target": target}).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            if answer.status != 201:
                raise RuntimeError(f"configurable-http-proxy refused the route {path}: {answer.status}")


def _rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # a zombie has no RSS


def group_rss(root):
    """(KiB, process count) of root and its descendants in root's session.

    Staying in the session keeps the tool out of the worker's group: the process backend starts
    each tool in a session of its own, as a child of the worker.
    """
    try:
        session = stat_fields(root)[3]
    except OSError:
        return 0, 0
    total = count = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            if stat_fields(pid)[3] != session:
                continue
            total += _rss_kib(pid)
            count += 1
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(child) for child in children)
    return total, count


def group_pss(root):
    """Proportional set size (KiB) of the same group as group_rss: each shared page is split
    among the processes that map it, so forked workers' shared code is counted once in total."""
    try:
        session = stat_fields(root)[3]
    except OSError:
        return 0
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            if stat_fields(pid)[3] != session:
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(child) for child in children)
    return total


class MemorySampler(threading.Thread):
    """RSS of named process groups every interval: `before` (at creation), `peak`, and per-window
    start and peak (window(), for "flat memory during one transfer")."""

    def __init__(self, roots, interval=0.1):
        super().__init__(daemon=True)
        self.roots = roots
        self.interval = interval
        self.before = {name: group_rss(pid) for name, pid in roots.items()}
        self.before_pss = {name: group_pss(pid) for name, pid in roots.items()}
        self.peak = {name: kib for name, (kib, _) in self.before.items()}
        self.current = dict(self.peak)
        self._window = None
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def _sample(self):
        with self._lock:
            for name, pid in self.roots.items():
                kib = group_rss(pid)[0]
                self.current[name] = kib
                self.peak[name] = max(self.peak[name], kib)
                if self._window is not None:
                    self._window[name] = max(self._window[name], kib)

    def run(self):
        while not self._stop_event.wait(self.interval):
            self._sample()

    def open_window(self):
        """Start a window: returns the RSS now (KiB by name); close_window() returns its peak."""
        self._sample()
        with self._lock:
            self._window = dict(self.current)
            return dict(self.current)

    def close_window(self):
        self._sample()
        with self._lock:
            window, self._window = self._window, None
            return window

    def stop(self):
        self._stop_event.set()
        self.join()


def mb(kib):
    """KiB to MB (10^6 bytes), the unit of the issue's memory targets."""
    return kib * 1024 / 1e6


def check_target(name, value, goal, higher_is_better=True, unit="", note=""):
    """One target: the measured value against the goal; met, or missed by how much (relative)."""
    met = value >= goal if higher_is_better else value <= goal
    if met:
        verdict = "met"
    elif goal:
        verdict = f"missed by {abs(value - goal) / abs(goal):.0%}"
    else:
        verdict = "missed"
    return {"target": name, "value": value, "goal": goal, "unit": unit, "met": met, "verdict": verdict,
            "goal_text": f"{'≥' if higher_is_better else '≤'} {goal:.2f}{unit}", "note": note}


def print_targets(rows):
    print(f"\n{'target':<50}{'measured':>12}  {'goal':<14}verdict")
    for row in rows:
        note = f"  ({row['note']})" if row["note"] else ""
        print(f"{row['target']:<50}{row['value']:>10.2f}{row['unit']:<2}  {row['goal_text']:<14}"
              f"{row['verdict']}{note}")

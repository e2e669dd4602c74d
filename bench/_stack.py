"""What the benchmarks share: a throwaway Berth on loopback, and the cleanup that ends every
process a run started.

    run = BenchRun(keep=False, prefix="berth-bench-")   # a work directory and a deployment label
    berth = Berth(run, catalogue_path, extra_env={...}) # tests.local_stack's Berth, in the work directory
    berth.start()                                       # nginx, auth, web, worker, as `berth run` starts them
    browser = berth.sign_in()                           # a requests.Session with the session cookie
    ...
    run.close()                                         # stops everything, on success, failure or Ctrl-C

    run_wrk(run, url, duration, ...)                    # one wrk measurement, as a dict
    run.start_nginx("plain", configuration, what)       # peers: a plain nginx; Chp(run).start()
    MemorySampler({"name": pid, ...})                   # RSS of process groups, sampled in a thread
    check_target(...)                                   # one line of a "targets" section

Berth and its processes are the tests' own (tests/local_stack.py, deploy/local.py); what is here
is what only a benchmark needs. Everything listens on 127.0.0.1. Berth's processes and the tools
it starts carry the run's BERTH_DEPLOYMENT label; whatever else a run starts names its work
directory on its command line. The last sweep of close() ends anything that still matches either.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from deploy.local import ROOT, nginx_command, nginx_config_error, start_process
from tests.local_stack import BerthStack, loopback_names, stack_env
from tests.services import free_port, group_pss, group_rss, stat_fields, stop_process, wait_for_port


# -- processes ----------------------------------------------------------------------------------
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


def _kill_group(pid, sig):
    group = os.getpgid(pid)
    if group != os.getpgrp():  # never this process's own group
        os.killpg(group, sig)


def end_processes(find, kill=os.kill, grace=5.0):
    """SIGTERM every process find() lists, then SIGKILL those still there after grace seconds.
    Returns the pids that outlived both."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in find():
            try:
                kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and find():
            time.sleep(0.05)
        if not find():
            return []
    return find()


def kill_labelled(deployment):
    """The last line of cleanup: end whatever still carries this run's label, group by group.

    Berth's own processes carry it too (it is in their environment), and the tools carry it
    because the process backend labels them with it. All run in sessions of their own.
    """
    return end_processes(lambda: labelled_pids(deployment), kill=_kill_group)


def kill_mentioning(text):
    """End every process whose command line names text. Returns what is left."""
    return end_processes(lambda: pids_mentioning(text))


def exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # runs every finally block, so cleanup happens


def install_signal_handlers():
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)


def add_run_arguments(parser, postgres=True):
    """The options every benchmark takes: the database (where it has a choice), --keep and --json."""
    if postgres:
        parser.add_argument("--postgres", action="store_true",
                            help="run Berth on PostgreSQL and Redis instead of SQLite")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and its logs")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="write the results as JSON to FILE (default: under bench/results/)")


def rotated(items, index):
    """items, rotated by index: each round starts with the next one, so that drift on the machine
    falls on all of them."""
    shift = index % len(items)
    return items[shift:] + items[:shift]


def require(*programs, hint="`make bench` installs what this needs"):
    """Stop at once, before anything starts, when a program the benchmark runs is not installed."""
    for program in programs:
        if not shutil.which(program) and not os.path.exists(f"/usr/sbin/{program}"):
            raise SystemExit(f"{program} is not installed ({hint})")


def write_results(path, module, document):
    """Save a run's results as JSON, with when it finished and the command that ran it."""
    document = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join([Path(sys.executable).name, "-m", module] + sys.argv[1:]), **document}
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nWritten to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


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
        # Passable (not readable) for nginx's workers, which run as BERTH_NGINX_USER when the
        # benchmark runs as root: the auth cache and temporary files live in Berth's data directory.
        os.chmod(self.work, 0o711)
        self.deployment = f"bench-{os.getpid()}-{os.urandom(2).hex()}"
        self.cleanup = ExitStack()
        self.failed = True  # until the run says otherwise
        self.children = []  # extra processes to kill first on close (e.g. a load generator)

    def start(self, command, log, ports, what, env=None, cwd=ROOT, timeout=20):
        """Start a process of the run's own (a peer or an upstream), stopped when the run closes,
        and wait until it listens on each of ports."""
        process = start_process(command, log, env=env, cwd=cwd)
        self.cleanup.callback(stop_process, process)
        for port in ports:
            wait_for_port(port, timeout=timeout, process=process, what=what)
        return process

    def start_nginx(self, name, configuration, what):
        """An nginx of the run's own, in the folder name of the work directory, on a free port:
        configuration(prefix, port) gives the text of its nginx.conf. Returns (port, process)."""
        prefix = self.work / name
        prefix.mkdir(exist_ok=True)
        port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(configuration(prefix, port))
        command = nginx_command(prefix, conf, error_log=prefix / "error.log")
        error = nginx_config_error(command)
        if error:
            raise RuntimeError(f"nginx rejected {conf}:\n{error}")
        return port, self.start(command, prefix / "stdout.log", [port], what)

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


def _databases(run):
    """PostgreSQL and Redis as the tests start them, stopped when the run closes: (database URL,
    Redis URL)."""
    from tests.services import Postgres, Redis

    # Their data directories go under the work directory, so that the final sweep
    # (kill_mentioning) also ends a server whose start failed half-way.
    run.work.chmod(0o711)  # PostgreSQL runs as the postgres user and must pass through
    saved, tempfile.tempdir = tempfile.tempdir, str(run.work)
    try:
        postgres = Postgres()
        run.cleanup.callback(postgres.stop)
        redis = Redis()
        run.cleanup.callback(redis.stop)
    finally:
        tempfile.tempdir = saved
    return postgres.create_database(f"berth_bench_{os.urandom(3).hex()}"), redis.url(1)


class Berth(BerthStack):
    """The tests' Berth (tests/local_stack.py) in the run's work directory, labelled with its
    deployment, on SQLite (or PostgreSQL and Redis), with one benchmark user. Stopped, with the
    tools it started, when the run closes."""

    def __init__(self, run, catalogue, postgres=False, extra_env=None, isolation="single-user"):
        database_url, redis_url = _databases(run) if postgres else (None, None)
        env = stack_env(run.work / "berth", run.deployment, catalogue, database_url, redis_url, port_base=24000,
                        # By default tools on loopback, one user: the benchmarks measure the proxy
                        # and the launch path. bench.proxy measures the namespaces that a tool of
                        # a many-user Berth gets too (--isolation).
                        extra_env={"BERTH_SCHEME": "http", "BERTH_TOOL_ISOLATION": isolation,
                                   **(extra_env or {})})
        # This process is this Berth's: what webapp reads from the environment at import (the
        # metrics folder, the queue) is this Berth's too.
        os.environ.update(env)
        for name in ("BERTH_DATABASE_URL", "BERTH_REDIS_URL"):
            if name not in env:
                os.environ.pop(name, None)
        super().__init__(env)
        self.run = run
        self.postgres = postgres

    def start(self):
        self.run.cleanup.callback(self.stop)
        super().start()
        self.user = self.create_user("bench@example.org", os.urandom(12).hex(), is_admin=True)
        # *.localhost resolves to loopback for requests in this process, for the rest of the run.
        self.run.cleanup.enter_context(loopback_names())

    def sign_in(self):
        """A requests.Session signed in as the benchmark user. Close it when done."""
        return self.login(self.user)

    def cookie_for(self, browser, address):
        """The Cookie header a browser sends to a tool address: that tool host's own cookie, which
        the sign-in hand-off of its first visit set."""
        from tests.local_stack import TOOL_COOKIE

        return f"{TOOL_COOKIE}={self.tool_cookie(browser, address.split(':')[0])}"

    def tool_address(self, slug):
        """The benchmark user's tool as a browser's Host header names it: <slug>-<key>.berth.localhost:<port>."""
        return f"{self.tool_host(slug, self.user)}:{self.port}"

    def start_tool(self, browser, slug, path="/"):
        """Open the benchmark user's tool as a browser does, until it answers; its tool_address."""
        self.open_tool(browser, slug, self.user, path, timeout=30)
        return self.tool_address(slug)


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
    require("wrk")
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
        self.process = self.run.start(command, self.run.work / "chp.log", [self.port, self.api_port],
                                      "configurable-http-proxy",
                                      env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": self.token})
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

"""`berth run` supervises its components: one that dies comes back, and Ctrl-C or SIGTERM stops
the whole of it, the process-backend tools included, leaving no process and no port behind.

`berth run` runs here as a user runs it: a command in a process of its own, with its own data
directory and ports (SQLite, Huey on SQLite). An in-process app on the same database
(tests/local_stack.py) creates the user and launches the tool.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from deploy.clashes import command_line
from tests.local_stack import BerthStack, stack_env
from tests.services import free_port, wait_for_port

BERTH = Path(sys.executable).parent / "berth"
CATALOGUE = Path(__file__).resolve().parent.parent / "catalogue.yml"
# What each component's command line holds, to find its server (the leader of its group).
COMMANDS = {"web": "webapp:create_server_app", "auth": "auth_service:create_server_app"}


class BerthRun:
    """`berth run` in a process of its own; its output goes to output.txt in its data directory."""

    def __init__(self, default_label=False):
        """default_label: leave BERTH_DEPLOYMENT unset, as an operator does."""
        self.data_dir = Path(tempfile.mkdtemp(prefix="berth-run-"))
        self.env = stack_env(self.data_dir, f"test-run-{os.getpid()}-{os.urandom(2).hex()}", CATALOGUE,
                             extra_env={"BERTH_BACKENDS": "process", "BERTH_WEB_WORKERS": "2"})
        if default_label:
            del self.env["BERTH_DEPLOYMENT"]
        self.berth = BerthStack(self.env)  # the same database, from this process
        self.label = self.berth.config["BERTH_DEPLOYMENT"]
        self.ports = [int(self.env[name]) for name in ("BERTH_HTTP_PORT", "BERTH_AUTH_PORT", "BERTH_WEB_PORT")]
        self.output_path = self.data_dir / "output.txt"
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen([str(BERTH), "run"], env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.wait_for_output("Berth is running at", timeout=60)

    def output(self):
        return self.output_path.read_text()

    def wait_for_output(self, text, timeout=20):
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the output of berth run:\n{self.output()}")
            time.sleep(0.1)

    def component(self, role):
        """The pid of the server of auth or web: a child of `berth run`."""
        children = [pid for pid in _pids() if _parent(pid) == self.process.pid
                    and COMMANDS[role] in command_line(pid)]
        assert len(children) == 1, (role, children)
        return children[0]

    def main_page_status(self, browser):
        """What the main page answers browser (a signed-in session); None if nothing answers."""
        try:
            return browser.get(f"{self.berth.base_url}/", timeout=5).status_code
        except requests.ConnectionError:
            return None

    def leftovers(self):
        """Processes of this Berth or its tools that still run: labelled with its data directory
        or deployment in their environment or command line, or working in its data directory."""
        marks = [str(self.data_dir).encode(), f"BERTH_DEPLOYMENT={self.label}".encode()]
        found = []
        for pid in _pids():
            try:
                seen = Path(f"/proc/{pid}/environ").read_bytes() + Path(f"/proc/{pid}/cmdline").read_bytes()
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if pid != os.getpid() and _state(pid) != "Z" and (
                    any(mark in seen for mark in marks) or cwd.startswith(str(self.data_dir))):
                found.append((pid, command_line(pid)))
        return found

    def close(self):
        """Whatever a test left: stop berth run, kill anything of it still running, and remove it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid, _ in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        from berth.extensions import db

        with self.berth.app.app_context():
            db.engine.dispose()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _pids():
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _stat(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ["X", "0"]


def _state(pid):
    return _stat(pid)[0]


def _parent(pid):
    return int(_stat(pid)[1])


def _group_alive(group):
    """Whether a process of this process group still runs. A zombie does not count: a SIGKILLed
    worker that its new parent (init) has not reaped yet runs nothing and holds no port."""
    for pid in _pids():
        fields = _stat(pid)
        if len(fields) > 2 and int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _listening(port, pid="self"):
    """Whether anything listens on TCP port (IPv4 or IPv6) in the network namespace of process
    pid (by default this one's)."""
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def running():
    """One `berth run` for the tests that kill a component of it, and a browser signed in to it."""
    run = BerthRun()
    user = run.berth.create_user()
    yield run, run.berth.login(user)
    run.close()


@pytest.fixture
def fresh_run():
    run = BerthRun()
    yield run
    run.close()


def test_a_sigkilled_web_server_comes_back(running):
    running, browser = running
    server = running.component("web")
    assert running.main_page_status(browser) == 200
    os.kill(server, signal.SIGKILL)  # the server alone: its worker processes outlive it
    running.wait_for_output("web exited with code -9; restarting in 1 s")
    _wait_until(lambda: running.main_page_status(browser) == 200, 15, "the main page answers again")
    assert running.component("web") != server
    _wait_until(lambda: not _group_alive(server), 5, "the dead server's worker processes were left running")


def test_an_auth_service_killed_with_its_workers_comes_back(running):
    running, browser = running
    server = running.component("auth")
    os.killpg(server, signal.SIGKILL)
    running.wait_for_output("auth exited with code -9; restarting in 1 s")
    _wait_until(lambda: running.main_page_status(browser) == 200, 15, "the main page answers again")
    assert running.component("auth") != server
    assert running.process.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_leaves_no_process_and_no_port_behind(fresh_run, sig):
    berth = fresh_run.berth
    user = berth.create_user()
    assert berth.open_tool(berth.login(user), "echo", user).status_code == 200
    tool = berth.instances()[0]
    backend_state = json.loads(tool["backend_state"])
    # The tool listens in a network namespace of its own (the process backend's isolation).
    assert _listening(tool["port"], pid=backend_state["pid"])

    fresh_run.process.send_signal(sig)
    assert fresh_run.process.wait(60) == 0
    assert "Stopping Berth and the tools it started" in fresh_run.output()
    assert [port for port in fresh_run.ports if _listening(port)] == []
    assert fresh_run.leftovers() == []
    # The tool's process is gone (above), and with its namespace, whatever could listen in it.
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert backend_state["namespace"] not in namespaces


def test_a_killed_berth_run_takes_its_components_with_it(fresh_run):
    """The kernel sends each component SIGTERM when `berth run` dies, even by SIGKILL."""
    fresh_run.process.kill()
    fresh_run.process.wait()
    _wait_until(lambda: not fresh_run.leftovers(), 30, lambda: f"every component has stopped: {fresh_run.leftovers()}")
    assert [port for port in fresh_run.ports if _listening(port)] == []


class _DyingStack:
    """Stands in for a Stack whose web component exits at once each time it starts."""

    def __init__(self):
        self.processes = {"web": object()}

    def exited(self):
        return {name: 1 for name in self.processes}

    def kill(self, name):
        del self.processes[name]

    def start(self, name):
        self.processes[name] = object()

    def log_path(self, name):
        return f"logs/{name}.log"


def test_the_restart_delay_doubles_up_to_30_s_and_resets_once_up_a_minute(monkeypatch):
    from deploy.local import Supervisor

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    lines = []
    supervisor = Supervisor(_DyingStack(), say=lines.append)
    for _ in range(7):
        supervisor.check()                      # notices the exit
        clock[0] += supervisor.due["web"] - clock[0]
        supervisor.check()                      # restarts it
    clock[0] += 60                              # up for a minute, then it dies again
    supervisor.check()
    assert [line.split("restarting in ")[1].split(" s")[0] for line in lines] == \
        ["1", "2", "4", "8", "16", "30", "30", "1"]
    assert lines[0] == "web exited with code 1; restarting in 1 s (see logs/web.log)"


# -- two Berths on one machine ------------------------------------------------------------

def _berth_run_refused(env, timeout=20):
    """`berth run` that must refuse to start: its one line of output, within timeout seconds (it
    takes under 2 s on an idle machine: tests/test_cli.py holds every command to 10 s; here the
    stacks beside it slow it down)."""
    started = time.monotonic()
    done = subprocess.run([str(BERTH), "run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert time.monotonic() - started < timeout
    [line] = (done.stdout + done.stderr).splitlines()
    return line


def test_two_berths_with_their_own_data_folders_leave_each_others_tools_alone():
    """Each has the default label of its data folder: neither's reconciler takes the other's
    tools for orphans (it runs every BERTH_RECONCILE_SECONDS, 5 s)."""
    first, second = BerthRun(default_label=True), BerthRun(default_label=True)
    try:
        assert first.label != second.label and first.label.startswith("berth-")
        browsers = {}
        for run in (first, second):
            user = run.berth.create_user()
            browsers[run] = run.berth.login(user)
            assert run.berth.open_tool(browsers[run], "echo", user).status_code == 200
        time.sleep(3 * 5)
        for run in (first, second):
            [tool] = run.berth.instances()
            assert tool["state"] == "RUNNING"
            assert _listening(tool["port"], pid=json.loads(tool["backend_state"])["pid"])
            assert run.process.poll() is None
    finally:
        second.close()
        first.close()


def test_a_data_folder_in_use_is_refused(fresh_run):
    ports = {name: str(free_port()) for name in ("BERTH_HTTP_PORT", "BERTH_AUTH_PORT", "BERTH_WEB_PORT")}
    line = _berth_run_refused({**fresh_run.env, **ports})
    assert line == (f"Error: BERTH_DATA_DIR={fresh_run.data_dir} is in use by another Berth "
                    f"(pid {fresh_run.process.pid}): stop it, or set BERTH_DATA_DIR to another folder")
    browser = fresh_run.berth.login(fresh_run.berth.create_user())
    assert fresh_run.main_page_status(browser) == 200  # the first one goes on


@pytest.mark.parametrize("setting", ["BERTH_HTTP_PORT", "BERTH_WEB_PORT"])
def test_a_port_held_by_another_berth_is_named(fresh_run, tmp_path, setting):
    env = stack_env(tmp_path, "test-clash", CATALOGUE, extra_env={setting: fresh_run.env[setting]})
    line = _berth_run_refused(env)
    assert line.startswith(f"Error: {setting}: port {fresh_run.env[setting]} on 127.0.0.1 is taken by "
                           f"another Berth (data folder {fresh_run.data_dir}, pid "), line
    assert line.endswith(f"stop it, or set {setting} to a free port")
    assert "Berth is running" not in line
    assert not (tmp_path / "berth.db").exists()  # refused before it touched anything


def test_a_port_held_by_another_program_is_named(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = stack_env(tmp_path, "test-clash", CATALOGUE, extra_env={"BERTH_AUTH_PORT": str(port)})
        line = _berth_run_refused(env)
    assert line == (f"Error: BERTH_AUTH_PORT: port {port} on 127.0.0.1 is taken by "
                    f"{Path(sys.executable).name} (pid {os.getpid()}); stop it, or set BERTH_AUTH_PORT "
                    "to a free port")


def test_berth_is_ready_only_when_its_own_nginx_answers(tmp_path):
    """Another program answering 200 on the port (another Berth's nginx, say) is not this stack."""
    from deploy.local import Stack

    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack = Stack({**os.environ, "BERTH_DATA_DIR": str(tmp_path)}, tmp_path)
    stack.processes["nginx"] = subprocess.Popen(["sleep", "60"], start_new_session=True)  # listens nowhere
    try:
        wait_for_port(port, process=other, what="the other server")
        with pytest.raises(RuntimeError, match=f"did not answer at http://127.0.0.1:{port}/ within 3 s"):
            stack.wait_ready(f"http://127.0.0.1:{port}/", timeout=3, listener="nginx")
        stack.wait_ready(f"http://127.0.0.1:{port}/", timeout=3)  # anyone will do, without a listener
    finally:
        stack.kill("nginx")
        other.kill()
        other.wait()

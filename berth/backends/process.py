"""The process backend: each tool is a local subprocess on a loopback port.

The embedded default. A tool process is started in its own session (so it outlives a
worker that is killed) and labelled through its environment with the deployment and the
instance id, which is how a resumed step or the reconciler finds it again.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

from berth.backends.base import Backend, LaunchFailed, allocate_port, probe_http, tail_of_file
from berth.backends.placeholders import fill

# Only these of the worker's variables reach a tool: never its secrets or database URL.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


def _proc_start_ticks(pid):
    """The process's start time in clock ticks: with the pid, it names a process uniquely."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited; it only waits to be reaped
        return None
    return int(fields[19])


def _labels_of(pid):
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    labels = {}
    for item in raw.split(b"\0"):
        if item.startswith(b"BERTH_"):
            key, _, value = item.decode("utf-8", "replace").partition("=")
            labels[key] = value
    return labels


def _reap(pid):
    """Collect an exited child of this worker, so it does not linger as a zombie."""
    try:
        finished, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if finished == 0:
        return None
    return os.waitstatus_to_exitcode(status)


class ProcessBackend(Backend):
    name = "process"
    steps = ("allocate", "start")

    # -- launch steps ---------------------------------------------------------------------
    def run_step(self, step, instance):
        if step == "allocate":
            return {"port": allocate_port(self.config)}
        if step == "start":
            return {"backend_state": self._start(instance)}
        raise LaunchFailed(f"The process backend has no step {step!r}.")

    def _paths(self, instance):
        data_dir = Path(self.config["BERTH_DATA_DIR"])
        home = data_dir / "home" / instance.owner.host_key / instance.template.slug
        logs = data_dir / "logs"
        return home, logs / f"instance-{instance.id}.out", logs / f"instance-{instance.id}.err"

    def _start(self, instance):
        found = self._find(instance.id)
        home, out_path, err_path = self._paths(instance)
        if found:  # started before a crash, not yet recorded: adopt it
            pid = min(found)
            return {"pid": pid, "start_ticks": _proc_start_ticks(pid), "stderr": str(err_path)}

        template = instance.template
        if not template.command:
            raise LaunchFailed("The template has no command to run.")
        home.mkdir(parents=True, exist_ok=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        command, template_env = fill(instance, instance.port, home)
        env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
        env.update(template_env)
        env.update(
            HOME=str(home),
            PORT=str(instance.port),
            BERTH_DEPLOYMENT=self.config["BERTH_DEPLOYMENT"],
            BERTH_INSTANCE_ID=str(instance.id),
        )
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            try:
                process = subprocess.Popen(
                    command, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True,  # its own process group, and it outlives the worker
                )
            except OSError as error:
                raise LaunchFailed(f"Could not run {command[0]!r}: {error.strerror}.") from None
        return {"pid": process.pid, "start_ticks": _proc_start_ticks(process.pid),
                "stderr": str(err_path)}

    def _find(self, instance_id):
        """Pids of this deployment's processes labelled with instance_id."""
        return self._scan().get(instance_id, [])

    def _scan(self):
        deployment = self.config["BERTH_DEPLOYMENT"]
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            labels = _labels_of(entry)
            if labels.get("BERTH_DEPLOYMENT") != deployment:
                continue
            try:
                instance_id = int(labels.get("BERTH_INSTANCE_ID", ""))
            except ValueError:
                continue
            if _proc_start_ticks(entry) is not None:
                found.setdefault(instance_id, []).append(int(entry))
        return found

    # -- health and liveness --------------------------------------------------------------
    def _exit_reason(self, instance):
        pid = (instance.backend_state or {}).get("pid")
        code = _reap(pid) if pid else None
        return "The tool exited" + (f" with code {code}" if code is not None else "") + "."

    def _running(self, instance):
        state = instance.backend_state or {}
        pid, ticks = state.get("pid"), state.get("start_ticks")
        return bool(pid) and ticks is not None and _proc_start_ticks(pid) == ticks

    def check_ready(self, instance):
        if not self._running(instance):
            raise LaunchFailed(self._exit_reason(instance) + " It stopped before it answered.",
                               self.failure_detail(instance))
        address = f"127.0.0.1:{instance.port}"
        return address if probe_http(address, instance.template.health_path) else None

    def is_alive(self, instance):
        if self._running(instance):
            return True, ""
        return False, self._exit_reason(instance)

    def failure_detail(self, instance):
        path = (instance.backend_state or {}).get("stderr")
        return tail_of_file(path) if path else ""

    # -- stopping -------------------------------------------------------------------------
    def stop(self, instance):
        pids = set(self._find(instance.id))
        if self._running(instance):
            pids.add(instance.backend_state["pid"])
        for pid in pids:
            self._terminate(pid)

    def stop_managed(self, instance_id, description):
        for pid in description:
            self._terminate(pid)

    def list_managed(self):
        return self._scan()

    @staticmethod
    def _terminate(pid, grace=5.0):
        """SIGTERM the tool's process group, then SIGKILL whatever is left after the grace time."""
        ticks = _proc_start_ticks(pid)
        if ticks is None:
            _reap(pid)
            return
        try:
            group = os.getpgid(pid)
            os.killpg(group, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(pid)
            if _proc_start_ticks(pid) != ticks:
                return
            time.sleep(0.05)
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _reap(pid)

"""The process backend: each tool is a local process, isolated from Berth and from other tools.

The embedded default. With BERTH_TOOL_ISOLATION=namespaces (the default) a tool runs as its
owner's own unprivileged uid, in a network namespace of its own (sandbox.py), and nginx
reaches it at its namespace's address. With single-user it runs as Berth's own user on
loopback, which is safe for one person only, so Berth then refuses a second user's launch.

A tool process is started in its own session (so it outlives a worker that is killed) and
labelled through its environment with the deployment and the instance id, which is how a
resumed step or the reconciler finds it again.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from berth.backends.base import (Backend, LaunchFailed, allocate_port, home_name, probe_http,
                                 tail_of_file)
from berth.backends.placeholders import fill
from berth.backends.sandbox import Sandbox
from berth.backends.teams import team_folders_of

BUNDLED_TOOLS = Path(__file__).resolve().parent.parent.parent / "berth_tools"

# Only these of the worker's variables reach a tool: never its secrets or database URL.
_INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
TOOL_UMASK = 0o007


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

    @property
    def isolated(self):
        return self.config["BERTH_TOOL_ISOLATION"] == "namespaces"

    def _paths(self, instance):
        data_dir = Path(self.config["BERTH_DATA_DIR"])
        logs = data_dir / "logs"
        return (home_of(self.config, instance), logs / f"instance-{instance.id}.out",
                logs / f"instance-{instance.id}.err")

    def _start(self, instance):
        sandbox = Sandbox(self.config)
        if self.isolated:
            sandbox.check_available()
        else:
            refuse_second_user(instance)
        home, out_path, err_path = self._paths(instance)
        # A process started for this instance before a crash made its log first: without the log,
        # there is none to look for among all the host's processes.
        found = self._find(instance.id) if err_path.exists() else []
        if found:  # started before a crash, not yet recorded: adopt it
            pid = min(found)
            state = {"pid": pid, "start_ticks": _proc_start_ticks(pid), "stderr": str(err_path)}
            if self.isolated:
                state.update(sandbox.create_network(instance.id, instance.port, egress=instance.template.egress))
            return state

        template = instance.template
        if not template.command:
            raise LaunchFailed("The template has no command to run.")
        seal_data_dir(self.config)
        out_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        state, teams = {}, []
        if self.isolated:
            uid = sandbox.uid_for(instance)
            sandbox.prepare_home(str(home), uid)
            teams = team_folders_of(self.config, instance) if template.home else []
            for team in teams:
                sandbox.prepare_team_folder(str(team_folder_path(self.config, team)), team.gid)
            state.update(sandbox.create_network(instance.id, instance.port, egress=template.egress))
            runtime = _bundled_tools_runtime(self.config)
            python, listen = self.config["BERTH_TOOL_PYTHON"], "0.0.0.0"
        else:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            runtime, python, listen = None, sys.executable, "127.0.0.1"
        command, template_env = fill(instance, instance.port, home=home, python=python, ip=listen)
        env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
        if runtime:
            env["PYTHONPATH"] = runtime
        env.update(template_env)
        env.update(
            HOME=str(home),
            PORT=str(instance.port),
            BERTH_DEPLOYMENT=self.config["BERTH_DEPLOYMENT"],
            BERTH_INSTANCE_ID=str(instance.id),
        )
        if teams:
            env["BERTH_TEAM_FOLDERS"] = ":".join(str(team_folder_path(self.config, team)) for team in teams)
        if not shutil.which(command[0], path=env.get("PATH")):
            # Said here: inside the sandbox the error would come from setpriv, after the fork.
            raise LaunchFailed(f"Could not run {command[0]!r}: no such program, or it is not executable.")
        if self.isolated:
            command = sandbox.command(state["namespace"], uid, command, team_gids=[team.gid for team in teams])
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            try:
                process = subprocess.Popen(
                    command, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True,  # its own process group, and it outlives the worker
                    # Not Berth's 077: what a member makes in a team folder, the team may edit
                    # (the home is 0700, so nothing opens to others there).
                    umask=TOOL_UMASK if self.isolated else -1,
                )
            except OSError as error:
                raise LaunchFailed(f"Could not run {command[0]!r}: {error.strerror}.") from None
        state.update(pid=process.pid, start_ticks=_proc_start_ticks(process.pid), stderr=str(err_path))
        return state

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
        address = f"{(instance.backend_state or {}).get('address', '127.0.0.1')}:{instance.port}"
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
        if self.isolated:  # whatever the tool left running in its namespace goes with it
            Sandbox(self.config).remove_network(Sandbox(self.config).namespace(instance.id))
        if not instance.template.home:
            _remove_folder(scratch_of(self.config, instance.id))

    def stop_managed(self, instance_id, description):
        for pid in description:
            self._terminate(pid)
        if self.isolated:
            Sandbox(self.config).remove_network(Sandbox(self.config).namespace(instance_id))

    def list_managed(self):
        found = self._scan()
        if self.isolated:
            for instance_id in Sandbox(self.config).namespaces():
                found.setdefault(instance_id, [])
        return found

    def delete_home(self, home):
        """Remove <BERTH_HOMES_DIR>/<home> and everything in it, following no symbolic link a
        tool planted there (rmtree works through directory descriptors)."""
        path = Path(self.config["BERTH_HOMES_DIR"]) / home
        if path.is_symlink():  # not a home Berth made: remove the link, never what it names
            path.unlink()
            return [str(path)]
        if not path.exists():
            return []
        _remove_folder(path)
        return [str(path)]

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


def team_folder_path(config, team):
    return Path(config["BERTH_TEAMS_DIR"]) / team.name


def home_of(config, instance):
    """The home a tool works in: its owner's, which every tool of theirs shares, or, for a
    shared tool, the tool's own, so that no visitor's files end up in it; for a template
    without a home (home: false), a scratch folder of its own, removed when it stops."""
    if not instance.template.home:
        return scratch_of(config, instance.id)
    return Path(config["BERTH_HOMES_DIR"]) / home_name(instance)


def scratch_of(config, instance_id):
    return Path(config["BERTH_DATA_DIR"]) / "scratch" / f"instance-{instance_id}"


def _remove_folder(path):
    """Remove a folder a tool wrote in, following no symbolic link it planted (rmtree works
    through directory descriptors); a link in its place is removed, never what it names."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return
    if not shutil.rmtree.avoids_symlink_attacks:
        raise LaunchFailed("This platform cannot remove a folder without following links planted in it.")
    shutil.rmtree(path)


def seal_data_dir(config):
    """The data directory: others may pass through it to their home, and read nothing in it."""
    data_dir = Path(config["BERTH_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o711)
    # nginx's prefix stays passable (0711) for its workers, which run as BERTH_NGINX_USER; what
    # is in it is closed on its own (berth.nginx_conf.prepare_prefix).
    public = {"homes", "teams", "scratch", "tool-runtime", "nginx"}
    for entry in data_dir.iterdir():
        if entry.name in public or entry.is_symlink():
            continue
        mode = entry.stat().st_mode
        if mode & 0o077:
            os.chmod(entry, mode & ~0o077)


def _bundled_tools_runtime(config):
    """A copy of berth_tools (the demo tools) that tool users can read: Berth's own checkout may
    sit where they cannot.

    Launches run this at once, while tools already start from the copy: a file is only replaced
    when it differs, and then whole (written aside, then renamed), so that a starting tool never
    reads a file half written (an emptied module runs, does nothing and exits 0)."""
    runtime = Path(config["BERTH_DATA_DIR"]) / "tool-runtime"
    target = runtime / "berth_tools"
    runtime.mkdir(mode=0o755, exist_ok=True)
    os.chmod(runtime, 0o755)
    for folder, dirs, files in os.walk(BUNDLED_TOOLS):
        dirs[:] = [name for name in dirs if name != "__pycache__"]
        copy_folder = target / Path(folder).relative_to(BUNDLED_TOOLS)
        copy_folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(copy_folder, 0o755)
        for name in files:
            if name.endswith(".pyc"):
                continue
            content = (Path(folder) / name).read_bytes()
            copy = copy_folder / name
            try:
                if copy.read_bytes() == content:
                    continue
            except OSError:
                pass
            fd, aside = tempfile.mkstemp(dir=copy_folder, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as written:
                written.write(content)
            os.chmod(aside, 0o644)
            os.replace(aside, copy)
    return str(runtime)


def refuse_second_user(instance):
    """Single-user mode runs tools as Berth's own user: safe for one person, so only one may."""
    from sqlalchemy import func, select

    from berth.extensions import db
    from berth.models import User

    people = db.session.scalar(select(func.count()).select_from(User).where(User.is_active.is_(True)))
    if people > 1:
        raise LaunchFailed(
            "Berth runs in single-user mode (BERTH_TOOL_ISOLATION=single-user): tools run as "
            f"Berth's own user, which is safe for one person only, and this installation has {people} "
            "active users. An administrator can turn isolation on (docs/security.md).")

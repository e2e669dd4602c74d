"""Run the whole of Berth on this machine: nginx, auth, web and worker as child processes.

`berth run` (and so `make run`) uses run_local, which restarts a component that dies
(Supervisor). The tests and benchmarks use Stack directly, to start, kill and restart single
components, or several replicas of one (`web-1`, `web-2`): a component they kill stays dead.
"""
import ctypes
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def nginx_binary():
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise SystemExit("nginx is not installed. On Debian: sudo apt-get install nginx "
                         "(`make run` does this for you when run as root).")
    return found


def nginx_command(prefix, conf=None, error_log=None, workers_as="root"):
    """nginx in the foreground with this prefix; its configuration is prefix/nginx.conf unless
    conf is given, its error log prefix/logs/error.log unless error_log is. Started as root, its
    worker processes run as the user workers_as (Berth's own nginx: BERTH_NGINX_USER)."""
    prefix = Path(prefix)
    directives = "daemon off;"
    if os.geteuid() == 0:
        directives += f" user {workers_as};"
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf or prefix / "nginx.conf"),
            "-e", str(error_log or prefix / "logs" / "error.log"), "-g", directives]


def nginx_config_error(command):
    """What `nginx -t` finds wrong in the configuration that command (from nginx_command) runs, or None."""
    result = subprocess.run(command[:-2] + ["-t", "-q", "-g", command[-1]], capture_output=True, text=True)
    return result.stderr if result.returncode else None


def start_process(command, log_path, env=None, cwd=ROOT, die_with_parent=False):
    """A child process in a session of its own (its whole group can be killed), by default in
    the checkout, with its output appended to log_path. With die_with_parent, the kernel sends it
    SIGTERM when this process ends, even by SIGKILL (Linux only; start it from the main thread:
    the kernel watches the thread that started it)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_terminate_on_parent_death if die_with_parent else None,
                                # The data directory is open to tools' users, for their homes:
                                # what Berth's processes write in it is theirs alone.
                                umask=0o077)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _terminate_on_parent_death():
    """Run in the child, between fork and exec: ask for SIGTERM when the parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


ROLES = ("auth", "web", "worker", "nginx")


def role_of(name):
    """The role of a component: "web" for "web" and for its replicas "web-1", "web-2"."""
    role = name.split("-", 1)[0]
    if role not in ROLES:
        raise ValueError(name)
    return role


def granian_command(host, port, app, workers, threads):
    """granian serving a WSGI factory: a Rust HTTP layer that keeps nginx's connections alive and
    writes a response's head and body in one system call, so a server killed mid-request never
    leaves nginx with a head and no body (docs/decisions/0008-auth-server.md).

    A worker still loading the app misses the stop signal, and granian would wait for it forever:
    after 10 s it kills it."""
    return [str(BIN / "granian"), "--interface", "wsgi", "--host", host, "--port", str(port),
            "--workers", str(workers), "--blocking-threads", str(threads), "--workers-kill-timeout", "10",
            "--no-ws", "--log-level", "warning", "--factory", app]


def auth_server_command(env, host, port, app="auth_service:create_app"):
    """The auth service's server: granian (the default) or gunicorn gthread.

    BERTH_AUTH_SERVER picks; see docs/decisions/0008-auth-server.md for the measurements. app is
    the WSGI factory granian serves (the benchmarks give it a no-op one, to measure the hop alone).
    """
    if env.get("BERTH_AUTH_SERVER", "granian") == "granian":
        return granian_command(host, port, app, env.get("BERTH_AUTH_WORKERS", "2"),
                               env.get("BERTH_AUTH_THREADS", "4"))
    return [str(BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
            "--bind", f"{host}:{port}", "auth_service:create_app()"]


def web_server_command(env, host, port):
    """The web app's server: granian, BERTH_WEB_WORKERS processes of BERTH_WEB_THREADS threads."""
    return granian_command(host, port, "webapp:create_app", env.get("BERTH_WEB_WORKERS", "1"),
                           env.get("BERTH_WEB_THREADS", "8"))


class Stack:
    """Berth's processes, each started from the same environment (BERTH_* variables). With
    die_with_parent, each gets SIGTERM when this process ends (start_process)."""

    def __init__(self, env, data_dir, log_dir=None, die_with_parent=False):
        self.env = dict(env)
        self.die_with_parent = die_with_parent
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir or self.data_dir / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes = {}
        reset_metrics_dir(self.env)
        self.ports = {}  # name → port, for replicas of auth and web started on ports of their own
        self.nginx_user = self.env.get("BERTH_NGINX_USER") or "www-data"

    # -- the components ---------------------------------------------------------------------
    def command(self, name):
        role = role_of(name)
        if role == "auth":
            return auth_server_command(self.env, "127.0.0.1",
                                       self.ports.get(name, self.env["BERTH_AUTH_PORT"]))
        if role == "web":
            port = self.ports.get(name, self.env["BERTH_WEB_PORT"])
            return web_server_command(self.env, "127.0.0.1", port)
        if role == "worker":
            # Huey on SQLite finds a launch by polling: every 10 ms after work, backing off to
            # 50 ms when idle (a few cheap reads a second per thread; Redis hands tasks over at once).
            return [str(BIN / "huey_consumer"), "berth.launch.tasks.huey", "-w", "4", "-k", "thread",
                    "-d", "0.01", "-m", "0.05", "-b", "1.1"]
        if role == "nginx":
            return nginx_command(self.data_dir / "nginx", workers_as=self.nginx_user)
        raise ValueError(name)

    def render_nginx(self, config, **options):
        from berth.nginx_conf import prepare_prefix, render_nginx

        prefix = self.data_dir / "nginx"
        prepare_prefix(prefix, workers_as=self.nginx_user if os.geteuid() == 0 else None)
        text = render_nginx(config, standalone=True, prefix=str(prefix),
                            listen=options.pop("listen", f"127.0.0.1:{config['BERTH_HTTP_PORT']}"),
                            **options)
        conf = prefix / "nginx.conf"
        conf.write_text(text)
        os.chmod(conf, 0o600)  # it holds the proxy secret; only the master (root) reads it
        error = nginx_config_error(self.command("nginx"))
        if error:
            raise SystemExit(f"nginx rejected the rendered configuration:\n{error}")

    def start(self, name, extra_env=None, port=None):
        """Start a component, or a replica named <role>-<n> (auth and web replicas need a port of
        their own; a restart of the replica reuses it)."""
        if port is not None:
            self.ports[name] = port
        self.processes[name] = start_process(self.command(name), self.log_path(name),
                                             env={**self.env, **(extra_env or {})},
                                             die_with_parent=self.die_with_parent)
        return self.processes[name]

    def start_all(self, config, stopping=None):
        """Render nginx's configuration, start every component, and wait until Berth answers (or
        stopping, a StopRequest, is set)."""
        self.render_nginx(config)
        for name in ROLES:
            self.start(name)
        self.wait_ready(f"http://127.0.0.1:{config['BERTH_HTTP_PORT']}/healthz", host=config["BERTH_DOMAIN"],
                        stopping=stopping)

    def stop(self, name, sig=signal.SIGTERM, timeout=10):
        """Ask the component to stop, wait up to timeout, then SIGKILL whatever is left of its
        process group: its worker processes included, even those that outlived their parent."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        if exit_code(process) is None:
            # huey_consumer finishes its tasks on SIGINT; the others stop cleanly on SIGTERM.
            # os.kill, not send_signal: that would reap the process, and free its group's id.
            os.kill(process.pid, signal.SIGINT if role_of(name) == "worker" and sig == signal.SIGTERM else sig)
            deadline = time.monotonic() + timeout
            while exit_code(process) is None and time.monotonic() < deadline:
                time.sleep(0.05)
        kill_group(process)

    def kill(self, name):
        """SIGKILL the component's whole process group, as a container runtime kills a container.

        gunicorn's and granian's worker processes would otherwise outlive their SIGKILLed parent,
        still serving on its port. The process backend starts tools in sessions of their own, so
        killing a worker leaves its tools running."""
        process = self.processes.pop(name, None)
        if process is not None:
            kill_group(process)

    def exited(self):
        """The components that have ended, name → exit code (-N: killed by signal N); not reaped,
        so that stop() or kill() can still reach what is left of their process groups."""
        codes = {name: exit_code(process) for name, process in self.processes.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def stop_all(self):
        order = ("nginx", "worker", "web", "auth")
        for name in sorted(self.processes, key=lambda name: order.index(role_of(name))):
            self.stop(name)

    def log_path(self, name):
        return self.log_dir / f"{name}.log"

    def wait_ready(self, url, host=None, timeout=30, stopping=None):
        """Wait until url answers 200; return early once stopping (a StopRequest) is set."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stopping and stopping.is_set()):
            exited = self.exited()
            if exited:
                name, code = next(iter(exited.items()))
                raise RuntimeError(f"{name} exited with code {code}; see {self.log_path(name)}")
            try:
                request = urllib.request.Request(url, headers={"Host": host} if host else {})
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Berth did not answer at {url} within {timeout} s")


def exit_code(process):
    """A child's exit code (-N: killed by signal N) once it has ended, else None. It is not
    reaped: until wait(), its pid, and so the id of its process group, cannot be reused."""
    if process.returncode is not None:
        return process.returncode
    status = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if status is None:
        return None
    return status.si_status if status.si_code == os.CLD_EXITED else -status.si_status


def kill_group(process):
    """SIGKILL what is left of the process group process leads (start_process made it lead one),
    then reap process."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


class Supervisor:
    """Restarts a stack's components when they exit, as `berth run` wants (not the tests).

    A component is restarted after a delay that doubles with each exit, from FIRST_DELAY up to
    MAX_DELAY, and is back to FIRST_DELAY once it has stayed up for STEADY seconds. Before it
    restarts, what is left of its process group is killed: worker processes that outlived their
    server would still hold its port.
    """

    FIRST_DELAY, MAX_DELAY, STEADY = 1, 30, 60

    def __init__(self, stack, say=functools.partial(print, flush=True)):
        self.stack = stack
        self.say = say
        now = time.monotonic()
        self.started = {name: now for name in stack.processes}
        self.delays = {}   # name → the delay before its next restart, when it exits again
        self.due = {}      # name → when it restarts (time.monotonic())

    def check(self):
        """Notice the components that have ended, and restart those whose delay has passed."""
        now = time.monotonic()
        for name, code in self.stack.exited().items():
            self.stack.kill(name)
            if now - self.started[name] >= self.STEADY:
                self.delays.pop(name, None)
            delay = self.delays.get(name, self.FIRST_DELAY)
            self.delays[name] = min(2 * delay, self.MAX_DELAY)
            self.due[name] = now + delay
            self.say(f"{name} exited with code {code}; restarting in {delay} s "
                     f"(see {self.stack.log_path(name)})")
        for name, when in list(self.due.items()):
            if now >= when:
                del self.due[name]
                self.started[name] = now
                self.stack.start(name)


def reset_metrics_dir(env):
    """Empty BERTH_METRICS_DIR before the stack starts: a previous run's files would be summed too."""
    from berth.settings import metrics_dir

    path = Path(metrics_dir(env))
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def prepare_database(config, admin_email=None, admin_password=None):
    """Migrate, make sure the admin exists, and load the catalogue named by BERTH_CATALOGUE."""
    from flask_migrate import upgrade
    from sqlalchemy import func, select

    from berth.catalogue import CatalogueError, load_catalogue
    from berth.extensions import db
    from berth.models import User

    upgrade(directory=str(ROOT / "migrations"))
    if admin_email:
        user = db.session.execute(
            select(User).where(func.lower(User.email) == admin_email.lower())
        ).scalar_one_or_none()
        if user is None:
            user = User(email=admin_email.lower(), name="Administrator", is_admin=True)
            db.session.add(user)
        user.set_password(admin_password)
        db.session.commit()
    if config.get("BERTH_CATALOGUE"):
        try:
            created, updated = load_catalogue(Path(config["BERTH_CATALOGUE"]).read_text())
        except (OSError, CatalogueError) as error:
            raise SystemExit(f"BERTH_CATALOGUE={config['BERTH_CATALOGUE']}: {error}") from None
        print(f"Catalogue {config['BERTH_CATALOGUE']}: {created} new, {updated} changed.")


class StopRequest:
    """Set by a signal handler, read by the loops it ends. A plain flag: a threading.Event's
    lock could be held by the very code the handler interrupts."""

    def __init__(self):
        self.requested = False

    def set(self, *_signal_and_frame):
        self.requested = True

    def is_set(self):
        return self.requested


def run_local(config):
    """`berth run`: prepare the database, start the stack, keep it running until Ctrl-C or
    SIGTERM, then stop it and the process-backend tools it started."""
    data_dir = Path(config["BERTH_DATA_DIR"])
    admin_email = os.environ.get("BERTH_ADMIN_EMAIL", "admin@berth.localhost")
    admin_password = os.environ.get("BERTH_ADMIN_PASSWORD") or _remembered_password(data_dir)
    prepare_database(config, admin_email, admin_password)

    env = {**os.environ, "BERTH_DATA_DIR": str(data_dir),
           "BERTH_AUTH_PORT": str(config["BERTH_AUTH_PORT"]),
           "BERTH_WEB_PORT": str(config["BERTH_WEB_PORT"])}
    # Should `berth run` itself be killed, its components stop too (their tools keep running).
    stack = Stack(env, data_dir, die_with_parent=True)
    # Ctrl-C and SIGTERM only ask to stop: the stop happens in one place below, never halfway
    # through starting a process (which could then be left behind).
    stopping = StopRequest()
    signal.signal(signal.SIGINT, stopping.set)
    signal.signal(signal.SIGTERM, stopping.set)
    try:
        _start_and_supervise(stack, config, stopping, admin_email, admin_password)
    finally:
        print("\nStopping Berth and the tools it started…", flush=True)
        stack.stop_all()
        stop_local_tools(config)


def _start_and_supervise(stack, config, stopping, admin_email, admin_password):
    """Start the stack, then restart its components as they exit, until stopping is set."""
    from berth.hosts import public_url

    try:
        stack.start_all(config, stopping)
    except RuntimeError as error:  # a component that fails at once would only fail again
        raise SystemExit(str(error)) from None
    if stopping.is_set():
        return
    print(f"\nBerth is running at {public_url(config, config['BERTH_DOMAIN'])}\n"
          f"  sign in as {admin_email} with password {admin_password}\n"
          f"  logs: {stack.log_dir}\n"
          f"Press Ctrl-C to stop.\n", flush=True)
    supervisor = Supervisor(stack)
    while not stopping.is_set():
        supervisor.check()
        time.sleep(0.2)


def _remembered_password(data_dir):
    path = Path(data_dir) / "admin_password"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(password)
    path.chmod(0o600)
    return password


def stop_local_tools(config, backends=("process",)):
    """When `berth run` stops, end the process-backend tools too: on one machine, "stop" means
    everything."""
    from berth.launch.state_machine import begin_stop, stop_instance
    from berth.models import State, ToolInstance
    from berth.extensions import db

    live = db.session.execute(
        db.select(ToolInstance).where(ToolInstance.state.in_(State.LIVE),
                                      ToolInstance.backend.in_(backends))
    ).scalars().all()
    for instance in live:
        begin_stop(instance, actor="cli")
        stop_instance(instance.id)

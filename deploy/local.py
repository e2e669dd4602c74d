"""Run the whole of Berth on this machine: nginx, auth, web and worker as child processes.

`berth run` (and so `make run`) uses run_local, which restarts a component that dies
(Supervisor). The tests and benchmarks use Stack directly, to start, kill and restart single
components, or several replicas of one (`web-1`, `web-2`): a component they kill stays dead.
"""
import ctypes
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
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


def start_process(command, log_path, env=None, cwd=ROOT, die_with_parent=False, account=None,
                  umask=0o077):
    """A child process in a session of its own (its whole group can be killed), by default in
    the checkout, with its output appended to log_path. With die_with_parent, the kernel sends it
    SIGTERM when this process ends, even by SIGKILL (Linux only; start it from the main thread:
    the kernel watches the thread that started it). With account (a pwd entry), it runs as that
    user and its group, with no other groups.

    The data directory is open to tools' users, for their homes: by default (umask) what Berth's
    processes write in it is theirs alone."""
    as_user = {}
    if account is not None:
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        env = {**(env or os.environ), "HOME": account.pw_dir, "USER": account.pw_name,
               "LOGNAME": account.pw_name}
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_terminate_on_parent_death if die_with_parent else None,
                                umask=umask, **as_user)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _terminate_on_parent_death():
    """Run in the child, between fork and exec: ask for SIGTERM when the parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


ROLES = ("auth", "web", "worker", "nginx")
# Under root, these run as BERTH_SERVICE_USER: they answer every request and need no privilege.
# The worker keeps root to give each tool a user and a network of its own; nginx's master keeps
# it to bind ports, its workers run as BERTH_NGINX_USER.
UNPRIVILEGED_ROLES = ("auth", "web")


def service_account(name):
    """The pwd entry of the user Berth's auth service and web app run as when started by root,
    created as a system user (no home, no shell) when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                                capture_output=True, text=True)
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise SystemExit(f"BERTH_SERVICE_USER={name}: no such user, and `useradd` could not "
                             f"create it: {result.stderr.strip() or result.returncode}")
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise SystemExit(f"BERTH_SERVICE_USER={name} is root or in root's group: name a user of its own")
    return entry


_ABLE_TO_RUN = set()


def check_account_runs_python(account, env):
    """Refuse, in one line, a service user that cannot run Berth's Python: it would only fail
    later, in a log, one component at a time."""
    if (account.pw_uid, sys.executable) in _ABLE_TO_RUN:
        return
    try:
        result = subprocess.run([sys.executable, "-c", "import auth_service, webapp"], cwd=ROOT,
                                env={**env, "HOME": account.pw_dir}, user=account.pw_uid, group=account.pw_gid,
                                extra_groups=[], capture_output=True, text=True)
        returncode, stderr = result.returncode, result.stderr
    except OSError as error:  # the interpreter itself is out of its reach
        returncode, stderr = None, error.strerror or str(error)
    if returncode != 0:
        reason = (stderr.strip().splitlines() or [f"exit code {returncode}"])[-1]
        raise SystemExit(f"BERTH_SERVICE_USER={account.pw_name} cannot run Berth's Python "
                         f"({sys.executable}, from {ROOT}): {reason}. Build the virtualenv on a Python "
                         "every user may run (`make run` uses /usr/bin/python3), in a folder they may "
                         "read.")
    _ABLE_TO_RUN.add((account.pw_uid, sys.executable))


def share_state_with(account, env):
    """Hand the service user what the auth service and the web app write: the SQLite database's
    folder (inside the data directory, or the database's own files elsewhere) and the metrics
    folder. The worker, which stays root, writes there too: SQLite gives the journals it creates
    as root to the database's owner, and the metrics folder's group is the service user's (setgid),
    so that the web app's /metrics can read the worker's counters (the worker's umask is 027)."""
    from sqlalchemy.engine import make_url

    from berth.settings import metrics_dir, read_setting, sqlite_folder

    data_dir = Path(read_setting("BERTH_DATA_DIR", env)).resolve()
    owned = []
    url = make_url(read_setting("BERTH_DATABASE_URL", env))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        database = Path(url.database).resolve()
        if database.parent == data_dir / "database":
            database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if database.parent == data_dir / "database" or data_dir in database.parent.parents:
            owned.append(database.parent)
        owned += [database.parent / f"{database.name}{suffix}" for suffix in ("", "-journal", "-wal", "-shm")]
    if not read_setting("BERTH_REDIS_URL", env):
        queue_folder = Path(sqlite_folder(data_dir))
        queue_folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # An empty file is an empty SQLite database. Made here, it is the service user's before
        # the worker, as root, opens it first.
        (queue_folder / "queue.db").touch(mode=0o600)
        owned += [queue_folder] + [queue_folder / f"queue.db{suffix}" for suffix in ("", "-journal", "-wal", "-shm")]
    if url.get_backend_name() == "sqlite" and owned and owned[0] != database.parent:
        folder = database.parent.stat()
        if folder.st_uid != account.pw_uid and not folder.st_mode & 0o002:
            raise SystemExit(f"BERTH_DATABASE_URL: the auth service and the web app run as "
                             f"{account.pw_name}, and SQLite writes its journal beside {database}, in a "
                             f"folder they cannot write. Give the database a folder of its own, as the "
                             f"default does (<BERTH_DATA_DIR>/database/berth.db).")
    for path in owned:
        if path.is_dir() and not path.is_symlink():
            os.chown(path, account.pw_uid, account.pw_gid)
            os.chmod(path, 0o700)
        elif path.exists() and not path.is_symlink():
            os.chown(path, account.pw_uid, account.pw_gid)
            os.chmod(path, 0o600)
    metrics = Path(metrics_dir(env))
    metrics.mkdir(parents=True, exist_ok=True)
    os.chown(metrics, account.pw_uid, account.pw_gid)
    os.chmod(metrics, 0o2750)


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
    after 10 s it kills it. deploy/granian_preloaded.py imports the app's modules once, before
    granian forks its workers, so that they share them."""
    return [sys.executable, "-m", "deploy.granian_preloaded", "--interface", "wsgi", "--host", host, "--port", str(port),
            "--workers", str(workers), "--blocking-threads", str(threads), "--workers-kill-timeout", "10",
            "--no-ws", "--log-level", "warning", "--log-config", str(ROOT / "deploy" / "granian-logging.json"),
            "--factory", app]


def auth_server_command(env, host, port, app="auth_service:create_server_app"):
    """The auth service's server: granian (the default) or gunicorn gthread.

    BERTH_AUTH_SERVER picks; see docs/decisions/0008-auth-server.md for the measurements. app is
    the WSGI factory granian serves (the benchmarks give it a no-op one, to measure the hop alone).
    """
    if env.get("BERTH_AUTH_SERVER", "granian") == "granian":
        return granian_command(host, port, app, env.get("BERTH_AUTH_WORKERS", "2"),
                               env.get("BERTH_AUTH_THREADS", "4"))
    return [str(BIN / "gunicorn"), "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
            "--bind", f"{host}:{port}", "auth_service:create_server_app()"]


def web_server_command(env, host, port):
    """The web app's server: granian, BERTH_WEB_WORKERS processes of BERTH_WEB_THREADS threads."""
    return granian_command(host, port, "webapp:create_server_app", env.get("BERTH_WEB_WORKERS", "1"),
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
        self.account = None
        if os.geteuid() == 0:
            from berth.settings import read_setting

            self.account = service_account(self.env.get("BERTH_SERVICE_USER") or "berth")
            # Generated secrets (and the deployment label) are files only root reads: the service
            # user gets them from here.
            for name in ("BERTH_SECRET_KEY", "BERTH_PROXY_SECRET", "BERTH_DEPLOYMENT"):
                self.env[name] = read_setting(name, self.env)
            share_state_with(self.account, self.env)
            check_account_runs_python(self.account, self.env)

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
            # Huey on SQLite: the worker wakes when a task is queued (berth/launch/sqlite_queue.py).
            # Where it cannot watch the queue, it polls: every 10 ms after work, backing off to 50 ms.
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
        env = {**self.env, **(extra_env or {})}
        account, umask = None, 0o077
        if self.account is not None and role_of(name) in UNPRIVILEGED_ROLES:
            share_state_with(self.account, env)  # the database may have been created since
            account = self.account
        elif self.account is not None and role_of(name) == "worker":
            umask = 0o027  # its counters, readable by the service user's group (share_state_with)
        self.processes[name] = start_process(self.command(name), self.log_path(name), env=env,
                                             die_with_parent=self.die_with_parent, account=account,
                                             umask=umask)
        return self.processes[name]

    def start_all(self, config, stopping=None, bind="127.0.0.1"):
        """Render nginx's configuration (listening on bind and BERTH_HTTP_PORT), start every
        component, and wait until this stack's nginx answers (or stopping, a StopRequest, is set)."""
        from deploy.clashes import listen_address

        port = config["BERTH_HTTP_PORT"]
        self.render_nginx(config, listen=listen_address(bind, port))
        for name in ROLES:
            self.start(name)
        scheme = "https" if config["BERTH_TLS_CERTIFICATE"] else "http"
        reachable_at = "127.0.0.1" if bind in ("0.0.0.0", "::") else bind
        self.wait_ready(f"{scheme}://{listen_address(reachable_at, port)}/healthz", host=config["BERTH_DOMAIN"],
                        stopping=stopping, listener="nginx")

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

    def _listens(self, name, url):
        """Whether the component name (its process group) holds the listening socket of url's port."""
        from deploy.clashes import listening_pids

        process = self.processes.get(name)
        port = urllib.parse.urlsplit(url).port
        return process is not None and any(_group_of(pid) == process.pid for pid in listening_pids(port))

    def log_path(self, name):
        return self.log_dir / f"{name}.log"

    def wait_ready(self, url, host=None, timeout=30, stopping=None, listener=None):
        """Wait until url answers 200, from the component named listener if given (not another
        program on its port); return early once stopping (a StopRequest) is set."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stopping and stopping.is_set()):
            exited = self.exited()
            if exited:
                name, code = next(iter(exited.items()))
                raise RuntimeError(f"{name} exited with code {code}; see {self.log_path(name)}")
            try:
                if _answers_200(url, host) and (listener is None or self._listens(listener, url)):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Berth did not answer at {url} within {timeout} s")


def _group_of(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _answers_200(url, host=None):
    """Whether url answers 200. An https URL on this machine is asked with host as the TLS server
    name (nginx serves no certificate for an address), its certificate unchecked: only whether
    nginx is up matters here."""
    if not url.startswith("https://"):
        request = urllib.request.Request(url, headers={"Host": host} if host else {})
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((parts.hostname, parts.port or 443), timeout=2) as raw:
        with context.wrap_socket(raw, server_hostname=host or parts.hostname) as tls:
            tls.sendall(f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host or parts.netloc}\r\n"
                        "Connection: close\r\n\r\n".encode())
            return tls.recv(64).startswith(b"HTTP/1.1 200 ")


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

    def __init__(self, stack, say=None):
        self.stack = stack
        self.say = say or say_line
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


def say_line(message):
    """One of `berth run`'s own lines: as written with BERTH_LOG_FORMAT=text, else a JSON log line."""
    from berth.settings import read_setting

    if read_setting("BERTH_LOG_FORMAT") == "json":
        import logging

        from berth.logs import configure

        if not logging.getLogger().handlers:
            configure("berth", stream=sys.stdout)
        logging.getLogger("berth.run").info(message.strip())
    else:
        print(message, flush=True)


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

    logging.disable(logging.INFO)  # Alembic's line per migration: `berth db upgrade` shows them
    try:
        upgrade(directory=str(ROOT / "migrations"))
    finally:
        logging.disable(logging.NOTSET)
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
        say_line(f"Catalogue {config['BERTH_CATALOGUE']}: {created} new, {updated} changed.")


class StopRequest:
    """Set by a signal handler, read by the loops it ends. A plain flag: a threading.Event's
    lock could be held by the very code the handler interrupts."""

    def __init__(self):
        self.requested = False

    def set(self, *_signal_and_frame):
        self.requested = True

    def is_set(self):
        return self.requested


DEMO_CATALOGUE = ROOT / "deploy" / "demo-catalogue.yml"
TOOLS_PYTHON = ROOT / ".venv-tools" / "bin" / "python"  # built by `make run`, with JupyterLab


def run_local(config):
    """`berth run`: refuse a clash with another Berth, prepare the database, start the stack,
    keep it running until Ctrl-C or SIGTERM, then stop it and the process-backend tools it started."""
    from berth.settings import read_setting
    from deploy.checks import database_problems, redis_problems
    from deploy.clashes import Clash, check_ports_free, lock_data_dir

    data_dir = Path(config["BERTH_DATA_DIR"])
    bind = read_setting("BERTH_HTTP_BIND")
    try:
        lock = lock_data_dir(data_dir)  # held until this process ends
        check_ports_free(_ports_needed(config, bind))
    except Clash as error:
        raise SystemExit(f"Error: {error}") from None
    if not os.environ.get("BERTH_DATABASE_URL"):
        move_legacy_sqlite_files(data_dir)  # before anything opens (and so creates) the new one
    # Migrations wait on the database without a bound: first make sure that it answers at all.
    problems = database_problems(config, schema=False) + redis_problems(config["BERTH_REDIS_URL"])
    if problems:
        raise SystemExit(f"Error: {problems[0]}")
    config = {**config, "BERTH_CATALOGUE": config["BERTH_CATALOGUE"] or str(DEMO_CATALOGUE)}
    admin_email = os.environ.get("BERTH_ADMIN_EMAIL", "admin@berth.localhost")
    admin_password = os.environ.get("BERTH_ADMIN_PASSWORD") or _remembered_password(data_dir)
    prepare_database(config, admin_email, admin_password)

    env = {**os.environ, "BERTH_DATA_DIR": str(data_dir),
           "BERTH_AUTH_PORT": str(config["BERTH_AUTH_PORT"]),
           "BERTH_WEB_PORT": str(config["BERTH_WEB_PORT"])}
    if not os.environ.get("BERTH_TOOL_PYTHON", "").strip() and TOOLS_PYTHON.exists():
        env["BERTH_TOOL_PYTHON"] = str(TOOLS_PYTHON)
    # Should `berth run` itself be killed, its components stop too (their tools keep running).
    stack = Stack(env, data_dir, die_with_parent=True)
    # Ctrl-C and SIGTERM only ask to stop: the stop happens in one place below, never halfway
    # through starting a process (which could then be left behind).
    stopping = StopRequest()
    signal.signal(signal.SIGINT, stopping.set)
    signal.signal(signal.SIGTERM, stopping.set)
    try:
        _start_and_supervise(stack, config, stopping, admin_email, admin_password, bind)
    finally:
        say_line("\nStopping Berth and the tools it started…")
        stack.stop_all()
        stop_local_tools(config)
        lock.close()


def move_legacy_sqlite_files(data_dir):
    """Earlier versions kept the SQLite database and queue in the data directory itself: move them
    to its `database` folder, where the default now looks, before anything opens them."""
    from berth.settings import sqlite_folder

    folder = Path(sqlite_folder(data_dir))
    for name in ("berth.db", "queue.db"):
        old, new = Path(data_dir) / name, folder / name
        if old.is_file() and not old.is_symlink() and not new.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            for suffix in ("", "-journal", "-wal", "-shm"):
                if Path(f"{old}{suffix}").exists():
                    os.replace(f"{old}{suffix}", f"{new}{suffix}")
            say_line(f"Moved {old} to {new}.")


def _ports_needed(config, bind):
    """(setting, host, port) of each port `berth run` listens on."""
    ports = [("BERTH_HTTP_PORT", bind, config["BERTH_HTTP_PORT"]),
             ("BERTH_AUTH_PORT", "127.0.0.1", config["BERTH_AUTH_PORT"]),
             ("BERTH_WEB_PORT", "127.0.0.1", config["BERTH_WEB_PORT"])]
    if config.get("BERTH_WORKER_METRICS_PORT"):
        ports.append(("BERTH_WORKER_METRICS_PORT", config["BERTH_WORKER_METRICS_HOST"],
                      config["BERTH_WORKER_METRICS_PORT"]))
    return ports


def _start_and_supervise(stack, config, stopping, admin_email, admin_password, bind):
    """Start the stack, then restart its components as they exit, until stopping is set."""
    from berth.hosts import public_url

    try:
        stack.start_all(config, stopping, bind=bind)
    except RuntimeError as error:  # a component that fails at once would only fail again
        raise SystemExit(str(error)) from None
    if stopping.is_set():
        return
    say_line(f"\nBerth is running at {public_url(config, config['BERTH_DOMAIN'])}\n"
             f"  sign in as {admin_email} with password {admin_password}\n"
             f"  logs: {stack.log_dir}\n"
             f"Press Ctrl-C to stop.\n")
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

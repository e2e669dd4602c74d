"""One whole Berth on loopback, for the tests and the benchmarks: nginx, auth, web and worker as
deploy.local.Stack starts them for `berth run`, plus an app in this process to look at the
database and to act as `berth run` does.

    env = stack_env(data_dir, "test-pg-1234", catalogue, database_url=..., redis_url=...)
    berth = BerthStack(env)
    berth.start()
    user = berth.create_user()
    browser = berth.login(user)                     # a requests.Session, signed in
    berth.open_tool(browser, "echo", user)          # launched as a browser does; the tool's answer
    berth.stop()                                    # Berth's processes, then the tools it started

*.localhost names must resolve to loopback in this process: wrap the use in loopback_names().
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from unittest import mock

from deploy.local import Stack, prepare_database, stop_local_tools
from tests.actions import signed_in
from tests.services import free_port

DOMAIN = "berth.localhost"
TOOL_COOKIE = "berth_session_tool"  # a tool host's own cookie, set by the sign-in hand-off
TOOL_COOKIES = (TOOL_COOKIE, f"__Host-{TOOL_COOKIE}")  # its name over HTTP, and over HTTPS


def loopback_names():
    """Patch this process's resolver so that localhost and *.localhost are 127.0.0.1, as browsers
    and curl have them; Python's resolver here does not. A context manager."""
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    return mock.patch("socket.getaddrinfo", resolve)


def stack_env(data_dir, deployment, catalogue, database_url=None, redis_url=None, port_base=21000,
              extra_env=None):
    """The environment of one Berth: this process's, with free ports, its own data directory and
    tool port range, and its database (SQLite in data_dir unless database_url) and queue (Huey on
    SQLite unless redis_url). extra_env adds or overrides BERTH_* settings."""
    low = port_base + (free_port() % 40) * 100  # a tool port range of its own for each stack
    env = {
        **os.environ,
        "BERTH_DATA_DIR": str(data_dir),
        "BERTH_DOMAIN": DOMAIN,
        "BERTH_HTTP_PORT": str(free_port()),
        "BERTH_AUTH_PORT": str(free_port()),
        "BERTH_WEB_PORT": str(free_port()),
        "BERTH_DEPLOYMENT": deployment,
        "BERTH_PORT_RANGE": f"{low}-{low + 99}",
        "BERTH_CATALOGUE": str(catalogue),
        # The tests sign in hundreds of times a minute from 127.0.0.1, far past what the door
        # lets one address do without signing in. The door's limits are tested at their
        # production values from other loopback addresses (tests/security/test_slow_clients.py).
        "BERTH_DOOR_EXEMPT": "127.0.0.1/32",
        **(extra_env or {}),
    }
    for name, value in (("BERTH_DATABASE_URL", database_url), ("BERTH_REDIS_URL", redis_url)):
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    return env


class BerthStack:
    """One running Berth: nginx, auth, web and worker (`processes`, a deploy.local.Stack), plus an
    in-process app (`app`) on the same database."""

    def __init__(self, env):
        from webapp import create_app

        self.env = env
        self.data_dir = Path(env["BERTH_DATA_DIR"])
        self.port = int(env["BERTH_HTTP_PORT"])
        self.scheme = env.get("BERTH_SCHEME") or "http"
        self.base_url = f"{self.scheme}://{DOMAIN}:{self.port}"
        # Over HTTPS, the test CA that signed nginx's certificate (tests/certificates.py).
        self.verify = env.get("BERTH_TEST_CA") or True
        with mock.patch.dict(os.environ, env):
            self.app = create_app()
        self.config = self.app.config
        self.processes = Stack(env, self.data_dir)
        self._users = 0

    # -- processes ------------------------------------------------------------------------
    def prepare_database(self):
        """Migrate and load the catalogue, as `berth run` does before it starts anything."""
        with self.app.app_context():
            prepare_database(self.config)

    def start(self):
        self.prepare_database()
        self.processes.start_all(self.config)
        # nginx answering means the web app is up; the auth service may still be starting.
        self.processes.wait_ready(f"http://127.0.0.1:{self.env['BERTH_AUTH_PORT']}/auth/healthz")

    def wait_ready(self):
        """Wait until nginx and the web app behind it answer (after a component's restart)."""
        self.processes.wait_ready(f"{self.scheme}://127.0.0.1:{self.port}/healthz", host=DOMAIN)

    def stop(self):
        """Stop Berth's processes, then the tools it started, as `berth run` does on Ctrl-C."""
        from berth.extensions import db

        self.processes.stop_all()
        with self.app.app_context():
            try:
                stop_local_tools(self.config, backends=self.config["BERTH_BACKENDS"])
            finally:
                db.session.remove()  # give its connection back first, or dispose() cannot close it
                db.engine.dispose()
        # The tools' homes and team folders go; the rest stays, as for any stack: this process
        # may still be counting its metrics in the data directory's metrics folder.
        shutil.rmtree(self.data_dir / "homes", ignore_errors=True)
        shutil.rmtree(self.data_dir / "teams", ignore_errors=True)

    def stop_instance(self, instance_id, actor="test"):
        """Stop one tool now, from this process, as `berth run` does on Ctrl-C (no queue involved)."""
        from berth.extensions import db
        from berth.launch.state_machine import begin_stop, stop_instance
        from berth.models import ToolInstance

        with self.app.app_context():
            begin_stop(db.session.get(ToolInstance, instance_id), actor=actor)
            stop_instance(instance_id)
            db.session.remove()

    def logged_errors(self, limit=4000):
        """The last traceback (or else error lines) each of this stack's processes logged, for a
        failing test's report: the processes' logs are otherwise gone with the CI machine."""
        sections = []
        for path in sorted(self.processes.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()
            starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
            if starts:
                excerpt = lines[max(0, starts[-1] - 2):starts[-1] + 60]
            else:
                excerpt = [line for line in lines if " ERROR " in line][-10:]
            if excerpt:
                sections.append(f"--- {path.name}\n" + "\n".join(excerpt)[-limit:])
        return "\n".join(sections)

    # -- data -----------------------------------------------------------------------------
    def create_user(self, email=None, password="correct horse battery", is_admin=False):
        from berth.extensions import db
        from berth.models import User

        self._users += 1
        email = email or f"user{self._users}-{os.urandom(3).hex()}@example.org"
        with self.app.app_context():
            user = User(email=email, name=email.split("@")[0], is_admin=is_admin)
            user.set_password(password)
            db.session.add(user)
            db.session.commit()
            return {"id": user.id, "email": email, "password": password, "host_key": user.host_key,
                    "address_name": user.address_name}

    def query(self, statement, **params):
        from berth.extensions import db

        with self.app.app_context():
            result = db.session.execute(db.text(statement), params)
            rows = result.mappings().all() if result.returns_rows else None
            db.session.commit()
            return rows

    def instances(self, host=None):
        where = "WHERE host = :host" if host else ""
        return self.query(f"SELECT * FROM tool_instances {where} ORDER BY id", host=host)

    # -- HTTP -----------------------------------------------------------------------------
    def tool_host(self, slug, user):
        """The tool's host name for user: <slug>--<address name>.berth.localhost."""
        from berth.hosts import tool_host

        return tool_host(slug, user["address_name"], self.env.get("BERTH_TOOLS_DOMAIN") or DOMAIN)

    def legacy_tool_host(self, slug, user):
        """The tool's older host name for user, still served: <slug>-<host key>.berth.localhost."""
        from berth.hosts import legacy_tool_host

        return legacy_tool_host(slug, user["host_key"], self.env.get("BERTH_TOOLS_DOMAIN") or DOMAIN)

    def tool_url(self, slug, user, path="/"):
        return f"{self.scheme}://{self.tool_host(slug, user)}:{self.port}{path}"

    def login(self, user):
        """A requests.Session signed in as user, through nginx and the login form."""
        return signed_in(self.base_url, user["email"], user["password"], verify=self.verify)

    def hand_off(self, browser, slug, user):
        """Sign browser in on the tool host through the sign-in hand-off, as its first navigation
        there does, without opening the tool; the tool host's status answer (403 for a user who
        may not open the tool: the cookie only says who they are)."""
        host = self.tool_host(slug, user)
        answer = browser.get(f"{self.base_url}/auth/handoff", params={"host": host, "next": "/__berth/status"},
                             timeout=10)
        if not [cookie for cookie in browser.cookies if cookie.name in TOOL_COOKIES and cookie.domain == host]:
            raise RuntimeError(f"the hand-off to {host} answered {answer.status_code}: {answer.text[:300]}")
        return answer

    def navigate(self, browser, url, **headers):
        """A browser's top-level navigation to url, its answer not followed. On a tool host that
        the browser has no cookie for yet, the sign-in hand-off runs first, as a browser follows it."""
        headers = {"Sec-Fetch-Mode": "navigate", **headers}
        answer = browser.get(url, headers=headers, allow_redirects=False, timeout=10)
        if answer.status_code == 302 and answer.headers["Location"].startswith(f"{self.base_url}/auth/handoff?"):
            code = browser.get(answer.headers["Location"], allow_redirects=False, timeout=10)
            browser.get(code.headers["Location"], allow_redirects=False, timeout=10)
            answer = browser.get(url, headers=headers, allow_redirects=False, timeout=10)
        return answer

    @staticmethod
    def tool_cookie(browser, host):
        """The cookie that signs browser in on this tool host (set by the sign-in hand-off)."""
        return next(cookie.value for cookie in browser.cookies
                    if cookie.name in TOOL_COOKIES and cookie.domain == host)

    def open_tool(self, browser, slug, user, path="/", timeout=20):
        """Navigate to a tool as a browser does, wait until the tool itself answers; return that response."""
        url = self.tool_url(slug, user, path)
        first = browser.get(url, headers={"Sec-Fetch-Mode": "navigate"}, timeout=10)
        if first.status_code not in (200, 202):
            raise RuntimeError(f"the first visit to {slug} answered {first.status_code}: {first.text[:300]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = browser.get(self.tool_url(slug, user, "/__berth/status"),
                                 headers={"X-Berth-No-Launch": "1", "Accept": "application/json"},
                                 timeout=10).json()
            if status["state"] == "RUNNING":
                return browser.get(url, timeout=10)
            if status["state"] not in ("QUEUED", "SPAWNING"):
                raise RuntimeError(f"{slug} did not start: {status}")
            time.sleep(0.05)
        raise RuntimeError(f"{slug} did not start within {timeout} s")

    def until_auth_cache_ends(self, ask, expected):
        """Call ask() (a request's status) until it answers expected, and return that answer.

        After a revocation, nginx's auth cache may still serve a running tool for up to
        BERTH_AUTH_CACHE_SECONDS (docs/decisions/0021-one-second-auth-cache.md), and never
        longer: a request sent after that must get the new answer."""
        deadline = time.monotonic() + self.config["BERTH_AUTH_CACHE_SECONDS"]
        while True:
            sent = time.monotonic()
            answer = ask()
            if answer == expected:
                return answer
            assert sent <= deadline, f"answered {answer}, not {expected}, past the auth cache's lifetime"
            time.sleep(0.05)

    def until_stopped_tool_is_let_go(self, browser, host):
        """After a tool on host stopped: wait until nginx's auth cache no longer sends requests to
        its address, as it may for up to BERTH_AUTH_CACHE_SECONDS, and its address tells it is
        not running: 503 to a request that is not a navigation (which launches nothing), without
        the Retry-After: 1 of the answers within that second (Berth's not-answering page)."""
        url = f"{self.scheme}://{host}:{self.port}/"

        def ask():
            answer = browser.get(url, headers={"Accept": "application/json"}, timeout=10)
            return "within the cached second" if answer.headers.get("Retry-After") == "1" else answer.status_code

        return self.until_auth_cache_ends(ask, 503)

    # -- tools beside it --------------------------------------------------------------------
    def docker(self):
        """A Docker client for the stack's engine, to use in a with block."""
        import docker

        return closing(docker.DockerClient(base_url=self.env["BERTH_DOCKER_URL"], timeout=60))

    def berth(self, *args):
        """Run the `berth` command line against this stack."""
        return subprocess.run([str(Path(sys.executable).parent / "berth"), *args], env=self.env,
                              capture_output=True, text=True, timeout=60)

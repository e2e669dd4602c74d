"""Fixtures: real PostgreSQL, Redis and nginx, and Berth's own processes, on loopback.

`berth_stack` is parametrised: every integration test runs once on PostgreSQL with Redis
(production's components) and once on SQLite with Huey on SQLite (the embedded default).
"""
import os
import socket
import tempfile
from pathlib import Path
from unittest import mock

import pytest

from tests import images
from tests.actions import signed_in
from tests.services import Dockerd, Postgres, Redis, free_port

# In-process imports of webapp must not write into the checkout (secrets, the Huey file).
os.environ.setdefault("BERTH_DATA_DIR", tempfile.mkdtemp(prefix="berth-test-process-"))

from deploy.local import Stack  # noqa: E402
from webapp import create_app  # noqa: E402
from berth.extensions import db  # noqa: E402
from berth.hosts import tool_host  # noqa: E402
from berth.models import User  # noqa: E402

DOMAIN = "berth.localhost"
TEST_CATALOGUE = Path(__file__).parent / "catalogue.yml"
_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    # Python's resolver here does not map *.localhost to loopback as browsers and curl do.
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def localhost_resolves():
    with mock.patch("socket.getaddrinfo", _getaddrinfo):
        yield


@pytest.fixture(scope="session")
def postgres():
    server = Postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    server = Redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dockerd():
    """A Docker engine of the tests' own, with the test images built offline."""
    engine = Dockerd()
    client = engine.client()
    images.build_busybox(client)
    images.build_echo(client)
    client.close()
    yield engine
    engine.stop()


class BerthStack:
    """One running Berth: nginx, auth, web and worker, plus an in-process app to look at the database."""

    def __init__(self, env, data_dir, label):
        self.env = env
        self.label = label
        self.data_dir = Path(data_dir)
        self.port = int(env["BERTH_HTTP_PORT"])
        self.base_url = f"http://{DOMAIN}:{self.port}"
        with mock.patch.dict(os.environ, env):
            self.app = create_app()
        self.processes = Stack(env, data_dir)
        self._users = 0

    # -- processes ------------------------------------------------------------------------
    def start(self):
        with self.app.app_context():
            from deploy.local import prepare_database

            prepare_database(self.app.config)
        self.processes.render_nginx(self.app.config)
        for name in ("auth", "web", "worker", "nginx"):
            self.processes.start(name)
        self.processes.wait_ready(f"http://127.0.0.1:{self.port}/healthz", host=DOMAIN)

    def stop(self):
        self.processes.stop_all()
        with self.app.app_context():
            from deploy.local import stop_local_tools

            stop_local_tools(self.app.config, backends=("process", "docker"))
            db.session.remove()  # give its connection back first, or dispose() cannot close it
            db.engine.dispose()

    # -- data -----------------------------------------------------------------------------
    def create_user(self, email=None, password="correct horse battery", is_admin=False):
        self._users += 1
        email = email or f"user{self._users}-{os.urandom(3).hex()}@example.org"
        with self.app.app_context():
            user = User(email=email, name=email.split("@")[0], is_admin=is_admin)
            user.set_password(password)
            db.session.add(user)
            db.session.commit()
            return {"id": user.id, "email": email, "password": password, "host_key": user.host_key}

    def query(self, statement, **params):
        with self.app.app_context():
            result = db.session.execute(db.text(statement), params)
            rows = result.mappings().all() if result.returns_rows else None
            db.session.commit()
            return rows

    # -- HTTP -----------------------------------------------------------------------------
    def tool_url(self, slug, user, path="/"):
        return f"http://{tool_host(slug, user['host_key'], DOMAIN)}:{self.port}{path}"

    def login(self, user):
        """A requests.Session signed in as user, through nginx and the login form."""
        return signed_in(self.base_url, user["email"], user["password"])

    def open_tool(self, browser, slug, user, path="/", timeout=20):
        """Navigate to a tool as a browser does, wait until the tool itself answers; return that response."""
        import time

        url = self.tool_url(slug, user, path)
        first = browser.get(url, headers={"Sec-Fetch-Mode": "navigate"}, timeout=10)
        assert first.status_code in (200, 202), first.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = browser.get(self.tool_url(slug, user, "/__berth/status"),
                                 headers={"X-Berth-No-Launch": "1", "Accept": "application/json"},
                                 timeout=10).json()
            if status["state"] == "RUNNING":
                return browser.get(url, timeout=10)
            assert status["state"] in ("QUEUED", "SPAWNING"), status
            time.sleep(0.05)
        raise AssertionError(f"{slug} did not start within {timeout} s")

    def docker(self):
        """A Docker client for the stack's engine, to use in a with block."""
        from contextlib import closing

        import docker

        return closing(docker.DockerClient(base_url=self.env["BERTH_DOCKER_URL"], timeout=60))

    def berth(self, *args):
        """Run the `berth` command line against this stack."""
        import subprocess
        import sys

        return subprocess.run([str(Path(sys.executable).parent / "berth"), *args], env=self.env,
                              capture_output=True, text=True, timeout=60)

    def instances(self, host=None):
        where = "WHERE host = :host" if host else ""
        return self.query(f"SELECT * FROM tool_instances {where} ORDER BY id", host=host)


def _make_stack(label, database_url, redis_url, tmp_root, docker_url, extra_env=None):
    data_dir = tempfile.mkdtemp(prefix=f"berth-{label}-", dir=tmp_root)
    low = 21000 + (free_port() % 40) * 100  # a tool port range of its own for each stack
    env = {
        **os.environ,
        "BERTH_DATA_DIR": data_dir,
        "BERTH_DOMAIN": DOMAIN,
        "BERTH_HTTP_PORT": str(free_port()),
        "BERTH_AUTH_PORT": str(free_port()),
        "BERTH_WEB_PORT": str(free_port()),
        "BERTH_DEPLOYMENT": f"test-{label}-{os.getpid()}",
        "BERTH_PORT_RANGE": f"{low}-{low + 99}",
        "BERTH_CATALOGUE": str(TEST_CATALOGUE),
        "BERTH_LEASE_SECONDS": "4",
        "BERTH_GUNICORN_WORKERS": "2",
        "BERTH_BACKENDS": "process,docker",
        "BERTH_DOCKER_URL": docker_url,
    }
    env.update(extra_env or {})
    if database_url:
        env["BERTH_DATABASE_URL"] = database_url
    else:
        env.pop("BERTH_DATABASE_URL", None)
    if redis_url:
        env["BERTH_REDIS_URL"] = redis_url
    else:
        env.pop("BERTH_REDIS_URL", None)
    return BerthStack(env, data_dir, label)


@pytest.fixture(scope="session")
def oidc_provider():
    """A real OpenID provider (tests/oidc/provider.js), installed with npm on first use."""
    from tests.oidc_provider import OidcProvider

    provider = OidcProvider()
    yield provider
    provider.close()


def _sso_env(request):
    """Single sign-on settings for a new stack: its HTTP port, and a client registered for it."""
    from tests.oidc_provider import provider_env

    port = free_port()
    return {"BERTH_HTTP_PORT": str(port),
            **provider_env(request.getfixturevalue("oidc_provider"), f"http://{DOMAIN}:{port}")}


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def berth_stack(request, tmp_path_factory):
    """A running Berth. On PostgreSQL + Redis, and on SQLite + Huey-on-SQLite."""
    docker_url = request.getfixturevalue("dockerd").url
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        redis = request.getfixturevalue("redis_server")
        stack = _make_stack("pg", server.create_database(f"berth_{os.urandom(3).hex()}"),
                            redis.url(1), tmp_path_factory.mktemp("stacks"), docker_url,
                            extra_env=_sso_env(request))
    else:
        stack = _make_stack("sqlite", None, None, tmp_path_factory.mktemp("stacks"), docker_url,
                            extra_env=_sso_env(request))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture
def stack(berth_stack):
    return berth_stack


@pytest.fixture
def alice(stack):
    return stack.create_user()


@pytest.fixture
def bob(stack):
    return stack.create_user()

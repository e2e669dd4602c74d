"""Fixtures: real PostgreSQL, Redis and nginx, and Berth's own processes, on loopback.

`berth_stack` is parametrised: every integration test runs once on PostgreSQL with Redis
(production's components) and once on SQLite with Huey on SQLite (the embedded default).
"""
import os
import tempfile
from pathlib import Path

import pytest

from tests import images
from tests.services import Dockerd, Postgres, Redis, free_port

# In-process imports of webapp must not write into the checkout (secrets, the Huey file).
os.environ.setdefault("BERTH_DATA_DIR", tempfile.mkdtemp(prefix="berth-test-process-"))

from berth import metrics  # noqa: E402
from tests.local_stack import DOMAIN, BerthStack, loopback_names, stack_env  # noqa: E402

# This process counts its metrics in a folder of its own, before any stack's app would start
# them in that stack's folder, which the stack empties when it starts (its processes' counts).
metrics.start(os.path.join(os.environ["BERTH_DATA_DIR"], "metrics"))

TEST_CATALOGUE = Path(__file__).parent / "catalogue.yml"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used a stack reports what the stack's processes logged as errors."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when != "call":
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, BerthStack):
            try:
                errors = value.logged_errors()
            except OSError as error:
                errors = f"(its logs could not be read: {error})"
            if errors:
                report.sections.append((f"errors the stack '{name}' logged", errors))


@pytest.fixture(autouse=True, scope="session")
def localhost_resolves():
    with loopback_names():
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


def _make_stack(label, database_url, redis_url, tmp_root, docker_url, extra_env=None):
    """A Berth of the tests' own (not started), with a short lease and the test catalogue."""
    # Directly in /tmp, not in pytest's 0700 folders: tools' own users pass through the data
    # directory to their homes. The stack removes it when it stops.
    data_dir = tempfile.mkdtemp(prefix=f"berth-{label}-")
    settings = {"BERTH_WEB_WORKERS": "2", "BERTH_BACKENDS": "process,docker",
                "BERTH_DOCKER_URL": docker_url, **(extra_env or {})}
    return BerthStack(stack_env(data_dir, f"test-{label}-{os.getpid()}", TEST_CATALOGUE, database_url,
                                redis_url, extra_env=settings))


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


@pytest.fixture(scope="session")
def test_ca():
    """A certificate authority of the tests' own (deploy/certificates.py)."""
    from deploy.certificates import LocalCA

    folder = tempfile.mkdtemp(prefix="berth-test-ca-")
    os.chmod(folder, 0o755)  # nginx's master reads the certificates as root; nothing else needs to
    return LocalCA(folder)


TLS_TOOLS_DOMAIN = "berth-tools.localhost"


@pytest.fixture(scope="session")
def https_stack(request, test_ca, tmp_path_factory):
    """A running Berth over HTTPS (PostgreSQL + Redis): nginx serves a wildcard certificate from
    the test CA, for the domain and for tool hosts on a domain of their own (BERTH_TOOLS_DOMAIN),
    redirects plain HTTP, and sends HSTS."""
    chain, key = test_ca.issue(DOMAIN, [TLS_TOOLS_DOMAIN])
    server = request.getfixturevalue("postgres")
    redis = request.getfixturevalue("redis_server")
    stack = _make_stack("tls", server.create_database(f"berth_{os.urandom(3).hex()}"), redis.url(9),
                        tmp_path_factory.mktemp("stacks"), request.getfixturevalue("dockerd").url,
                        extra_env={"BERTH_SCHEME": "https", "BERTH_TLS_CERTIFICATE": str(chain),
                                   "BERTH_TLS_KEY": str(key), "BERTH_HTTP_REDIRECT_PORT": str(free_port()),
                                   "BERTH_HSTS_SECONDS": "300", "BERTH_TOOLS_DOMAIN": TLS_TOOLS_DOMAIN,
                                   "BERTH_TEST_CA": str(test_ca.certificate)})
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


# -- the browser: one headless Debian Chromium per session, for tests/browser and tests/security.
# Playwright's own browser downloads are never used (`playwright install` fails offline): the
# system's /usr/bin/chromium is launched directly. Playwright allows one instance per process.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
@pytest.fixture(scope="session")
def chromium(test_ca):
    """Chromium, trusting certificates from the test CA (and no other that its own store lacks)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium); `make test` installs it")
    with sync_playwright() as playwright:
        trust = f"--ignore-certificate-errors-spki-list={test_ca.spki_hash()}"
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, trust])
        try:
            yield browser
        finally:
            browser.close()

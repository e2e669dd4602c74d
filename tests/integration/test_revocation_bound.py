"""The one-second auth cache (BERTH_AUTH_CACHE_SECONDS=1) and revocation: within 1 s, on every nginx.

Two auth replicas behind two nginx instances (each with its own cache), on one PostgreSQL. While
clients ask a running tool through both nginx without pause, so that each keeps a fresh cached
answer, a session is signed out, an API token revoked and a share revoked. Every request sent
more than 1 s after the revocation answered must be refused, on both nginx; before it, the
cached answers were in use (docs/decisions/0021-one-second-auth-cache.md).
"""
import os
import threading
import time

import pytest
import requests

from berth.nginx_conf import prepare_prefix, render_nginx
from deploy.local import kill_group, nginx_command, nginx_config_error, start_process
from tests.actions import post_form
from tests.conftest import DOMAIN, _make_stack
from tests.integration.test_access import _revoke, _share
from tests.integration.test_tokens import make_token
from tests.local_stack import TOOL_COOKIE
from tests.services import answers_ok, free_port

BOUND_SECONDS = 1.0  # the cache lifetime: the promise under test
AFTER_SECONDS = 2.0  # how long the clients go on asking after a revocation
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def two_of_each(postgres, redis_server, tmp_path_factory):
    """Berth with the one-second auth cache, two auth replicas behind each of two nginx instances."""
    stack = _make_stack(
        "revocation", postgres.create_database(f"berth_{os.urandom(3).hex()}"), redis_server.url(11),
        tmp_path_factory.mktemp("revocation"), docker_url="",
        extra_env={"BERTH_BACKENDS": "process", "BERTH_AUTH_WORKERS": "1", "BERTH_WEB_WORKERS": "1",
                   "BERTH_AUTH_CACHE_SECONDS": "1"})
    assert stack.config["BERTH_AUTH_CACHE_SECONDS"] == 1
    stack.prepare_database()
    auth_ports = {name: free_port() for name in ("auth-1", "auth-2")}
    auth_servers = [f"127.0.0.1:{port}" for port in auth_ports.values()]
    stack.processes.render_nginx(stack.config, auth_servers=auth_servers)
    second_port = free_port()
    # Inside the first one's prefix: the process backend closes the rest of the data directory
    # to others (seal_data_dir), and nginx's workers do not run as root.
    second_prefix = stack.data_dir / "nginx" / "second"
    prepare_prefix(second_prefix, workers_as=stack.processes.nginx_user if os.geteuid() == 0 else None)
    conf = second_prefix / "nginx.conf"
    conf.write_text(render_nginx(stack.config, standalone=True, prefix=str(second_prefix),
                                 listen=f"127.0.0.1:{second_port}", auth_servers=auth_servers))
    os.chmod(conf, 0o600)
    second_command = nginx_command(second_prefix, workers_as=stack.processes.nginx_user)
    assert nginx_config_error(second_command) is None
    second = None
    try:
        for name, port in auth_ports.items():
            stack.processes.start(name, port=port)
        for name in ("web", "worker", "nginx"):
            stack.processes.start(name)
        second = start_process(second_command, stack.data_dir / "logs" / "nginx-second.log")
        stack.wait_ready()
        for port in auth_ports.values():
            assert answers_ok(f"http://127.0.0.1:{port}/auth/healthz", 30,
                              headers={"Host": DOMAIN, "X-Berth-Proxy-Secret": stack.config["BERTH_PROXY_SECRET"]})
        stack.nginx_ports = (stack.port, second_port)
        stack.cache_dirs = (stack.data_dir / "nginx" / "auth-cache", second_prefix / "auth-cache")
        yield stack
    finally:
        if second is not None:
            kill_group(second)
        stack.stop()


class Client(threading.Thread):
    """Asks one URL through one nginx without pause, recording (time sent, status)."""

    def __init__(self, url, session, headers=None):
        super().__init__(daemon=True)
        self.url, self.session, self.headers = url, session, {**JSON, **(headers or {})}
        self.answers = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            sent = time.monotonic()
            try:
                status = self.session.get(self.url, headers=self.headers, allow_redirects=False,
                                          timeout=10).status_code
            except requests.RequestException as error:
                status = type(error).__name__
            self.answers.append((sent, status))

    def stop(self):
        self.done.set()
        self.join()


def _via(url, port):
    """The same tool URL through the nginx listening on port."""
    head, rest = url.split("://", 1)
    host, path = rest.split("/", 1)
    return f"{head}://{host.rsplit(':', 1)[0]}:{port}/{path}"


def _cached_answers(directory):
    return [path for path in directory.rglob("*") if path.is_file()] if directory.exists() else []


def _revoked_within_the_bound(stack, url, make_session, revoke, refused, headers=None):
    clients = [Client(_via(url, port), make_session(), headers) for port in stack.nginx_ports]
    for client in clients:
        client.start()
    try:
        time.sleep(1.5)  # both caches hold the answer, refreshed every second
        for client in clients:
            probe = client.session.get(client.url, headers=client.headers, timeout=10)
            assert probe.status_code == 200
        assert all(_cached_answers(directory) for directory in stack.cache_dirs)
        revoke()
        revoked_at = time.monotonic()  # the revocation is committed before its answer arrives
        time.sleep(AFTER_SECONDS)
    finally:
        for client in clients:
            client.stop()
    for port, client in zip(stack.nginx_ports, clients):
        late = [(round(sent - revoked_at, 3), status) for sent, status in client.answers
                if sent > revoked_at + BOUND_SECONDS and status != refused]
        assert late == [], f"nginx on {port} still answered after the bound: {late[:5]}"
        after = [status for sent, status in client.answers if sent > revoked_at + BOUND_SECONDS]
        assert len(after) >= 5 and set(after) == {refused}


def test_a_signed_out_session_stops_working_within_a_second_on_every_nginx(two_of_each):
    stack = two_of_each
    alice = stack.create_user()
    owner = stack.login(alice)
    stack.open_tool(owner, "echo", alice)
    laptop = stack.login(alice)
    stack.hand_off(laptop, "echo", alice)
    host = stack.tool_host("echo", alice)
    cookie = stack.tool_cookie(laptop, host)

    def replay():
        session = requests.Session()
        session.cookies.set(TOOL_COOKIE, cookie, domain=host)
        return session

    _revoked_within_the_bound(stack, stack.tool_url("echo", alice, "/headers"), replay,
                              lambda: post_form(laptop, stack.base_url + "/auth/logout"), 401)
    assert owner.get(stack.tool_url("echo", alice, "/headers"), timeout=10).status_code == 200


def test_a_revoked_api_token_stops_working_within_a_second_on_every_nginx(two_of_each):
    stack = two_of_each
    alice = stack.create_user()
    browser = stack.login(alice)
    stack.open_tool(browser, "echo-api", alice)
    token = make_token(stack, browser)
    [row] = stack.query("SELECT id FROM api_tokens WHERE user_id = :u", u=alice["id"])

    def revoke():
        answer = post_form(browser, f"{stack.base_url}/account/tokens/{row['id']}/revoke",
                           page=f"{stack.base_url}/account")
        assert "The token is revoked" in answer.text

    _revoked_within_the_bound(stack, stack.tool_url("echo-api", alice, "/headers"), requests.Session,
                              revoke, 401, headers={"Authorization": f"Bearer {token}"})


def test_a_revoked_share_stops_working_within_a_second_on_every_nginx(two_of_each):
    stack = two_of_each
    alice, bob = stack.create_user(), stack.create_user()
    owner, grantee = stack.login(alice), stack.login(bob)
    stack.open_tool(owner, "echo", alice)
    assert _share(stack, owner, "echo", "user", bob["email"]).status_code == 302
    stack.hand_off(grantee, "echo", alice)
    [grant] = stack.query("SELECT id FROM tool_grants WHERE user_id = :u", u=bob["id"])

    def as_bob():
        session = requests.Session()
        session.cookies.update(grantee.cookies)
        return session

    _revoked_within_the_bound(stack, stack.tool_url("echo", alice, "/headers"), as_bob,
                              lambda: _revoke(stack, owner, "echo", grant["id"]), 403)


def test_a_forged_berth_header_is_refused_even_while_an_answer_is_cached(two_of_each):
    # The legitimate request fills both caches; the same request with a client's copy of one of
    # Berth's headers bypasses them, and the auth service refuses it.
    stack = two_of_each
    alice = stack.create_user()
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    url = stack.tool_url("echo", alice, "/headers")
    for port in stack.nginx_ports:
        for name in ("X-Berth-User-Email", "X-Berth-User-Id", "X-Berth-Upstream"):
            assert browser.get(_via(url, port), timeout=10).status_code == 200
            forged = browser.get(_via(url, port), headers={name: "boss@example.org"}, timeout=10)
            assert forged.status_code == 403 and "reserved header" in forged.text, (port, name)

"""Statelessness: replicas of auth, web and worker are SIGKILLed under load, and nothing is lost.

One nginx in front of two auth, two web and two worker processes, all on one PostgreSQL and one
Redis, on loopback. Signed-in users browse the catalogue, use running tools and launch new ones
(through the start page, two tabs at once, and through POST /api/instances), while a killer
SIGKILLs a random replica every 1 to 2 s (its whole process group, as a container runtime does)
and restarts it after a short pause. It never kills the last live replica of a role: with both
down, every request would fail, and that is an outage, not statelessness.

Then: no idempotent request failed (nginx sent it to the other replica:
docs/decisions/0010-replica-retries.md); every session, old or signed in during the load, still
works; every launch ended RUNNING exactly once with exactly one process, and once the reconciler
has run no process labelled with this deployment is left that is not a RUNNING instance's.
A POST that a replica received and then died with is not resent by nginx: the client sees 502,
counts it and sends it again, which is safe because a launch is idempotent by host and a
sign-in only makes one more session.

The worker's reconciler runs every minute; a launch whose worker was killed would wait up to
that long, so the test runs `berth reconcile` every few seconds instead (the minute compressed).
The figures are printed (pytest -s shows them) and quoted in the README, *Operating at scale*.
"""
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from deploy.local import role_of
from tests.actions import csrf_token
from tests.conftest import DOMAIN, _make_stack
from tests.integration.test_lifecycle import reconcile_here
from tests.services import answers_ok, free_port

LOAD_SECONDS = 25
REPLICAS = ("auth-1", "auth-2", "web-1", "web-2", "worker-1", "worker-2")
STANDING_USERS = 3   # each has echo running before the load: the tool traffic goes to them
LAUNCHING_USERS = 8  # each launches echo during the load: half through the start page, half the API
NAVIGATE = {"Sec-Fetch-Mode": "navigate"}
POLL = {"X-Berth-No-Launch": "1", "Accept": "application/json"}


# -- the stack ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replicated(postgres, redis_server, tmp_path_factory):
    """Berth with two replicas of auth, web and worker behind one nginx; PostgreSQL and Redis."""
    stack = _make_stack(
        "replicas", postgres.create_database(f"berth_{os.urandom(3).hex()}"), redis_server.url(6),
        tmp_path_factory.mktemp("replicas"), docker_url="",
        # Replicas share their secrets through the environment, as in production. One worker
        # process per server keeps six servers and their restarts within a small machine.
        extra_env={"BERTH_BACKENDS": "process", "BERTH_SECRET_KEY": os.urandom(16).hex(),
                   "BERTH_PROXY_SECRET": os.urandom(16).hex(),
                   "BERTH_WEB_WORKERS": "1", "BERTH_AUTH_WORKERS": "1"})
    stack.prepare_database()
    stack.replica_ports = {name: free_port() for name in REPLICAS if role_of(name) != "worker"}
    stack.processes.render_nginx(
        stack.app.config,
        auth_servers=[f"127.0.0.1:{stack.replica_ports[name]}" for name in ("auth-1", "auth-2")],
        web_servers=[f"127.0.0.1:{stack.replica_ports[name]}" for name in ("web-1", "web-2")])
    try:
        for name in REPLICAS:
            stack.processes.start(name, port=stack.replica_ports.get(name))
        stack.processes.start("nginx")
        stack.wait_ready()
        for name in stack.replica_ports:
            _wait_healthy(stack, name)
        yield stack
    finally:
        stack.stop()


def _wait_healthy(stack, name, timeout=30):
    """Wait until one auth or web replica answers its health check directly (not through nginx)."""
    path = "/auth/healthz" if role_of(name) == "auth" else "/healthz"
    url = f"http://127.0.0.1:{stack.replica_ports[name]}{path}"
    headers = {"Host": DOMAIN, "X-Berth-Proxy-Secret": stack.env["BERTH_PROXY_SECRET"]}
    if not answers_ok(url, timeout, headers=headers):
        raise AssertionError(f"{name} did not come back within {timeout} s")


def _labelled_tools(stack):
    """{instance id: [pid, ...]} of the tool processes labelled with this deployment.

    Only the leader of each tool's session counts (the process backend starts every tool in a
    session of its own), as in test_crash.py; zombies do not count."""
    label = f"BERTH_DEPLOYMENT={stack.env['BERTH_DEPLOYMENT']}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" or label not in environ or int(fields[3]) != int(entry):
            continue
        ids = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"BERTH_INSTANCE_ID=")]
        if ids:
            found.setdefault(int(ids[0]), []).append(int(entry))
    return found


# -- the load -------------------------------------------------------------------------------------
class Record:
    """Requests sent and failed, by kind; thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = Counter()
        self.failed = Counter()
        self.failures = []

    def request(self, kind, session, method, url, expect, **options):
        with self.lock:
            self.sent[kind] += 1
        try:
            answer = session.request(method, url, timeout=15, allow_redirects=False, **options)
        except requests.RequestException as error:
            return self._fail(kind, method, url, type(error).__name__)
        if answer.status_code not in expect:
            return self._fail(kind, method, url, f"{answer.status_code} {answer.text[:80]!r}")
        return answer

    def _fail(self, kind, method, url, what):
        with self.lock:
            self.failed[kind] += 1
            self.failures.append((round(time.monotonic(), 2), kind, method, url, what))
        return None


class Killer(threading.Thread):
    """Every 1 to 2 s, SIGKILL a random replica whose sibling is up, and restart it after a pause."""

    def __init__(self, stack, done):
        super().__init__(daemon=True)
        self.stack, self.done = stack, done
        self.lock = threading.Lock()
        self.down = set()  # killed, or restarted but not answering yet
        self.kills = Counter()
        self.errors = []
        self.restarts = []

    def run(self):
        rng = random.Random()
        while not self.done.wait(rng.uniform(1.0, 2.0)):
            with self.lock:
                down_roles = {role_of(name) for name in self.down}
                candidates = [name for name in REPLICAS if role_of(name) not in down_roles]
                if not candidates:
                    continue
                name = rng.choice(candidates)
                self.down.add(name)
            self.stack.processes.kill(name)
            self.kills[role_of(name)] += 1
            restart = threading.Thread(target=self._restart, args=(name, rng.uniform(0.2, 0.8)))
            restart.start()
            self.restarts.append(restart)

    def _restart(self, name, pause):
        time.sleep(pause)
        try:
            self.stack.processes.start(name)
            if role_of(name) == "worker":
                time.sleep(1.0)  # a worker serves no port; give it time to connect to the queue
            else:
                _wait_healthy(self.stack, name)
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{name}: {error}")
        with self.lock:
            self.down.discard(name)

    def finish(self):
        self.join()
        for restart in self.restarts:
            restart.join()


def _browser(cookies):
    session = requests.Session()
    session.headers["Accept"] = "text/html"
    session.cookies.update(cookies)
    return session


def _sign_in(stack, record, user):
    """Sign in through nginx as a browser does; a failed POST is sent again, as a user would."""
    browser = _browser({})
    for _attempt in range(20):
        form = record.request("login-form", browser, "GET", f"{stack.base_url}/auth/login", (200,))
        if form is None:
            time.sleep(0.2)
            continue
        answer = record.request("login-post", browser, "POST", f"{stack.base_url}/auth/login", (302,),
                                data={"csrf_token": csrf_token(form.text), "email": user["email"],
                                      "password": user["password"], "next": "/"})
        if answer is not None:
            return browser
        time.sleep(0.2)
    raise AssertionError(f"could not sign in as {user['email']}")


def _wait_running(stack, record, browser, user, instance_id, done):
    """Poll as the spawning page does (or as an API client does) until the tool is RUNNING."""
    while not done.is_set():
        if instance_id is None:
            answer = record.request("status", browser, "GET", stack.tool_url("echo", user, "/__berth/status"),
                                    (200,), headers=POLL)
        else:
            answer = record.request("api-get", browser, "GET", f"{stack.base_url}/api/instances/{instance_id}",
                                    (200,), headers={"Accept": "application/json"})
        if answer is not None and answer.json()["state"] == "RUNNING":
            return
        time.sleep(0.2)


def _launch_by_start_page(stack, record, browser, user, done):
    """Two tabs open the tool's address at once: two start-page GETs, one launch."""
    tabs = [_browser(browser.cookies) for _ in range(2)]
    threads = [threading.Thread(target=record.request, args=(
        "start-page", tab, "GET", stack.tool_url("echo", user), (200, 202)), kwargs={"headers": NAVIGATE})
        for tab in tabs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _wait_running(stack, record, browser, user, None, done)


def _launch_by_api(stack, record, browser, user, done):
    """POST /api/instances with the session and its CSRF token; a failed POST is sent again."""
    for _attempt in range(20):
        page = record.request("page", browser, "GET", f"{stack.base_url}/", (200,))
        if page is None:
            time.sleep(0.2)
            continue
        answer = record.request("api-launch", browser, "POST", f"{stack.base_url}/api/instances",
                                (200, 202), json={"tool": "echo"},
                                headers={"X-CSRFToken": csrf_token(page.text), "Accept": "application/json"})
        if answer is not None:
            return _wait_running(stack, record, browser, user, answer.json()["id"], done)
        time.sleep(0.2)
    raise AssertionError(f"could not launch echo for {user['email']}")


def _browse(stack, record, standing, done, rng):
    """Steady idempotent traffic: the catalogue, a running tool, its status."""
    sessions = [(user, _browser(browser.cookies)) for user, browser in standing]
    n = 0
    while not done.is_set():
        user, browser = rng.choice(sessions)
        n += 1
        record.request("page", browser, "GET", f"{stack.base_url}/", (200,))
        url = stack.tool_url("echo", user, f"/load?n={n}")
        answer = record.request("tool", browser, "GET", url, (200,))
        if answer is not None and answer.json()["path"] != f"/load?n={n}":
            record._fail("tool", "GET", url, f"the tool saw {answer.json()['path']}")
        record.request("status", browser, "GET", stack.tool_url("echo", user, "/__berth/status"), (200,),
                       headers=POLL)


# -- the test -------------------------------------------------------------------------------------
def test_killing_replicas_under_load_loses_no_request_session_or_launch(replicated):
    stack = replicated
    record = Record()
    users = [stack.create_user() for _ in range(STANDING_USERS + LAUNCHING_USERS)]
    standing = [(user, _sign_in(stack, record, user)) for user in users[:STANDING_USERS]]
    for user, browser in standing:
        stack.open_tool(browser, "echo", user)
    launching = [(user, _sign_in(stack, record, user)) for user in users[STANDING_USERS:]]
    for user, browser in launching:  # signed in on the tool host too, as a first visit does
        stack.hand_off(browser, "echo", user)
    sessions = [*standing, *launching]

    done = threading.Event()
    killer = Killer(stack, done)
    threads = [threading.Thread(target=_browse, args=(stack, record, standing, done, random.Random(i)))
               for i in range(3)]

    def sign_in_again():  # fresh sign-ins during the load: form from one replica, POST to another
        rng = random.Random()
        while not done.wait(rng.uniform(0.5, 1.5)):
            user = rng.choice(users)
            sessions.append((user, _sign_in(stack, record, user)))

    threads.append(threading.Thread(target=sign_in_again))
    launches = []
    for i, (user, browser) in enumerate(launching):
        launch = _launch_by_start_page if i % 2 == 0 else _launch_by_api
        timer = threading.Timer(1 + i * (LOAD_SECONDS - 6) / LAUNCHING_USERS, launch,
                                args=(stack, record, browser, user, done))
        launches.append(timer)
    started = time.monotonic()
    killer.start()
    for thread in threads + launches:
        thread.start()

    # The worker's reconciler, every few seconds instead of every minute.
    reconciles = 0
    while time.monotonic() - started < LOAD_SECONDS:
        time.sleep(4)
        assert stack.berth("reconcile").returncode == 0
        reconciles += 1
    done.set()
    killer.finish()
    for thread in threads:
        thread.join()
    assert killer.errors == []

    # Every launch was requested (the launches' threads stop polling once the load ends); the
    # reconciler takes up those whose worker was killed, until each is RUNNING.
    hosts = [stack.tool_host("echo", user) for user in users]
    deadline = time.monotonic() + 45
    while True:
        rows = [stack.instances(host) for host in hosts]
        if all(len(r) == 1 and r[0]["state"] == "RUNNING" for r in rows) or time.monotonic() > deadline:
            break
        if any(row["state"] in ("QUEUED", "SPAWNING") for r in rows for row in r):
            time.sleep(1)
            assert stack.berth("reconcile").returncode == 0
            reconciles += 1
        else:
            time.sleep(0.2)
    for timer in launches:
        timer.join()

    # What the reconciler still finds to do now: remove orphans, if there were any.
    actions = reconcile_here(stack)
    orphans = [instance_id for action, instance_id in actions if action == "orphan-removed"]
    time.sleep(0.5 if orphans else 0)
    tools = _labelled_tools(stack)

    resumed = stack.query("SELECT count(*) AS n FROM events WHERE kind = 'reconcile.resume'")[0]["n"]
    get_kinds = [kind for kind in record.sent if kind not in ("login-post", "api-launch")]
    sent_get = sum(record.sent[kind] for kind in get_kinds)
    sent_post = record.sent["login-post"] + record.sent["api-launch"]
    failed_get = sum(record.failed[kind] for kind in get_kinds)
    print(f"\nReplicas: 2 auth, 2 web, 2 worker behind one nginx; load {LOAD_SECONDS} s"
          f"\nrequests sent: {sent_get + sent_post} (idempotent GET {sent_get}, POST {sent_post}); "
          f"by kind: {dict(sorted(record.sent.items()))}"
          f"\nfailed: GET {failed_get}; POST {record.failed['login-post'] + record.failed['api-launch']} "
          f"(sign-in {record.failed['login-post']}, API launch {record.failed['api-launch']}), "
          f"each sent again by the client and then answered"
          f"\nlaunches: {len(users)} ({STANDING_USERS} before the load, {LAUNCHING_USERS} during it: "
          f"{(LAUNCHING_USERS + 1) // 2} by the start page in two tabs, {LAUNCHING_USERS // 2} by the API); "
          f"resumed by the reconciler: {resumed}; `berth reconcile` runs: {reconciles}"
          f"\nkills: {sum(killer.kills.values())} ({', '.join(f'{role} {n}' for role, n in sorted(killer.kills.items()))})"
          f"\nsessions checked: {len(sessions)}; orphans removed: {len(orphans)}")
    for failure in record.failures[:20]:
        print("  failed:", failure)

    # No idempotent request failed, except one whose answer was already on its way when its
    # server was SIGKILLed: nginx cannot retry an answer it has begun to pass on, so the client
    # sees it cut short. At most one such answer per kill of a server, and never another error.
    cut_short = [f for f in record.failures if f[2] != "POST" and f[4] == "ChunkedEncodingError"]
    assert [f for f in record.failures if f[2] != "POST" and f not in cut_short] == []
    assert len(cut_short) <= killer.kills["auth"] + killer.kills["web"]
    # Every launch ended RUNNING exactly once, with exactly one process; nothing else is left.
    rows = [stack.instances(host) for host in hosts]
    assert [[row["state"] for row in r] for r in rows] == [["RUNNING"]] * len(users)
    ids = [r[0]["id"] for r in rows]
    running_events = stack.query("SELECT instance_id, count(*) AS n FROM events "
                                 "WHERE kind = 'spawn.running' GROUP BY instance_id")
    assert {row["instance_id"]: row["n"] for row in running_events} == {i: 1 for i in ids}
    assert {i: len(pids) for i, pids in tools.items()} == {i: 1 for i in ids}
    assert [a for a in actions if a[0] != "orphan-removed"] == []
    # Every session still works, as the same user, and every tool answers through nginx.
    for user, browser in sessions:
        me = browser.get(f"{stack.base_url}/api/me", headers={"Accept": "application/json"},
                         allow_redirects=False, timeout=10)
        assert me.status_code == 200 and me.json()["email"] == user["email"]
    for user, browser in sessions[:len(users)]:
        assert browser.get(stack.tool_url("echo", user, "/after"), timeout=10).json()["path"] == "/after"

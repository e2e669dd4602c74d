"""The rest of a tool's life, through nginx on the real stack: the reconciler taking up launches
and stops whose queue message was lost, idle culling and how activity is recorded, and the
per-user and global limits on live tools."""
import sqlite3
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest
import redis
import websocket

from tests.actions import stop_instance
from tests.integration.test_launch import _host, _wait_gone, _wait_state, _backend_state

NAVIGATE = {"Sec-Fetch-Mode": "navigate"}
HUEY_REDIS_QUEUE = "huey.redis.berth"  # RedisHuey("berth") keeps its messages in this list


# -- helpers shared with test_crash.py -------------------------------------------------------------
def _as_utc(value):
    """A timestamp from stack.query: aware on PostgreSQL; naive UTC or text on SQLite."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _wait_until(moment):
    """Sleep until the wall clock (which Berth's processes stamp rows with) passes moment."""
    while datetime.now(timezone.utc) <= moment:
        time.sleep(0.1)


def wait_until_reconcilable(stack, row):
    """Wait until the reconciler may take up this launch: its lease has run out, and the
    reconciler's 5 s grace for a fresh queue message has passed."""
    moment = _as_utc(row["created_at"]) + timedelta(seconds=5)
    if row["lease_expires_at"] is not None:
        moment = max(moment, _as_utc(row["lease_expires_at"]))
    _wait_until(moment + timedelta(seconds=0.2))


def events_of(stack, instance_id):
    return stack.query("SELECT kind, actor, message FROM events WHERE instance_id = :id ORDER BY id",
                       id=instance_id)


def wait_for_event(stack, instance_id, kind, timeout=20):
    """The worker commits a state change, then the event that tells of it: wait for the event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = events_of(stack, instance_id)
        if kind in [e["kind"] for e in events]:
            return events
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event for instance {instance_id}: {events_of(stack, instance_id)}")


def stop_now(stack, instance_id):
    """Stop an instance from the test process, as `berth run` does on Ctrl-C (no queue involved)."""
    stack.stop_instance(instance_id)


def cull_idle(stack, row):
    """Date the instance's last activity two days back, run `berth cull`, and wait until the
    instance is STOPPED and its process gone. Returns the command's result."""
    stack.query("UPDATE tool_instances SET last_activity_at = :at WHERE id = :id",
                at=datetime.now(timezone.utc) - timedelta(days=2), id=row["id"])
    result = stack.berth("cull")
    assert result.returncode == 0, result.stderr
    _wait_state(stack, row["host"], ("STOPPED",))
    _wait_gone(_backend_state(row)["pid"])
    return result


def reconcile_here(stack):
    """Run the reconciler in the test process, against the stack's database and backends.

    It decides and acts as `berth reconcile` does, without a command's start-up time, except
    that it queues nothing (this process's queue is not the stack's). Returns its actions."""
    with stack.app.app_context():
        from berth.extensions import db
        from berth.launch.upkeep import reconcile

        actions = reconcile(enqueue_launch=lambda _id: None, enqueue_stop=lambda _id: None, actor="test")
        db.session.remove()
    return actions


def restart_worker(stack, extra_env=None):
    stack.processes.stop("worker")
    return stack.processes.start("worker", extra_env)


def ensure_normal_worker(stack, abnormal=()):
    """Leave the stack with a worker started without extra settings (fixture teardowns call this)."""
    current = stack.processes.processes.get("worker")
    if current is None or current.poll() is not None or any(current is other for other in abnormal):
        restart_worker(stack)


@pytest.fixture
def normal_worker_afterwards(stack):
    """Whatever the test does to the worker, a normal one runs after it, pass or fail."""
    yield
    ensure_normal_worker(stack)


@pytest.fixture
def worker_stopped(stack, normal_worker_afterwards):
    """The stack's worker is stopped when the test begins."""
    stack.processes.stop("worker")


def _queue_length(stack):
    if stack.env.get("BERTH_REDIS_URL"):
        with redis.Redis.from_url(stack.env["BERTH_REDIS_URL"]) as client:
            return client.llen(HUEY_REDIS_QUEUE)
    with closing(sqlite3.connect(stack.data_dir / "database" / "queue.db")) as connection:
        return connection.execute("SELECT count(*) FROM task").fetchone()[0]


def _lose_the_queue(stack):
    """What an operator's FLUSHDB (or a lost Huey file) does: every queued message is gone."""
    if stack.env.get("BERTH_REDIS_URL"):
        with redis.Redis.from_url(stack.env["BERTH_REDIS_URL"]) as client:
            client.flushdb()
    else:
        with closing(sqlite3.connect(stack.data_dir / "database" / "queue.db")) as connection:
            connection.execute("DELETE FROM task")
            connection.commit()
    assert _queue_length(stack) == 0


# -- the reconciler ----------------------------------------------------------------------------
def test_a_launch_whose_queue_message_was_lost_is_taken_up_again(stack, alice, worker_stopped):
    browser = stack.login(alice)
    host = _host(stack, "echo", alice)
    assert browser.get(stack.tool_url("echo", alice), headers=NAVIGATE).status_code == 202
    [row] = stack.instances(host)
    assert row["state"] == "QUEUED"
    assert _queue_length(stack) >= 1
    _lose_the_queue(stack)

    wait_until_reconcilable(stack, row)
    result = stack.berth("reconcile")
    assert result.returncode == 0, result.stderr
    assert f"resumed: instance {row['id']}" in result.stdout.splitlines()
    assert _queue_length(stack) >= 1  # the reconciler queued the launch again
    stack.processes.start("worker")
    _wait_state(stack, host, ("RUNNING",), timeout=30)

    assert [r["state"] for r in stack.instances(host)] == ["RUNNING"]
    assert browser.get(stack.tool_url("echo", alice, "/headers")).status_code == 200
    events = wait_for_event(stack, row["id"], "spawn.running")
    assert events[0]["kind"] == "instance.launch"
    assert (events[1]["kind"], events[1]["actor"]) == ("reconcile.resume", "reconciler")
    assert events[1]["message"] == "Resuming the launch at step queued"
    # A worker also reconciles as it starts; it may queue the launch once more, which is harmless.
    assert [e["kind"] for e in events if e["kind"] not in ("spawn.step", "reconcile.resume")] == [
        "instance.launch", "spawn.started", "spawn.running"]


@pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)  # the queue flush runs on both above
def test_a_stop_whose_queue_message_was_lost_is_finished(stack, alice, normal_worker_afterwards):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    host = _host(stack, "echo", alice)
    [row] = stack.instances(host)
    stack.processes.stop("worker")

    stopped = stop_instance(browser, stack.base_url, row["id"])
    assert stopped.status_code == 200
    assert stack.instances(host)[-1]["state"] == "STOPPING"
    _lose_the_queue(stack)
    wait_until_reconcilable(stack, stack.instances(host)[-1])  # the stop's own message had its time

    result = stack.berth("reconcile")
    assert result.returncode == 0, result.stderr
    assert f"stop-again: instance {row['id']}" in result.stdout.splitlines()
    stack.processes.start("worker")
    _wait_state(stack, host, ("STOPPED",))
    _wait_gone(_backend_state(row)["pid"])
    kinds = [(e["kind"], e["actor"]) for e in wait_for_event(stack, row["id"], "instance.stopped")]
    assert ("reconcile.stop", "reconciler") in kinds
    assert kinds.count(("instance.stopped", "worker")) == 1


# -- idle culling and activity -----------------------------------------------------------------
def test_an_idle_tool_is_culled_with_the_reason_and_an_active_one_is_not(stack, alice, bob):
    alice_browser, bob_browser = stack.login(alice), stack.login(bob)
    stack.open_tool(alice_browser, "echo", alice)
    stack.open_tool(bob_browser, "echo", bob)
    idle_host, busy_host = _host(stack, "echo", alice), _host(stack, "echo", bob)
    [idle], [busy] = stack.instances(idle_host), stack.instances(busy_host)
    limit = stack.query("SELECT idle_timeout FROM tool_templates WHERE slug = 'echo'")[0]["idle_timeout"]
    assert limit > 0

    result = cull_idle(stack, idle)
    assert stack.instances(busy_host)[-1]["state"] == "RUNNING"

    [cull] = [e for e in events_of(stack, idle["id"]) if e["kind"] == "cull.idle"]
    # The worker's own culler (every minute) may have got there first; either way, one event.
    assert result.stdout.strip() == f"Stopping idle instances: {idle['id']}" or cull["actor"] == "culler"
    idle_seconds = int(cull["message"].split()[2])
    assert idle_seconds >= 2 * 86400
    assert cull["message"] == f"Idle for {idle_seconds} s, more than its limit of {limit} s"
    assert "cull.idle" not in [e["kind"] for e in events_of(stack, busy["id"])]
    stopped_page = alice_browser.get(stack.tool_url("echo", alice, "/headers"),
                                     headers={"Accept": "application/json"})
    assert stopped_page.status_code == 503


def _last_activity(stack, instance_id):
    value = stack.query("SELECT last_activity_at FROM tool_instances WHERE id = :id",
                        id=instance_id)[0]["last_activity_at"]
    return None if value is None else _as_utc(value)


def test_activity_is_written_at_most_once_per_interval(stack, alice):
    assert stack.app.config["BERTH_ACTIVITY_INTERVAL"] == 60
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    [row] = stack.instances(_host(stack, "echo", alice))
    stack.query("UPDATE tool_instances SET last_activity_at = NULL WHERE id = :id", id=row["id"])

    before = datetime.now(timezone.utc)

    def written():  # by the first request that reaches the auth service, past nginx's auth cache
        assert browser.get(stack.tool_url("echo", alice, "/headers")).status_code == 200
        return _last_activity(stack, row["id"]) is not None

    stack.until_auth_cache_ends(written, True)
    first = _last_activity(stack, row["id"])
    assert first >= before - timedelta(seconds=1)
    for number in range(20):
        assert browser.get(stack.tool_url("echo", alice, f"/headers?n={number}")).status_code == 200
    assert _last_activity(stack, row["id"]) == first


def test_a_websocket_handshake_is_activity_but_traffic_on_an_open_socket_is_not(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    [row] = stack.instances(_host(stack, "echo", alice))
    long_ago = datetime.now(timezone.utc) - timedelta(hours=3)
    stack.query("UPDATE tool_instances SET last_activity_at = :at WHERE id = :id", at=long_ago, id=row["id"])

    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    before = datetime.now(timezone.utc)
    connection = websocket.create_connection(
        stack.tool_url("echo", alice, "/ws").replace("http://", "ws://", 1), cookie=cookie,
        header=["Origin: " + stack.tool_url("echo", alice).rstrip("/")], timeout=10)
    try:
        assert connection.getstatus() == 101
        assert _last_activity(stack, row["id"]) >= before - timedelta(seconds=1)

        stack.query("UPDATE tool_instances SET last_activity_at = :at WHERE id = :id", at=long_ago,
                    id=row["id"])
        for number in range(5):
            connection.send(f"message {number}")
            assert connection.recv() == f"message {number}"
        assert _last_activity(stack, row["id"]) == long_ago
    finally:
        connection.close()


# -- limits ------------------------------------------------------------------------------------
# With the worker stopped, launches stay QUEUED, which is live: each counts against the limits,
# nothing changes the count behind the test's back, and no tool actually has to start.
QUEUED_SLUGS = ("echo", "broken", "silent", "missing", "ghost")


def _live_ids(stack):
    return [r["id"] for r in stack.query(
        "SELECT id FROM tool_instances WHERE state IN ('QUEUED', 'SPAWNING', 'RUNNING', 'STOPPING')")]


def test_over_the_per_user_limit_the_start_page_answers_429_and_launches_nothing(
        stack, alice, worker_stopped):
    limit = stack.app.config["BERTH_MAX_TOOLS_PER_USER"]
    assert limit == len(QUEUED_SLUGS) == 5  # the default
    browser = stack.login(alice)
    launched = []
    try:
        for slug in QUEUED_SLUGS:
            assert browser.get(stack.tool_url(slug, alice), headers=NAVIGATE).status_code == 202
            launched += [r["id"] for r in stack.instances(_host(stack, slug, alice))]
        assert len(launched) == limit

        refused = browser.get(stack.tool_url("busybox", alice), headers=NAVIGATE)
        assert refused.status_code == 429
        assert "Busybox was not started" in refused.text
        assert ("You already have 5 tools running, the most allowed per person is 5. "
                "Stop one of them, then try again.") in refused.text
        assert stack.instances(_host(stack, "busybox", alice)) == []
        assert len(stack.query("SELECT id FROM events WHERE kind = 'instance.launch' AND user_id = :id",
                               id=alice["id"])) == limit
    finally:
        for instance_id in launched:
            stop_now(stack, instance_id)


@pytest.fixture
def web_with(stack):
    """web_with(**settings) restarts the web app with extra BERTH_* settings; afterwards it
    runs with the stack's own settings again."""
    def restart(**settings):
        stack.processes.stop("web")
        stack.processes.start("web", {f"BERTH_{name.upper()}": str(value) for name, value in settings.items()})
        stack.wait_ready()

    yield restart
    stack.processes.stop("web")
    stack.processes.start("web")
    stack.wait_ready()


@pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)  # it restarts web twice
def test_over_the_global_limit_the_start_page_answers_429_and_launches_nothing(
        stack, alice, bob, worker_stopped, web_with):
    total = len(_live_ids(stack)) + 1
    web_with(max_tools_total=total)
    launched = []
    try:
        alice_browser = stack.login(alice)
        assert alice_browser.get(stack.tool_url("echo", alice), headers=NAVIGATE).status_code == 202
        launched = [r["id"] for r in stack.instances(_host(stack, "echo", alice))]
        assert len(_live_ids(stack)) == total

        refused = stack.login(bob).get(stack.tool_url("echo", bob), headers=NAVIGATE)
        assert refused.status_code == 429
        assert f"Berth is running its maximum of {total} tools." in refused.text
        assert stack.instances(_host(stack, "echo", bob)) == []
    finally:
        for instance_id in launched:
            stop_now(stack, instance_id)

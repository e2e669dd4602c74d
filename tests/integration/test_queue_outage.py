"""Faults of the queue (Redis) under launches in flight, with the production settings.

Redis is stopped for 10 s while launches run and more are asked for, then started again on the
same port, empty, as a restarted Redis without persistence is. Every launch must still end
RUNNING: the database is the source of truth, and the reconciler queues again whatever the
queue lost or never got. Meanwhile the worker logs the outage once and its end once, and the
web app logs no traceback for the launches asked for while Redis was down. Then FLUSHALL with
launches queued: none is lost either. And 30 s without Redis cost an idle worker at most 30 log
lines.

The Redis server is this module's own, so that stopping it disturbs no other test's stack.
"""
import os
import time

import pytest
import redis

from tests.conftest import _make_stack
from tests.integration.test_lifecycle import HUEY_REDIS_QUEUE
from tests.services import Redis

NAVIGATE = {"Sec-Fetch-Mode": "navigate"}
OUTAGE_SECONDS = 10
WORKER_THREADS = 4  # huey_consumer -w, as the stack runs it
# After Redis is back: the reconciler (every 5 s) queues again what the queue lost or never got;
# the slow tools, started before the outage, answer 20 s after their start; then the echo
# launches have their start to run.
RUNNING_WITHIN = 5 + 10 + 10


@pytest.fixture(scope="module")
def own_redis():
    server = Redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def queue_stack(postgres, own_redis, tmp_path_factory):
    stack = _make_stack("queue-outage", postgres.create_database(f"berth_{os.urandom(3).hex()}"),
                        own_redis.url(0), tmp_path_factory.mktemp("queue-outage"), docker_url="",
                        extra_env={"BERTH_BACKENDS": "process"})
    stack.start()
    yield stack
    stack.stop()


def _users(stack, count):
    """count users, each signed in: [(browser, user)]."""
    users = [stack.create_user() for _ in range(count)]
    return [(stack.login(user), user) for user in users]


def _launch(stack, slug, users):
    """Each user navigates to the tool, which launches it: [(browser, user, slug)]."""
    for browser, user in users:
        answer = browser.get(stack.tool_url(slug, user), headers=NAVIGATE, timeout=10)
        assert answer.status_code == 202, answer.text[:300]
    return [(browser, user, slug) for browser, user in users]


def _states(stack, launches):
    """{instance id: (state, error)} of the launches."""
    return {row["id"]: (row["state"], row["error"])
            for _, user, slug in launches for row in stack.instances(stack.tool_host(slug, user))}


def _wait_all_settled(stack, launches, timeout):
    """_states once every launch is RUNNING or FAILED, or at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        states = _states(stack, launches)
        settled = len(states) == len(launches) and all(s in ("RUNNING", "FAILED") for s, _ in states.values())
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def _finish(stack, launches):
    for browser, user, slug in launches:
        for row in stack.instances(stack.tool_host(slug, user)):
            stack.stop_instance(row["id"])
        browser.close()


def _log(stack, name):
    return stack.processes.log_path(name).read_text(errors="replace")


def test_a_redis_outage_during_launches_loses_none_of_them(queue_stack, own_redis):
    stack = queue_stack
    worker_lines, web_lines = (len(_log(stack, name).splitlines()) for name in ("worker", "web"))
    slow, queued, during_outage = _users(stack, WORKER_THREADS), _users(stack, 4), _users(stack, 3)
    # The slow tools keep every worker thread waiting: the echo launches' messages are still in
    # Redis when it stops, and are lost with it.
    launches = _launch(stack, "slow", slow) + _launch(stack, "echo", queued)
    try:
        _wait_for_steps(stack, launches[:WORKER_THREADS], "wait_healthy")
        own_redis.halt()
        down_at = time.monotonic()
        still_queued = sum(state == "QUEUED" for state, _ in _states(stack, launches).values())
        launches += _launch(stack, "echo", during_outage)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        own_redis.start()
        back_at = time.monotonic()
        during = _log(stack, "worker").splitlines()[worker_lines:]

        states = _wait_all_settled(stack, launches, RUNNING_WITHIN + 30)
        settled_after = time.monotonic() - back_at
        worker_log = _log(stack, "worker").splitlines()[worker_lines:]
        web_log = _log(stack, "web").splitlines()[web_lines:]
        print(f"\nRedis down {back_at - down_at:.1f} s with {still_queued} launches queued and "
              f"{len(during_outage)} asked for meanwhile: {sum(s == 'RUNNING' for s, _ in states.values())} of "
              f"{len(launches)} RUNNING {settled_after:.1f} s after it came back; the worker logged "
              f"{len(during)} lines from the launches to Redis's return, {len(worker_log)} in all")
        assert {id: state for id, state in states.items() if state != ("RUNNING", None)} == {}
        assert len(states) == len(launches)
        assert settled_after < RUNNING_WITHIN
        assert len(during) < 50, "\n".join(during)
        unreachable = [line for line in worker_log if "The queue (Redis) unreachable" in line]
        back = [line for line in worker_log if "The queue (Redis) back after" in line]
        assert (len(unreachable), len(back)) == (1, 1), "\n".join(worker_log)
        assert not [line for line in worker_log if "Traceback" in line], "\n".join(worker_log)
        assert not [line for line in web_log if "Traceback" in line], "\n".join(web_log)
        for browser, user, slug in launches:
            page = browser.get(stack.tool_url(slug, user, "/after-the-outage"), timeout=10)
            assert page.status_code == 200 and page.json()["path"] == "/after-the-outage"
    finally:
        if own_redis.process.poll() is not None:
            own_redis.start()
        _finish(stack, launches)


def test_thirty_seconds_without_redis_cost_at_most_thirty_worker_log_lines(queue_stack, own_redis):
    """An idle Berth whose Redis is down for 30 s: the worker says so once, and once that it is
    back, not once per poll (its four threads poll every 0.1 s at most)."""
    stack = queue_stack
    before = len(_log(stack, "worker").splitlines())
    own_redis.halt()
    try:
        time.sleep(30)
    finally:
        own_redis.start()
    deadline = time.monotonic() + 15
    while "The queue (Redis) back after" not in "\n".join(_log(stack, "worker").splitlines()[before:]):
        assert time.monotonic() < deadline, "the worker never said the queue was back"
        time.sleep(0.5)
    lines = _log(stack, "worker").splitlines()[before:]
    print(f"\nRedis down 30 s: the worker logged {len(lines)} lines")
    assert len(lines) <= 30, "\n".join(lines)
    assert len([line for line in lines if "The queue (Redis) unreachable" in line]) == 1, "\n".join(lines)


def _wait_for_steps(stack, launches, step, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [row for _, user, slug in launches for row in stack.instances(stack.tool_host(slug, user))]
        if len(rows) == len(launches) and all(row["step"] == step for row in rows):
            return
        time.sleep(0.1)
    raise AssertionError(f"the launches did not all reach {step}: {rows}")


def test_a_flushall_with_launches_queued_loses_none_of_them(queue_stack, own_redis):
    stack = queue_stack
    stack.processes.stop("worker")  # so that the messages are still queued when they go
    users = _users(stack, 5)
    launches = []
    try:
        launches = _launch(stack, "echo", users)
        with redis.Redis.from_url(own_redis.url(0)) as client:
            assert client.llen(HUEY_REDIS_QUEUE) == 5
            client.flushall()
        stack.processes.start("worker")
        started_at = time.monotonic()
        states = _wait_all_settled(stack, launches, RUNNING_WITHIN)
        print(f"\nFLUSHALL of 5 queued launches: {sum(s == 'RUNNING' for s, _ in states.values())} RUNNING "
              f"{time.monotonic() - started_at:.1f} s after the worker started")
        assert len(states) == 5 and set(states.values()) == {("RUNNING", None)}
    finally:
        if "worker" not in stack.processes.processes:
            stack.processes.start("worker")
        _finish(stack, launches)

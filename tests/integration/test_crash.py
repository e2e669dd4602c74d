"""Crash safety: the worker is SIGKILLed at each launch step in turn, and every launch still ends
RUNNING exactly once, with exactly one process or container.

The fault injection lives in the tests alone: the crashing worker (tests/crashing_worker.py) is
huey_consumer with the state machine wrapped, so that it kills itself with SIGKILL at
<before|after>:<step>. `before:wait_healthy` is the moment the tool has answered but RUNNING is
not yet recorded.

Each case: restart the worker as a crashing one; navigate to the tool; the worker dies; restart
it normally, with the production lease and reconcile period. Nobody else acts: once the dead
worker's lease has run out, the new worker's own reconciler queues the launch again (the dead
worker took its queue message with it), and the new worker resumes at the recorded step. Then
one row, RUNNING; one process or container, the very one the dead worker started when it got
that far (adopted, never killed); the tool answers through nginx; and a reconcile (run in the
test process, to save a command's start-up time) finds nothing to do.

The PostgreSQL + Redis stack runs the whole matrix, the SQLite stack the process backend's.
"""
import os
import signal
from pathlib import Path

import pytest

from tests import crashing_worker as crashing
from tests.integration.test_launch import _backend_state, _host, _wait_state
from tests.integration.test_lifecycle import (
    ensure_normal_worker,
    reconcile_here,
    restart_worker,
    stop_now,
    wait_for_event,
)

STEPS = {"echo": ("allocate", "start"),                # the process backend
         "busybox": ("allocate", "create", "start")}    # the docker backend


def _points(steps):
    """Every crash point of a backend's steps; after wait_healthy comes RUNNING, so no point."""
    points = [f"{when}:{step}" for step in steps for when in ("before", "after")]
    return points + ["before:wait_healthy"]


CASES = [(slug, point) for slug, steps in STEPS.items() for point in _points(steps)]
SQLITE_CASES = [(slug, point) for slug, point in CASES if slug == "echo"]
# A dead worker's lease runs out within BERTH_LEASE_SECONDS (10 s) and a reconciler runs every
# BERTH_RECONCILE_SECONDS (5 s); the launch then still has its start to finish.
RESUMED_WITHIN = 10 + 5 + 30


def _recorded_step(slug, point):
    """The step the database holds after a crash at point: the crashed step, or the one after."""
    when, step = point.split(":")
    steps = list(STEPS[slug]) + ["wait_healthy"]
    return step if when == "before" else steps[steps.index(step) + 1]


def _tool_processes(stack, instance_id):
    """Pids labelled with this deployment and instance that lead their session: one per tool.

    The process backend starts each tool in a session of its own; whatever the tool forks stays
    in that session and is not counted."""
    labels = {f"BERTH_DEPLOYMENT={stack.env['BERTH_DEPLOYMENT']}".encode(),
              f"BERTH_INSTANCE_ID={instance_id}".encode()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = set(Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"))
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and labels <= environ and int(fields[3]) == int(entry):
            found.append(int(entry))
    return found


def _containers(stack, instance_id):
    with stack.docker() as client:
        return [c.name for c in client.containers.list(
            all=True, filters={"label": f"berth.instance={instance_id}"})]


@pytest.fixture
def crashing_worker(stack):
    """crashing_worker(point) restarts the worker as one that dies at point; whatever happens,
    a normal worker runs after the test."""
    started = []

    def start(point):
        # The running worker is idle here; killing it saves the second or two a clean stop takes.
        stack.processes.kill("worker")
        started.append(crashing.start(stack.processes, point))
        return started[-1]

    yield start
    ensure_normal_worker(stack, abnormal=started)


def test_the_matrix_covers_every_step_of_both_backends():
    from berth.backends.docker import DockerBackend
    from berth.backends.process import ProcessBackend

    assert (ProcessBackend.steps, DockerBackend.steps) == (STEPS["echo"], STEPS["busybox"])
    assert len(CASES) == 5 + 7


MATRIX = ([pytest.param("postgres", slug, point, id=f"postgres-{slug}-{point}") for slug, point in CASES]
          + [pytest.param("sqlite", slug, point, id=f"sqlite-{slug}-{point}") for slug, point in SQLITE_CASES])


@pytest.mark.parametrize("berth_stack, slug, point", MATRIX, indirect=["berth_stack"])
def test_a_worker_killed_at_any_step_leaves_one_running_tool(stack, alice, crashing_worker, slug, point):
    browser = stack.login(alice)
    host = _host(stack, slug, alice)
    worker = crashing_worker(point)
    first = browser.get(stack.tool_url(slug, alice), headers={"Sec-Fetch-Mode": "navigate"}, timeout=10)
    assert first.status_code == 202
    assert worker.wait(timeout=60) == -signal.SIGKILL  # it reached the point and killed itself
    restart_worker(stack)

    [row] = stack.instances(host)
    try:
        assert (row["state"], row["step"]) == ("SPAWNING", _recorded_step(slug, point))
        _wait_state(stack, host, ("RUNNING", "FAILED"), timeout=RESUMED_WITHIN)

        rows = stack.instances(host)
        assert [(r["id"], r["state"], r["error"]) for r in rows] == [(row["id"], "RUNNING", None)]
        kinds = [e["kind"] for e in wait_for_event(stack, row["id"], "spawn.running")]
        assert kinds.count("spawn.running") == 1
        assert kinds.count("spawn.started") == 1
        assert "reconcile.resume" in kinds
        if _recorded_step(slug, point) == "wait_healthy":  # the tool had started: the same one runs
            assert _backend_state(stack.instances(host)[0]) == _backend_state(row)
        if slug == "busybox":
            assert _containers(stack, row["id"]) == [f"berth-{stack.env['BERTH_DEPLOYMENT']}-{row['id']}"]
            page = browser.get(stack.tool_url(slug, alice, "/index.html"), timeout=10)
            assert page.status_code == 200 and "Hello from busybox" in page.text
        else:
            assert len(_tool_processes(stack, row["id"])) == 1
            page = browser.get(stack.tool_url(slug, alice, "/after-the-crash"), timeout=10)
            assert page.status_code == 200 and page.json()["path"] == "/after-the-crash"

        # Nothing orphaned, nothing left to do about this launch. (Other tests' instances that
        # are still stopping may be queued again; that is no business of this test.)
        actions = reconcile_here(stack)
        assert [a for a in actions if a[0] == "orphan-removed" or a[1] == row["id"]] == []
    finally:
        stop_now(stack, row["id"])
    assert _containers(stack, row["id"]) == [] and _tool_processes(stack, row["id"]) == []

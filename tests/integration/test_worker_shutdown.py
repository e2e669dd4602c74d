"""A worker stopped as a container runtime stops it (SIGTERM, SIGKILL ~10 s later) while a launch
waits for its tool: the worker, run by deploy/entrypoint.sh, exits within 10 s, hands the launch
back as it leaves, and the other worker's reconciler takes it up at its next run, not once the
lease has run out; the launch ends RUNNING with the very tool the first worker started.
Production lease and reconcile period.
"""
import os
import signal
import time

import pytest

from deploy.local import BIN, ROOT, exit_code, kill_group, start_process
from tests.conftest import _make_stack
from tests.integration.test_crash import _tool_processes
from tests.integration.test_launch import _backend_state, _wait_state
from tests.integration.test_lifecycle import events_of, stop_now

NAVIGATE = {"Sec-Fetch-Mode": "navigate"}
RECONCILE_SECONDS = 5  # BERTH_RECONCILE_SECONDS's default
# The heartbeat renews a lease every third of BERTH_LEASE_SECONDS (10 s): a lease left to run
# out would outlast the worker by more than 6 s.
LEASE_OUTLASTS_THE_WORKER_BY = 10 * 2 / 3


@pytest.fixture(scope="module")
def shutdown_stack(postgres, redis_server, tmp_path_factory):
    stack = _make_stack("shutdown", postgres.create_database(f"berth_{os.urandom(3).hex()}"),
                        redis_server.url(8), tmp_path_factory.mktemp("shutdown"), docker_url="",
                        extra_env={"BERTH_BACKENDS": "process"})
    stack.start()
    yield stack
    stack.stop()


def _entrypoint_worker(stack, name):
    """A worker as the image runs it: `deploy/entrypoint.sh worker`, with its own metrics folder
    (the entrypoint empties it) and the stack's quick polling."""
    env = {**stack.env, "PATH": f"{BIN}:{os.environ['PATH']}",
           "BERTH_METRICS_DIR": str(stack.data_dir / f"metrics-{name}")}
    return start_process(["sh", str(ROOT / "deploy" / "entrypoint.sh"), "worker",
                          "-d", "0.05", "-m", "0.1", "-b", "1.1"],
                         stack.processes.log_path(name), env=env)


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s")


def test_a_worker_stopped_mid_launch_hands_it_to_another(shutdown_stack):
    stack = shutdown_stack
    user = stack.create_user()
    browser = stack.login(user)
    host = stack.tool_host("slow", user)
    stack.processes.stop("worker")
    leaving = _entrypoint_worker(stack, "worker-leaving")
    staying = None
    try:
        assert browser.get(stack.tool_url("slow", user), headers=NAVIGATE, timeout=10).status_code == 202
        row = _wait_for(lambda: next((r for r in stack.instances(host) if r["step"] == "wait_healthy"), None),
                        30, "the launch did not reach wait_healthy")
        assert f":{leaving.pid}:" in row["lease_owner"]  # the exec'd huey_consumer holds it
        staying = stack.processes.start("worker")
        time.sleep(1)  # the tool sleeps 20 s before it answers: the wait outlasts the stop

        os.kill(leaving.pid, signal.SIGTERM)
        asked = time.monotonic()
        _wait_for(lambda: exit_code(leaving) is not None, 10, "the worker did not exit on SIGTERM")
        exited = time.monotonic()
        assert exit_code(leaving) == 0
        log = stack.processes.log_path("worker-leaving").read_text()
        assert f"handed back instances [{row['id']}]" in log, log[-2000:]
        assert "Traceback" not in log, log[-4000:]

        _wait_for(lambda: "reconcile.resume" in [e["kind"] for e in events_of(stack, row["id"])],
                  RECONCILE_SECONDS + LEASE_OUTLASTS_THE_WORKER_BY, "the launch was not resumed")
        resumed = time.monotonic()
        running = _wait_state(stack, host, ("RUNNING", "FAILED"), timeout=40)
        print(f"\nworker stopped {exited - asked:.1f} s after SIGTERM; launch resumed "
              f"{resumed - exited:.1f} s after it exited, RUNNING {time.monotonic() - exited:.1f} s after")
        assert resumed - exited < LEASE_OUTLASTS_THE_WORKER_BY  # handed back, not left to run out
        assert (running["state"], running["error"]) == ("RUNNING", None)
        assert _backend_state(running)["pid"] == _backend_state(row)["pid"]  # adopted, not started again
        assert len(_tool_processes(stack, row["id"])) == 1
        page = browser.get(stack.tool_url("slow", user, "/after-the-stop"), timeout=10)
        assert page.status_code == 200 and page.json()["path"] == "/after-the-stop"
    finally:
        kill_group(leaving)
        for instance in stack.instances(host):
            stop_now(stack, instance["id"])
        if staying is None:
            stack.processes.start("worker")
        browser.close()

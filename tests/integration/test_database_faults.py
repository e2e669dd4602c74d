"""Faults of the database under launches in flight, with the production settings.

PostgreSQL is restarted while ten launches run: a fast shutdown (SIGINT: clients disconnected,
as `pg_ctl restart -m fast`) and a crash (SIGQUIT, as `-m immediate`: no clean shutdown,
recovery at start). Every launch must still end RUNNING, with its tool answering through
nginx: the worker retries what the outage interrupted and resumes at the recorded step.

The server is this module's own, so that restarting it disturbs no other test's stack.
"""
import os
import time
from pathlib import Path

import pytest

from tests.conftest import _make_stack
from tests.services import Postgres

LAUNCHES = 10
NAVIGATE = {"Sec-Fetch-Mode": "navigate"}


@pytest.fixture(scope="module")
def restartable_postgres():
    server = Postgres(durable=True)  # a crash keeps what was committed, as in production
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_stack(restartable_postgres, redis_server, tmp_path_factory):
    stack = _make_stack("db-faults", restartable_postgres.create_database(f"berth_{os.urandom(3).hex()}"),
                        redis_server.url(7), tmp_path_factory.mktemp("db-faults"), docker_url="",
                        extra_env={"BERTH_BACKENDS": "process"})
    stack.start()
    yield stack
    stack.stop()


def _states(stack, hosts):
    rows = [row for host in hosts for row in stack.instances(host)]
    return {row["id"]: (row["state"], row["error"]) for row in rows}


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_during_launches_fails_none_of_them(fault_stack, restartable_postgres, mode):
    stack = fault_stack
    users = [stack.create_user() for _ in range(LAUNCHES)]
    browsers = [stack.login(user) for user in users]
    hosts = [stack.tool_host("echo", user) for user in users]
    try:
        for browser, user in zip(browsers, users):
            answer = browser.get(stack.tool_url("echo", user), headers=NAVIGATE, timeout=10)
            assert answer.status_code == 202, answer.text[:300]
        down_for = restartable_postgres.restart(mode)

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                states = _states(stack, hosts)
            except Exception:  # noqa: BLE001 - the test's own connection may still be reconnecting
                time.sleep(0.5)
                continue
            if len(states) == LAUNCHES and all(state in ("RUNNING", "FAILED") for state, _ in states.values()):
                break
            time.sleep(0.5)
        print(f"\nPostgreSQL {mode} restart: down {down_for:.2f} s; "
              f"{sum(state == 'RUNNING' for state, _ in states.values())} of {LAUNCHES} launches running "
              f"{time.monotonic() - deadline + 90:.1f} s after the restart began")
        assert len(states) == LAUNCHES
        not_running = {id: state for id, state in states.items() if state[0] != "RUNNING"}
        for id in not_running:
            [row] = stack.query("SELECT backend_state FROM tool_instances WHERE id = :id", id=id)
            pid = (row["backend_state"] or {}).get("pid")
            stat = Path(f"/proc/{pid}/stat")
            print(f"instance {id}: {row['backend_state']}; "
                  f"/proc/{pid}/stat: {stat.read_text() if stat.exists() else 'gone'}")
        if not_running:  # what happened to them, and what the reconciler did meanwhile
            for event in stack.query("SELECT instance_id, kind, actor, message, created_at FROM events "
                                     "WHERE kind LIKE 'reconcile.%' OR instance_id = ANY(:ids) ORDER BY id",
                                     ids=list(not_running)):
                print(f"instance {event['instance_id']}: {event['created_at']:%H:%M:%S.%f} {event['kind']} "
                      f"({event['actor']}) {event['message']}")
        assert not_running == {}
        for browser, user in zip(browsers, users):
            page = browser.get(stack.tool_url("echo", user, "/after-the-restart"), timeout=10)
            assert page.status_code == 200 and page.json()["path"] == "/after-the-restart"
    finally:
        for host in hosts:
            for row in stack.instances(host):
                stack.stop_instance(row["id"])
        for browser in browsers:
            browser.close()


def test_a_task_whose_connection_died_ends_without_a_traceback(restartable_postgres, monkeypatch, caplog):
    """Leaving a task's app context rolls its session back; on a connection the server has
    dropped that fails, after the task's work is done. One line at info level, and the next task
    gets a working session."""
    from berth.extensions import db
    from berth.launch import tasks
    from berth.web import create_base_app

    url = restartable_postgres.create_database(f"berth_{os.urandom(3).hex()}")
    app = create_base_app("berth.worker", {"SQLALCHEMY_DATABASE_URI": url})
    monkeypatch.setattr(tasks, "_app", app)
    caplog.set_level("INFO")
    try:
        with tasks._app_context():
            backend = db.session.execute(db.text("SELECT pg_backend_pid()")).scalar()
            restartable_postgres._sql(f"SELECT pg_terminate_backend({backend})")
        lost = [record for record in caplog.records if "connection was lost" in record.getMessage()]
        assert [(record.levelname, record.exc_info) for record in lost] == [("INFO", None)]
        assert not any(record.exc_info for record in caplog.records)
        with tasks._app_context():
            assert db.session.execute(db.text("SELECT 1")).scalar() == 1
    finally:
        with app.app_context():
            db.engine.dispose()

"""The admin status page and the same facts in /metrics, on a whole Berth: the database, the
queue and its depth, the workers' heartbeats, the reconciler's last run, and when nginx last
(re)loaded, which a reload moves on. On PostgreSQL with Redis, and on the embedded SQLite.
"""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from deploy.local import nginx_binary
from tests.conftest import _make_stack

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scrape-" + os.urandom(16).hex()
RELOADED = re.compile(r"last \(re\)load (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def status_stack(request, tmp_path_factory):
    extra_env = {"BERTH_BACKENDS": "process", "BERTH_METRICS_TOKEN": TOKEN}
    if request.param == "postgres":
        database = request.getfixturevalue("postgres").create_database(f"berth_{os.urandom(3).hex()}")
        queue = request.getfixturevalue("redis_server").url(3)
    else:
        database = queue = None
    stack = _make_stack(f"status-{request.param}", database, queue, tmp_path_factory.mktemp("status"), "",
                        extra_env)
    stack.start()
    yield stack
    stack.stop()


def _status_page(stack, admin):
    with stack.login(admin) as browser:
        answer = browser.get(f"{stack.base_url}/admin/status", timeout=10)
    assert answer.status_code == 200, answer.text[:300]
    return answer.text


def _wait_for(stack, admin, text, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        page = _status_page(stack, admin)
        if text in page or time.monotonic() > deadline:
            assert text in page, page
            return page
        time.sleep(1)


def test_the_status_page_shows_every_part(status_stack):
    stack = status_stack
    admin = stack.create_user(is_admin=True)
    # The worker reports at every reconciler pass (every BERTH_RECONCILE_SECONDS, 5 s).
    page = _wait_for(stack, admin, "1 alive")
    head = max(path.name.split("_", 1)[0] for path in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert "Database</th>" in page and f"schema revision {head}" in page
    assert ("Redis: 0 messages waiting" if stack.env.get("BERTH_REDIS_URL") else "SQLite file: 0 messages waiting") in page
    assert re.search(r"last run \d+ s ago", page), page
    assert "configuration rendered" in page and RELOADED.search(page), page
    assert "Failing" not in page and "Unknown" not in page
    assert page.count('class="badge badge-running">Alive') == 1


def test_a_reload_of_nginx_shows_as_its_last_reload(status_stack):
    stack = status_stack
    admin = stack.create_user(is_admin=True)
    before = RELOADED.search(_status_page(stack, admin)).group(1)
    time.sleep(1.1)  # the page shows whole seconds
    prefix = stack.data_dir / "nginx"
    subprocess.run([nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
                    str(prefix / "logs" / "error.log"), "-s", "reload"], check=True, timeout=30)
    deadline = time.monotonic() + 10
    while (after := RELOADED.search(_status_page(stack, admin)).group(1)) == before:
        assert time.monotonic() < deadline, "the page still shows the load before the reload"
        time.sleep(0.2)
    assert after > before


def test_the_status_page_is_for_admins_only(status_stack):
    stack = status_stack
    user = stack.create_user()
    with stack.login(user) as browser:
        assert browser.get(f"{stack.base_url}/admin/status", timeout=10).status_code == 403


def test_metrics_carry_the_same_facts(status_stack):
    stack = status_stack
    admin = stack.create_user(is_admin=True)
    _wait_for(stack, admin, "1 alive")
    answer = requests.get(f"{stack.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 200
    found = {sample.name: sample for family in text_string_to_metric_families(answer.text)
             for sample in family.samples}
    assert found["berth_database_up"].value == 1
    assert found["berth_queue_up"].value == 1
    assert found["berth_queue_depth"].value == 0
    assert found["berth_workers_alive"].value == 1
    now = time.time()
    assert now - 30 < found["berth_worker_last_heartbeat_timestamp_seconds"].value <= now + 1
    assert now - 30 < found["berth_reconciler_last_run_timestamp_seconds"].value <= now + 1
    assert found["berth_nginx_config_rendered_timestamp_seconds"].value <= now
    assert found["berth_nginx_workers_started_timestamp_seconds"].value <= now

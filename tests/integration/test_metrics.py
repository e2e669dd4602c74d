"""GET /metrics through nginx on a real stack: who may read it, and that what it reports adds up
across processes (granian's or gunicorn's auth workers, the Huey worker, `berth` commands).

One stack for this module, with a scrape token and a metrics network. On PostgreSQL the auth
service runs on gunicorn, on SQLite on granian (the default), each with three worker processes.
"""
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _make_stack
from tests.integration.test_launch import _backend_state, _host, _wait_gone, _wait_state
from tests.integration.test_lifecycle import cull_idle

TOKEN = "scrape-" + os.urandom(16).hex()
NETWORK_CLIENT = "192.0.2.7"  # in BERTH_METRICS_NETWORKS, behind one trusted proxy (127.0.0.1)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def stack(request, tmp_path_factory):
    extra_env = {
        "BERTH_METRICS_TOKEN": TOKEN,
        "BERTH_METRICS_NETWORKS": "192.0.2.0/24",
        "BERTH_TRUSTED_HOPS": "1",
        "BERTH_TRUSTED_PROXIES": "127.0.0.1/32",
        "BERTH_WEB_WORKERS": "3",
        "BERTH_AUTH_WORKERS": "3",
        "BERTH_AUTH_SERVER": "gunicorn" if request.param == "postgres" else "granian",
        "BERTH_BACKENDS": "process",
    }
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        redis = request.getfixturevalue("redis_server")
        berth = _make_stack("metrics-pg", server.create_database(f"berth_{os.urandom(3).hex()}"),
                            redis.url(2), tmp_path_factory.mktemp("stacks"), "", extra_env)
    else:
        berth = _make_stack("metrics-sqlite", None, None, tmp_path_factory.mktemp("stacks"), "",
                            extra_env)
    berth.start()
    yield berth
    berth.stop()


def scrape(stack, **headers):
    return requests.get(f"{stack.base_url}/metrics", headers=headers, timeout=10)


def samples(stack):
    """{(sample name, ((label, value), ...)): value} from an authorised scrape."""
    answer = scrape(stack, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200, answer.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))), 0)


def wait_for_count(stack, name, at_least, timeout=5, **labels):
    """A process counts an event just after it records it in the database: wait for the count."""
    deadline = time.monotonic() + timeout
    while value(samples(stack), name, **labels) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)


def metrics_dir(stack):
    return Path(stack.data_dir) / "metrics"


def _running(stack, slug):
    return stack.query("SELECT count(*) AS n FROM tool_instances i JOIN tool_templates t "
                       "ON t.id = i.template_id WHERE t.slug = :slug AND i.state = 'RUNNING'",
                       slug=slug)[0]["n"]


def _unauthenticated(stack):
    return requests.get(f"{stack.base_url}/api/me", headers={"Accept": "application/json"}, timeout=10)


# -- who may read it ---------------------------------------------------------------------------
def test_metrics_are_refused_without_the_token_or_with_a_wrong_one(stack):
    missing = scrape(stack)
    assert missing.status_code == 403
    assert "BERTH_METRICS_NETWORKS" in missing.text
    wrong = scrape(stack, Authorization="Bearer not-the-scrape-token-at-all")
    assert wrong.status_code == 403
    # A Berth session or API token is no scrape token either: nginx asks nobody about /metrics.
    assert scrape(stack, Authorization="Bearer berth_" + "x" * 43).status_code == 403


def test_metrics_answer_the_token_in_prometheus_text(stack):
    answer = scrape(stack, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    for name in ("berth_auth_checks_total", "berth_auth_check_duration_seconds_bucket",
                 "berth_reconciler_actions_total", "berth_culled_instances_total", "berth_instances"):
        assert f"\n{name}" in answer.text, name


def test_metrics_answer_an_address_in_the_metrics_networks_behind_a_trusted_proxy(stack):
    assert scrape(stack, **{"X-Forwarded-For": NETWORK_CLIENT}).status_code == 200
    assert scrape(stack, **{"X-Forwarded-For": "198.51.100.1"}).status_code == 403
    # Only one hop is trusted: an address the client wrote further left proves nothing.
    assert scrape(stack, **{"X-Forwarded-For": f"{NETWORK_CLIENT}, 198.51.100.1"}).status_code == 403


def test_metrics_are_not_served_on_a_tool_host(stack, alice):
    answer = requests.get(stack.tool_url("echo", alice, "/metrics"),
                          headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
                          timeout=10)
    assert answer.status_code == 401  # a tool host's /metrics is the tool's, behind sign-in


# -- what it counts ------------------------------------------------------------------------------
def test_a_launch_counts_its_outcome_spawn_time_and_running_instance(stack, alice):
    before = samples(stack)
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    unauthenticated = _unauthenticated(stack)
    assert unauthenticated.status_code == 401

    spawns = "berth_spawn_duration_seconds_count"  # counted last
    wait_for_count(stack, spawns, value(before, spawns, backend="process") + 1, backend="process")
    after = samples(stack)
    launched = "berth_launches_total", {"backend": "process", "outcome": "running"}
    assert value(after, launched[0], **launched[1]) == value(before, launched[0], **launched[1]) + 1
    spawn_count = value(after, "berth_spawn_duration_seconds_count", backend="process")
    assert spawn_count == value(before, "berth_spawn_duration_seconds_count", backend="process") + 1
    assert value(after, "berth_spawn_duration_seconds_sum", backend="process") > 0
    assert value(after, "berth_instances", template="echo", state="RUNNING") == 1
    assert value(after, "berth_instances", template="broken", state="RUNNING") == 0
    # The auth checks of the visit: the tool (200 tool), its starting page and the catalogue
    # (200 web), and the request without a session (401).
    for status, target in (("200", "tool"), ("200", "web"), ("401", "none")):
        assert value(after, "berth_auth_checks_total", status=status, target=target) > \
            value(before, "berth_auth_checks_total", status=status, target=target), (status, target)
    assert value(after, "berth_auth_check_duration_seconds_count", status="401") == \
        value(after, "berth_auth_checks_total", status="401", target="none")


def _per_process(directory, name, **labels):
    """The value each process wrote for one sample: {pid: value}, read file by file."""
    found = {}
    for path in Path(directory).glob("counter_*.db"):
        alone = tempfile.mkdtemp()
        try:
            shutil.copy(path, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=alone)
            for family in registry.collect():
                for sample in family.samples:
                    if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                        found[int(path.stem.split("_")[1])] = sample.value
        finally:
            shutil.rmtree(alone)
    return found


def test_auth_checks_from_every_auth_worker_process_are_summed(stack):
    before = value(samples(stack), "berth_auth_checks_total", status="401", target="none")
    sent = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        # Concurrent requests make nginx open several connections to the auth service, which its
        # worker processes share out; keep sending until at least two processes have counted.
        for _ in range(20):
            answers = list(pool.map(lambda _: _unauthenticated(stack).status_code, range(48)))
            assert answers == [401] * 48
            sent += 48
            counting = {pid: n for pid, n in _per_process(metrics_dir(stack), "berth_auth_checks_total",
                                                          status="401").items() if n}
            if len(counting) >= 2:
                break
    assert len(counting) >= 2, counting
    total = value(samples(stack), "berth_auth_checks_total", status="401", target="none")
    assert total == before + sent
    assert total == sum(counting.values())


def test_the_reconciler_counts_a_tool_that_was_gone(stack, bob):
    browser = stack.login(bob)
    stack.open_tool(browser, "echo", bob)
    host = _host(stack, "echo", bob)
    [row] = stack.instances(host)
    before = value(samples(stack), "berth_reconciler_actions_total", action="failed")
    pid = _backend_state(row)["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)

    result = stack.berth("reconcile")  # `berth` writes to the same folder as the worker
    assert result.returncode == 0, result.stderr
    _wait_state(stack, host, ("FAILED",))
    # The worker's own reconciler (every minute) may have been first: either way, counted once.
    after = samples(stack)
    assert value(after, "berth_reconciler_actions_total", action="failed") == before + 1
    assert value(after, "berth_instances", template="echo", state="RUNNING") == _running(stack, "echo")


def test_the_culler_counts_an_idle_tool_it_stopped(stack):
    user = stack.create_user()
    browser = stack.login(user)
    stack.open_tool(browser, "echo", user)
    host = _host(stack, "echo", user)
    [row] = stack.instances(host)
    before = value(samples(stack), "berth_culled_instances_total")
    cull_idle(stack, row)
    wait_for_count(stack, "berth_culled_instances_total", before + 1)
    assert value(samples(stack), "berth_culled_instances_total") == before + 1
    assert value(samples(stack), "berth_instances", template="echo", state="RUNNING") == _running(stack, "echo")


def test_the_metrics_folder_is_emptied_when_the_stack_starts(tmp_path):
    from deploy.local import Stack

    stale = tmp_path / "metrics" / "counter_999999.db"
    stale.parent.mkdir()
    stale.write_bytes(b"left over from the previous run")
    Stack({"BERTH_DATA_DIR": str(tmp_path)}, tmp_path)
    assert list((tmp_path / "metrics").iterdir()) == []

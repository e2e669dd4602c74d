"""GET /metrics per process, as in containers: each process scraped at its own port, each summing
only its own BERTH_METRICS_DIR.

One stack on SQLite whose auth, web and worker each get a metrics folder of their own, as each
container has in compose, Kubernetes and ECS (docs/decisions/0009-metrics.md). The auth service
answers /metrics on its port, the worker on BERTH_WORKER_METRICS_PORT, the web app on its port
and through nginx. The scrape token opens each; so does 127.0.0.2, the one address in
BERTH_METRICS_NETWORKS, but only as the TCP peer: the tests connect from 127.0.0.1 (refused) or
from 127.0.0.2 (allowed), and what a direct request says in X-Forwarded-For or X-Real-IP never
counts.
"""
import http.client
import os
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _make_stack
from tests.services import free_port

TOKEN = "scrape-" + os.urandom(16).hex()
ALLOWED = "127.0.0.2"  # BERTH_METRICS_NETWORKS; 127.0.0.1, where requests come from, is not in it


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    extra_env = {
        "BERTH_METRICS_TOKEN": TOKEN,
        "BERTH_METRICS_NETWORKS": f"{ALLOWED}/32",
        # One trusted hop: the web app's ProxyFix then rewrites REMOTE_ADDR from X-Forwarded-For,
        # which a direct scraper could write itself.
        "BERTH_TRUSTED_HOPS": "1",
        "BERTH_BACKENDS": "process",
        "BERTH_AUTH_WORKERS": "2",
        "BERTH_WORKER_METRICS_PORT": str(free_port()),
    }
    berth = _make_stack("metrics-pods", None, None, tmp_path_factory.mktemp("stacks"), "", extra_env)
    berth.prepare_database()
    berth.processes.render_nginx(berth.app.config)
    for name in ("auth", "web", "worker", "nginx"):  # a metrics folder per "container"
        berth.processes.start(name, extra_env={"BERTH_METRICS_DIR": str(berth.data_dir / f"metrics-{name}")})
    try:
        berth.wait_ready()
        _wait_listening(int(extra_env["BERTH_WORKER_METRICS_PORT"]))
        yield berth
    finally:
        berth.stop()


def _wait_listening(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            direct(port)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def ports(pods):
    return {"auth": int(pods.env["BERTH_AUTH_PORT"]), "web": int(pods.env["BERTH_WEB_PORT"]),
            "worker": int(pods.env["BERTH_WORKER_METRICS_PORT"])}


def direct(port, path="/metrics", source="127.0.0.1", **headers):
    """GET straight to a process's port, not through nginx, from the source address given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def parse(text):
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(port):
    status, text = direct(port, Authorization=f"Bearer {TOKEN}")
    assert status == 200, text
    return parse(text)


def value(found, name, **labels):
    return found.get((name, tuple(sorted(labels.items()))), 0)


def through_nginx(pods, **headers):
    return requests.get(f"{pods.base_url}/metrics", headers=headers, timeout=10)


# -- what each process reports -----------------------------------------------------------------
def test_each_process_reports_its_own_counters_at_its_own_port(pods):
    user = pods.create_user()
    browser = pods.login(user)
    pods.open_tool(browser, "echo", user)
    launched = {"backend": "process", "outcome": "running"}

    # The worker's port: the launch, which only the worker saw.
    deadline = time.monotonic() + 5
    while value(worker := scrape(ports(pods)["worker"]), "berth_launches_total", **launched) < 1 \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value(worker, "berth_launches_total", **launched) == 1
    assert value(worker, "berth_spawn_duration_seconds_count", backend="process") == 1
    assert value(worker, "berth_auth_checks_total", status="200", target="tool") == 0
    assert not any(name == "berth_instances" for name, _ in worker)

    # The auth service's port: the auth checks of the visit.
    auth = scrape(ports(pods)["auth"])
    for status, target in (("200", "tool"), ("200", "web")):
        assert value(auth, "berth_auth_checks_total", status=status, target=target) > 0, (status, target)
    assert value(auth, "berth_auth_check_duration_seconds_count", status="200") > 0
    assert value(auth, "berth_launches_total", **launched) == 0
    assert not any(name == "berth_instances" for name, _ in auth)

    # The web app, through nginx on the main host: the database gauge, and none of the others'
    # counters, which live in their own folders.
    answer = through_nginx(pods, Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200, answer.text
    web = parse(answer.text)
    assert value(web, "berth_instances", template="echo", state="RUNNING") == 1
    assert value(web, "berth_launches_total", **launched) == 0
    assert value(web, "berth_auth_checks_total", status="200", target="tool") == 0
    # The same at its own port, but for nginx's facts about itself, which only nginx can give.
    nginx_facts = {("berth_nginx_config_rendered_timestamp_seconds", ()),
                   ("berth_nginx_workers_started_timestamp_seconds", ())}
    assert nginx_facts <= web.keys()
    assert parse(direct(ports(pods)["web"], Authorization=f"Bearer {TOKEN}")[1]).keys() == web.keys() - nginx_facts


# -- who may scrape a process directly ------------------------------------------------------------
@pytest.mark.parametrize("process", ["auth", "web", "worker"])
def test_a_direct_scrape_needs_the_token_or_a_peer_in_the_networks(pods, process):
    port = ports(pods)[process]
    status, reason = direct(port)
    assert status == 403
    assert "BERTH_METRICS_NETWORKS" in reason
    assert direct(port, Authorization="Bearer not-the-scrape-token-at-all")[0] == 403
    # A direct peer cannot name itself an allowed address: no proxy of Berth's stands in between.
    assert direct(port, **{"X-Forwarded-For": ALLOWED, "X-Real-IP": ALLOWED})[0] == 403
    assert direct(port, **{"X-Forwarded-For": f"{ALLOWED}, {ALLOWED}"})[0] == 403
    assert direct(port, Authorization=f"Bearer {TOKEN}")[0] == 200
    status, text = direct(port, source=ALLOWED)
    assert status == 200
    assert "berth_reconciler_actions_total" in text


@pytest.mark.parametrize("process, path", [("auth", "/auth/login"), ("auth", "/auth/check"),
                                           ("web", "/"), ("web", "/api/me")])
def test_only_metrics_answers_without_the_proxy_secret(pods, process, path):
    status, text = direct(ports(pods)[process], path, source=ALLOWED, Authorization=f"Bearer {TOKEN}")
    assert status == 403
    assert "only through its nginx" in text


def test_the_worker_port_serves_only_metrics(pods):
    assert direct(ports(pods)["worker"], "/", Authorization=f"Bearer {TOKEN}")[0] == 404
    assert direct(ports(pods)["worker"], "/metrics/x", source=ALLOWED)[0] == 404


def test_through_nginx_the_address_nginx_saw_counts_as_before(pods):
    assert through_nginx(pods).status_code == 403  # nginx saw 127.0.0.1
    # One trusted hop: the address the proxy in front of nginx forwarded.
    assert through_nginx(pods, **{"X-Forwarded-For": ALLOWED}).status_code == 200
    assert through_nginx(pods, **{"X-Forwarded-For": f"{ALLOWED}, 198.51.100.1"}).status_code == 403

"""berth/metrics.py in-process: who may read /metrics (through nginx, or directly at a process's
own port), what the auth-check wrapper counts, and the worker's metrics server.

The integration tests (tests/integration/test_metrics.py, test_metrics_per_process.py) check the
same on real processes."""
import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.services import free_port
from berth import metrics
from berth.metrics import TimedAuthCheck, access_refused, serve_worker_metrics, tcp_peer, worker_metrics_app

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "a-scrape-token-of-32-characters!"
PROXY_SECRET = "the-proxy-secret-nginx-sends"
OFFICE = (ipaddress.ip_network("10.1.0.0/16"),)
NGINX = "127.0.0.1"  # the TCP peer of a request that came through nginx


def config(token=None, networks=(), hops=0, proxies=()):
    return {"BERTH_METRICS_TOKEN": token, "BERTH_METRICS_NETWORKS": networks,
            "BERTH_TRUSTED_HOPS": hops, "BERTH_TRUSTED_PROXIES": proxies,
            "BERTH_PROXY_SECRET": PROXY_SECRET}


def through_nginx(client, forwarded=None, **headers):
    """The headers nginx's to_berth snippet sends: X-Real-IP, X-Forwarded-For with it appended,
    and the proxy secret."""
    return {"X-Real-IP": client, "X-Forwarded-For": f"{forwarded}, {client}" if forwarded else client,
            "X-Berth-Proxy-Secret": PROXY_SECRET, **headers}


def test_metrics_are_off_with_neither_token_nor_networks():
    status, reason = access_refused(config(), through_nginx("10.1.2.3", Authorization=f"Bearer {TOKEN}"))
    assert status == 404
    assert "BERTH_METRICS_TOKEN" in reason and "BERTH_METRICS_NETWORKS" in reason


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  Bearer   {TOKEN} "])
def test_the_scrape_token_opens_metrics(authorization):
    assert access_refused(config(token=TOKEN), through_nginx("203.0.113.9", Authorization=authorization)) is None


@pytest.mark.parametrize("authorization", [None, "", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN,
                                           "Bearer berth_" + "x" * 43])
def test_anything_but_the_scrape_token_is_refused(authorization):
    headers = through_nginx("203.0.113.9")
    if authorization is not None:
        headers["Authorization"] = authorization
    status, reason = access_refused(config(token=TOKEN), headers)
    assert status == 403
    assert "scrape token" in reason


def test_an_address_in_the_metrics_networks_opens_metrics_and_others_are_refused():
    assert access_refused(config(networks=OFFICE), through_nginx("10.1.2.3")) is None
    status, reason = access_refused(config(networks=OFFICE), through_nginx("10.2.0.1"))
    assert status == 403
    assert "BERTH_METRICS_NETWORKS" in reason


def test_a_client_cannot_claim_an_address_in_the_networks_with_x_forwarded_for():
    # No trusted hop: X-Forwarded-For was written by the client, and only nginx's peer counts.
    assert access_refused(config(networks=OFFICE), through_nginx("203.0.113.9", "10.1.2.3"))[0] == 403


def test_behind_a_trusted_proxy_the_address_it_forwarded_counts():
    proxy = (ipaddress.ip_network("192.0.2.0/24"),)
    trusted = config(networks=OFFICE, hops=1, proxies=proxy)
    assert access_refused(trusted, through_nginx("192.0.2.5", "10.1.2.3")) is None
    # The same header from an address that is not the trusted proxy proves nothing.
    assert access_refused(trusted, through_nginx("203.0.113.9", "10.1.2.3"))[0] == 403
    # One hop trusted: what the client wrote left of the proxy's entry is ignored.
    assert access_refused(trusted, through_nginx("192.0.2.5", "10.1.2.3, 203.0.113.9"))[0] == 403


def test_token_or_network_either_opens_metrics_when_both_are_set():
    both = config(token=TOKEN, networks=OFFICE)
    assert access_refused(both, through_nginx("10.1.2.3")) is None
    assert access_refused(both, through_nginx("203.0.113.9", Authorization=f"Bearer {TOKEN}")) is None
    assert access_refused(both, through_nginx("203.0.113.9"))[0] == 403


# -- starting to count --------------------------------------------------------------------------------
COUNTING_PROCESS = textwrap.dedent("""
    import os
    import prometheus_client  # before Berth's metrics, as another library might
    from berth import metrics

    inherited = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    assert not os.path.exists(os.path.join(os.environ["BERTH_DATA_DIR"], "metrics"))
    metrics.record_culled(2)
    print(inherited, os.environ["PROMETHEUS_MULTIPROC_DIR"])
""")


@pytest.mark.parametrize("inherited", [False, True])
def test_importing_metrics_does_nothing_and_the_first_count_starts_in_berth_metrics_dir(tmp_path, inherited):
    """Nothing is set, made or counted on import; the first count writes into BERTH_METRICS_DIR,
    even when prometheus_client came first, and over a PROMETHEUS_MULTIPROC_DIR inherited from a
    parent process."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("PROMETHEUS_MULTIPROC_DIR", "BERTH_METRICS_DIR")}
    env.update(PYTHONPATH=str(ROOT), BERTH_DATA_DIR=str(tmp_path / "data"))
    if inherited:
        (tmp_path / "parent").mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "parent")
    result = subprocess.run([sys.executable, "-c", COUNTING_PROCESS], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "data" / "metrics"
    assert result.stdout.split() == [env.get("PROMETHEUS_MULTIPROC_DIR", "None"), str(folder)]
    assert _count("berth_culled_instances_total", path=folder) == 2
    assert not inherited or not os.listdir(tmp_path / "parent")


def test_a_process_counts_in_one_folder_whichever_starts_it():
    started = metrics.start()
    assert metrics.start() is started
    assert metrics.start(started.directory) is started
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == started.directory


# -- the auth-check wrapper ------------------------------------------------------------------------
def _count(name, path=None, **labels):
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path or metrics.start().directory))
    return sum(sample.value for family in registry.collect() for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def _answering(status, headers=()):
    def app(environ, start_response):
        start_response(status, list(headers))
        return [b""]
    return app


@pytest.mark.parametrize("status, headers, labels", [
    ("200 OK", [("X-Berth-Upstream", "berth_tool_20001")], {"status": "200", "target": "tool"}),
    ("200 OK", [("X-Berth-Upstream", "berth_web"), ("X-Berth-Page", "start")], {"status": "200", "target": "web"}),
    ("401 Unauthorized", [("X-Berth-Login-Url", "http://x/")], {"status": "401", "target": "none"}),
    ("403 Forbidden", [], {"status": "403", "target": "none"}),
])
def test_the_auth_check_wrapper_counts_and_times_each_answer(status, headers, labels):
    wrapped = TimedAuthCheck(_answering(status, headers))
    before = _count("berth_auth_checks_total", **labels)
    timed_before = _count("berth_auth_check_duration_seconds_count", status=labels["status"])
    seen = []
    assert wrapped({"PATH_INFO": "/auth/check"}, lambda s, h, e=None: seen.append(s)) == [b""]
    assert seen == [status]
    assert _count("berth_auth_checks_total", **labels) == before + 1
    assert _count("berth_auth_check_duration_seconds_count", status=labels["status"]) == timed_before + 1


def test_the_auth_check_wrapper_counts_a_crash_as_500_and_ignores_other_paths():
    def broken(environ, start_response):
        raise RuntimeError("the check failed")

    wrapped = TimedAuthCheck(broken)
    before = _count("berth_auth_checks_total", status="500")
    with pytest.raises(RuntimeError):
        wrapped({"PATH_INFO": "/auth/check"}, lambda *a: None)
    assert _count("berth_auth_checks_total", status="500") == before + 1

    total = _count("berth_auth_checks_total")
    TimedAuthCheck(_answering("200 OK"))({"PATH_INFO": "/auth/login"}, lambda *a: None)
    assert _count("berth_auth_checks_total") == total


# -- direct scrapes: a scraper at the pod's own port, without nginx ---------------------------------
def test_a_direct_scrape_is_judged_by_its_tcp_peer():
    assert access_refused(config(networks=OFFICE), {}, peer="10.1.2.3") is None
    assert access_refused(config(networks=OFFICE), {}, peer="::ffff:10.1.2.3") is None
    status, reason = access_refused(config(networks=OFFICE), {}, peer="203.0.113.9")
    assert status == 403
    assert "BERTH_METRICS_NETWORKS" in reason


@pytest.mark.parametrize("headers", [
    {"X-Real-IP": "10.1.2.3"},
    {"X-Forwarded-For": "10.1.2.3"},
    {"X-Real-IP": "10.1.2.3", "X-Forwarded-For": "10.1.2.3, 10.1.2.3"},
    # A wrong proxy secret is no proxy secret: the request did not come through nginx.
    {"X-Real-IP": "10.1.2.3", "X-Berth-Proxy-Secret": "a-guess-at-the-secret"},
    {"X-Real-IP": "10.1.2.3", "X-Berth-Proxy-Secret": ""},
])
def test_a_direct_peer_cannot_claim_an_address_in_the_networks_with_headers(headers):
    # Even with a trusted hop, and the peer in BERTH_TRUSTED_PROXIES: no proxy of Berth's stands
    # between a direct scraper and the server, so nothing the request says about addresses counts.
    trusting = config(networks=OFFICE, hops=1, proxies=(ipaddress.ip_network("203.0.113.0/24"),))
    assert access_refused(trusting, headers, peer="203.0.113.9")[0] == 403


def test_a_direct_scrape_with_the_token_is_allowed_from_anywhere():
    assert access_refused(config(token=TOKEN, networks=OFFICE), {"Authorization": f"Bearer {TOKEN}"},
                          peer="203.0.113.9") is None
    assert access_refused(config(token=TOKEN), {}, peer="10.1.2.3")[0] == 403


def test_without_a_proxy_secret_no_request_counts_as_through_nginx():
    unset = {**config(networks=OFFICE), "BERTH_PROXY_SECRET": None}
    headers = {"X-Real-IP": "10.1.2.3", "X-Berth-Proxy-Secret": ""}
    assert access_refused(unset, headers, peer="203.0.113.9")[0] == 403


def test_the_tcp_peer_is_the_address_before_proxy_fix_rewrote_it():
    assert tcp_peer({"REMOTE_ADDR": "10.1.2.3"}) == "10.1.2.3"
    assert tcp_peer({"REMOTE_ADDR": "10.1.2.3",  # what ProxyFix set from X-Forwarded-For
                     "werkzeug.proxy_fix.orig": {"REMOTE_ADDR": "203.0.113.9"}}) == "203.0.113.9"
    assert tcp_peer({}) == ""


def _families(text):
    return {family.name for family in text_string_to_metric_families(text)}


SCRAPER_SETTINGS = {"BERTH_METRICS_TOKEN": TOKEN, "BERTH_METRICS_NETWORKS": OFFICE,
                    "BERTH_PROXY_SECRET": PROXY_SECRET, "BERTH_TRUSTED_HOPS": 1, "TESTING": True}


@pytest.fixture
def web_app(tmp_path):
    from webapp import create_app
    from berth.extensions import db

    app = create_app({**SCRAPER_SETTINGS, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/berth.db"})
    with app.app_context():
        db.create_all()
    return app


@pytest.fixture
def auth_app(tmp_path):
    from auth_service import create_app

    return create_app({**SCRAPER_SETTINGS, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/berth.db"})


def _direct(client, path="/metrics", peer="203.0.113.9", **headers):
    return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": peer})


@pytest.mark.parametrize("which", ["web_app", "auth_app"])
def test_web_and_auth_answer_a_direct_scrape_without_the_proxy_secret(request, which):
    client = request.getfixturevalue(which).test_client()
    assert _direct(client, Authorization=f"Bearer {TOKEN}").status_code == 200
    assert _direct(client, peer="10.1.2.3").status_code == 200
    refused = _direct(client)
    assert refused.status_code == 403
    assert b"BERTH_METRICS_NETWORKS" in refused.data
    # With one trusted hop (two with nginx) the web app's ProxyFix takes 10.1.2.3 from this
    # X-Forwarded-For for the client; the gate reads the TCP peer instead.
    spoofed = {"X-Forwarded-For": "10.1.2.3, 10.1.2.3", "X-Real-IP": "10.1.2.3"}
    assert _direct(client, **spoofed).status_code == 403
    # Through nginx (the proxy secret), the address nginx saw counts, as before.
    assert _direct(client, peer="127.0.0.1", **through_nginx("10.1.2.3")).status_code == 200
    assert _direct(client, peer="10.1.2.3", **through_nginx("203.0.113.9")).status_code == 403


@pytest.mark.parametrize("which, path", [("web_app", "/"), ("auth_app", "/auth/login")])
def test_everything_but_metrics_still_needs_the_proxy_secret(request, which, path):
    client = request.getfixturevalue(which).test_client()
    answer = _direct(client, path, peer="10.1.2.3", Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 403
    assert b"only through its nginx" in answer.data


def test_only_the_web_app_reports_the_database_gauges(web_app, auth_app):
    web = _direct(web_app.test_client(), Authorization=f"Bearer {TOKEN}").get_data(as_text=True)
    auth = _direct(auth_app.test_client(), Authorization=f"Bearer {TOKEN}").get_data(as_text=True)
    assert "berth_instances" in _families(web)
    assert "berth_instances" not in _families(auth)
    assert "berth_auth_checks" in _families(auth)  # its own processes' counters (this one's files)


# -- the worker's metrics port ---------------------------------------------------------------------
def test_the_worker_app_serves_metrics_behind_the_gate_and_nothing_else():
    from werkzeug.test import Client

    client = Client(worker_metrics_app(config(token=TOKEN, networks=OFFICE)))

    def get(path="/metrics", peer="203.0.113.9", **headers):
        return client.get(path, headers=headers, environ_base={"REMOTE_ADDR": peer})

    answer = get(Authorization=f"Bearer {TOKEN}")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = _families(answer.get_data(as_text=True))
    assert "berth_reconciler_actions" in families and "berth_instances" not in families
    assert get(peer="10.1.2.3").status_code == 200
    assert get().status_code == 403
    # Nothing proxies to the worker: not even the real proxy secret makes X-Real-IP count.
    assert get(**through_nginx("10.1.2.3")).status_code == 403
    assert get("/", Authorization=f"Bearer {TOKEN}").status_code == 404
    assert client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    off = Client(worker_metrics_app(config()))
    assert off.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 404


@pytest.fixture
def fresh_process(monkeypatch):
    """As if this process had not started its worker metrics server yet."""
    import berth.metrics

    monkeypatch.setattr(berth.metrics, "_server_pid", None)


def test_the_worker_metrics_server_starts_once_per_process_on_its_port(fresh_process):
    settings = {**config(token=TOKEN), "BERTH_WORKER_METRICS_PORT": free_port(),
                "BERTH_WORKER_METRICS_HOST": "127.0.0.1"}
    server = serve_worker_metrics(settings)
    try:
        assert server is not None
        assert serve_worker_metrics(settings) is None  # the next worker thread's startup hook
        url = f"http://127.0.0.1:{settings['BERTH_WORKER_METRICS_PORT']}/metrics"
        assert requests.get(url, timeout=5).status_code == 403
        answer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert answer.status_code == 200
        assert "berth_reconciler_actions" in _families(answer.text)
    finally:
        server.shutdown()
        server.server_close()


def test_the_worker_serves_no_metrics_without_a_port_and_survives_a_taken_one(fresh_process, caplog):
    assert serve_worker_metrics(config(token=TOKEN)) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = {**config(token=TOKEN), "BERTH_WORKER_METRICS_PORT": taken.getsockname()[1]}
        assert serve_worker_metrics(settings) is None
    assert "cannot listen on 127.0.0.1" in caplog.text

"""Prometheus metrics: what Berth counts, and the GET /metrics that report it.

Who serves /metrics: the web app (on the main host through nginx, and on its own port), the
auth service (on its own port), and the worker (on BERTH_WORKER_METRICS_PORT, when set). Each
sums the files in its own BERTH_METRICS_DIR: on one machine that is every process's, in
containers only that container's, which Prometheus then scrapes one by one.

Where each number comes from (README, Operations, "Metrics"):

- Counters and histograms are written by the process that saw the event: the auth service
  (auth checks), the worker (launches, spawn durations, reconciler and culler actions), and
  `berth reconcile` / `berth cull`. prometheus_client's multiprocess mode keeps each process's
  values in files of its own under BERTH_METRICS_DIR; /metrics sums the files of every process
  that wrote there, including processes that have exited, so gunicorn's and granian's worker
  processes, and restarts, add up.
- Gauges of state (live instances by template and state) are read from the database when
  Prometheus scrapes, so they are right whichever replica answers.

Importing this module sets, creates and counts nothing. A process starts counting with start(),
once: it points prometheus_client at BERTH_METRICS_DIR, then creates Berth's metrics. The app
factories call it (init_app), so does the worker's startup hook (serve_worker_metrics), and any
other process that counts (`berth reconcile`) starts on its first count, so that no process
counts in memory only (docs/decisions/0009-metrics.md).
"""
import hmac
import logging
import os
import socket
import threading
from socketserver import ThreadingMixIn
from time import perf_counter
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from sqlalchemy.exc import DBAPIError

from berth.settings import SettingError, metrics_dir

log = logging.getLogger(__name__)

# -- what is counted ------------------------------------------------------------------------

_RECONCILER_ACTIONS = ("failed", "resumed", "stop-again", "orphan-removed")


class Metrics:
    """Berth's counters and histograms in this process, writing into `directory`.

    Their values live in the folder's files, which exposition() sums with a registry of its own
    at every scrape. They are also in prometheus_client's default registry, as any metric is by
    default; nothing reads that one."""

    def __init__(self, directory):
        self.directory = directory
        self.launches = Counter(
            "berth_launches", "Launches that finished starting, by backend and outcome (running or failed).",
            ["backend", "outcome"])
        self.spawn_seconds = Histogram(
            "berth_spawn_duration_seconds",
            "Time from a launch's first step to the tool answering its health check, by backend.",
            ["backend"], buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600))
        self.reconciler_actions = Counter(
            "berth_reconciler_actions",
            "What the reconciler did: failed (a running tool was gone), resumed (a launch), "
            "stop-again (a stop), orphan-removed (a tool with no live instance).", ["action"])
        self.culled = Counter("berth_culled_instances", "Running tools the culler stopped for being idle.")
        self.auth_checks = Counter(
            "berth_auth_checks",
            "Auth check answers (nginx's auth_request), by status and, for 200, where the request "
            "goes: tool or web (Berth's own pages).", ["status", "target"])
        self.auth_check_seconds = Histogram(
            "berth_auth_check_duration_seconds",
            "Time the auth service took to answer an auth check, by status.", ["status"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
        for action in _RECONCILER_ACTIONS:
            self.reconciler_actions.labels(action)  # every action is reported, at 0 until it happens


_metrics = None  # this process's Metrics, once start() has run
_start_lock = threading.Lock()


def start(directory=None):
    """This process's Metrics, created by the first call, in `directory` (BERTH_METRICS_DIR;
    by default read from the environment). Later calls return the same."""
    global _metrics
    if _metrics is not None:
        # prometheus_client reads the variable again for every new label value: put it back if
        # something has since taken it out of the environment (a test's patched environment).
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != _metrics.directory:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics.directory
        if directory and directory != _metrics.directory:
            log.warning("metrics: this process already counts in %s, not in %s",
                        _metrics.directory, directory)
        return _metrics
    with _start_lock:
        if _metrics is None:
            directory = directory or metrics_dir()
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as error:
                raise SettingError(f"BERTH_METRICS_DIR={directory}: cannot create it "
                                   f"({error.strerror})") from None
            # prometheus_client writes a metric into the files of PROMETHEUS_MULTIPROC_DIR only if
            # the variable is set when the metric is created, and reopens its files from it after
            # a fork: set for the life of the process, over any inherited value (the folder
            # follows this process's settings). Its value class was chosen from the variable at
            # import, perhaps before it was set: switch it over.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
            values.ValueClass = values.MultiProcessValue()
            _metrics = Metrics(directory)
    return _metrics


def record_launch(backend, outcome, seconds=None):
    """A launch ended RUNNING (with its spawn time) or FAILED. Called by the state machine."""
    metrics = start()
    metrics.launches.labels(backend, outcome).inc()
    if seconds is not None:
        metrics.spawn_seconds.labels(backend).observe(seconds)


def record_reconcile(actions):
    reconciler_actions = start().reconciler_actions
    for action, _instance_id in actions:
        reconciler_actions.labels(action).inc()


def record_culled(count):
    if count:
        start().culled.inc(count)


# -- the auth check -------------------------------------------------------------------------

_AUTH_CHECK_PATH = "/auth/check"
_COMMON_ANSWERS = [("200 OK", "tool"), ("200 OK", "web"), ("401 Unauthorized", "none"),
                   ("403 Forbidden", "none"), ("500 Internal Server Error", "none")]


class TimedAuthCheck:
    """WSGI wrapper around auth_service.check.AuthCheck: times GET /auth/check, counts its status.

    The hot path: one perf_counter pair, a status captured from start_response, and the
    pre-bound counter and histogram of that answer. Anything else passes straight through.
    """

    def __init__(self, app, web_upstream="berth_web"):
        self.app = app
        self.web_upstream = web_upstream
        self.metrics = start()
        self.bound = {}
        for status_line, target in _COMMON_ANSWERS:
            self._children(status_line, target)

    def _children(self, status_line, target):
        pair = self.bound.get((status_line, target))
        if pair is None:
            status = status_line.split(" ", 1)[0]
            pair = self.bound[(status_line, target)] = (self.metrics.auth_checks.labels(status, target),
                                                        self.metrics.auth_check_seconds.labels(status))
        return pair

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != _AUTH_CHECK_PATH:
            return self.app(environ, start_response)
        answer = []

        def capture(status, headers, exc_info=None):
            answer.append(status)
            answer.append(headers)
            return start_response(status, headers) if exc_info is None \
                else start_response(status, headers, exc_info)

        started = perf_counter()
        try:
            return self.app(environ, capture)
        finally:
            elapsed = perf_counter() - started
            if answer:
                status_line, target = answer[0], "none"
                if status_line[:3] == "200":
                    target = "tool"
                    for name, value in answer[1]:
                        if name == "X-Berth-Upstream":
                            if value == self.web_upstream:
                                target = "web"
                            break
            else:  # the check raised: the server answers 500
                status_line, target = "500 Internal Server Error", "none"
            counter, histogram = self.bound.get((status_line, target)) or self._children(status_line, target)
            counter.inc()
            histogram.observe(elapsed)


# -- GET /metrics ---------------------------------------------------------------------------

class _InstancesCollector:
    """berth_instances{template, state}: live instances, counted in the database at scrape time."""

    _STATES = ("QUEUED", "SPAWNING", "RUNNING", "STOPPING")

    def _family(self):
        return GaugeMetricFamily(
            "berth_instances", "Live tool instances by template and state, read from the database "
            "when scraped (the same on every replica).", labels=["template", "state"])

    def describe(self):
        return [self._family()]  # so that registering does not query the database

    def collect(self):
        from sqlalchemy import func, select

        from berth.extensions import db
        from berth.models import ToolInstance, ToolTemplate

        counts = {(slug, state): number for slug, state, number in db.session.execute(
            select(ToolTemplate.slug, ToolInstance.state, func.count())
            .join(ToolInstance, ToolInstance.template_id == ToolTemplate.id)
            .where(ToolInstance.state.in_(self._STATES))
            .group_by(ToolTemplate.slug, ToolInstance.state))}
        family = self._family()
        for slug in db.session.execute(select(ToolTemplate.slug).order_by(ToolTemplate.slug)).scalars():
            for state in self._STATES:  # zeros too, so that a series does not vanish
                family.add_metric([slug, state], counts.get((slug, state), 0))
        yield family


class _StatusCollector:
    """The admin status page's facts (berth/status.py), read when scraped: whether the database
    and the queue answer, the queue's depth, the workers' heartbeats, the reconciler's last run,
    and, scraped through nginx, when its configuration was rendered and its workers started."""

    def __init__(self, queue, nginx_header=None):
        from flask import current_app

        self.config = current_app.config
        self.queue = queue
        self.nginx_header = nginx_header

    def describe(self):
        return []  # nothing is read when registering

    def collect(self):
        from berth import status

        def gauge(name, documentation, value, labels=()):
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            if value is not None:
                family.add_metric([], value)
            return family

        yield gauge("berth_database_up", "1 when the database answers.", int(status.database_part().ok))
        if self.queue is not None:
            reachable, depth, _what = status.queue_state(self.config, self.queue)
            yield gauge("berth_queue_up", "1 when the queue (Redis, or the SQLite file) answers.", int(reachable))
            yield gauge("berth_queue_depth", "Messages waiting in the queue for a worker.", depth)
        try:
            found = status.workers(self.config)
        except DBAPIError:
            from berth.extensions import db

            db.session.rollback()
            found = None
        if found is not None:
            yield gauge("berth_workers_alive", "Workers that reported within three reconciler periods.",
                        found.alive)
            heartbeats = GaugeMetricFamily("berth_worker_last_heartbeat_timestamp_seconds",
                                           "When each worker seen in the last day last reported.",
                                           labels=["worker"])
            for row in found.rows:
                heartbeats.add_metric([row.name], row.seen_at.timestamp())
            yield heartbeats
            yield gauge("berth_reconciler_last_run_timestamp_seconds", "When a worker last reconciled.",
                        found.last_reconcile.timestamp() if found.last_reconcile else None)
        rendered_at, started_at = status.nginx_state(self.nginx_header)
        yield gauge("berth_nginx_config_rendered_timestamp_seconds",
                    "When the configuration of the nginx that answered this scrape was rendered.",
                    rendered_at.timestamp() if rendered_at else None)
        yield gauge("berth_nginx_workers_started_timestamp_seconds",
                    "When that nginx's worker processes started: its last start or reload (one machine only).",
                    started_at.timestamp() if started_at else None)


def exposition(accept="", database=True, nginx_header=None, queue=None):
    """(body, content type): the counters of every process that writes into this process's
    BERTH_METRICS_DIR, summed, plus the database gauges and the status facts when `database`
    (the web app only, so that per-process scraping does not report them several times), in the
    format the scraper asks for in Accept (Prometheus text 0.0.4 by default, or OpenMetrics)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=start().directory)
    if database:
        registry.register(_InstancesCollector())
        registry.register(_StatusCollector(queue, nginx_header))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type


def metrics_response(accept="", database=True, nginx_header=None, queue=None):
    from flask import Response

    body, content_type = exposition(accept, database, nginx_header, queue)
    return Response(body, content_type=content_type)


def tcp_peer(environ):
    """The address that opened the connection to this server. The web app's ProxyFix replaces
    REMOTE_ADDR with an X-Forwarded-For entry; the original is what the peer really is."""
    original = environ.get("werkzeug.proxy_fix.orig") or environ
    return original.get("REMOTE_ADDR") or ""


def _through_nginx(config, headers):
    """True when the request carries the proxy secret, which only nginx sends."""
    secret = config.get("BERTH_PROXY_SECRET")
    sent = headers.get("X-Berth-Proxy-Secret", "")
    return bool(secret) and hmac.compare_digest(sent.encode(), secret.encode())


def access_refused(config, headers, peer=""):
    """None if this request may read /metrics, else (status, reason).

    Allowed: `Authorization: Bearer <BERTH_METRICS_TOKEN>`, or a client address in
    BERTH_METRICS_NETWORKS. Which address is the client's depends on how the request came:

    - through nginx (it carries the proxy secret): the address nginx saw, found by
      berth.addresses over X-Real-IP and X-Forwarded-For behind BERTH_TRUSTED_HOPS proxies;
    - directly (a scraper at the pod's or container's port; no proxy secret): `peer`, the TCP
      peer (tcp_peer). X-Real-IP and X-Forwarded-For are then written by the client itself, so
      they are ignored: no proxy of Berth's stands between it and this server.
    """
    from berth.addresses import allowed, client_address

    token, networks = config.get("BERTH_METRICS_TOKEN"), config.get("BERTH_METRICS_NETWORKS")
    if not token and not networks:
        return 404, "Metrics are off: set BERTH_METRICS_TOKEN or BERTH_METRICS_NETWORKS to serve them."
    if token:
        scheme, _, sent = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(sent.strip().encode(), token.encode()):
            return None
    if networks:
        if _through_nginx(config, headers):
            real_ip = headers.get("X-Real-IP", "")
            # nginx appends the address it saw (X-Real-IP) to X-Forwarded-For: what is left is
            # what the request arrived with, which client_address reads past the trusted hops.
            forwarded = [entry for entry in headers.get("X-Forwarded-For", "").split(",") if entry.strip()]
            if forwarded and forwarded[-1].strip() == real_ip:
                forwarded.pop()
            address = client_address(real_ip, ",".join(forwarded), config["BERTH_TRUSTED_HOPS"],
                                     config.get("BERTH_TRUSTED_PROXIES", ()))
        else:
            address = client_address(peer, "", 0)
        if allowed(address, networks):
            return None
    if token and networks:
        return 403, "Metrics need the scrape token or an address in BERTH_METRICS_NETWORKS."
    if token:
        return 403, "Metrics need the scrape token: Authorization: Bearer <BERTH_METRICS_TOKEN>."
    return 403, "Metrics are served only to addresses in BERTH_METRICS_NETWORKS."


def init_app(app, database=True, queue=None):
    """Start counting in the app's BERTH_METRICS_DIR, and serve GET /metrics on this Flask app,
    behind access_refused and nothing else: the app's proxy-secret check leaves the endpoint
    "metrics" to it (a scraper may come directly). The web app's also reports the database
    gauges and the status facts (with queue, the Huey of berth.launch.tasks: its depth); the
    auth service's does not."""
    from flask import Response, request

    start(app.config["BERTH_METRICS_DIR"])

    def metrics_view():
        refused = access_refused(app.config, request.headers, tcp_peer(request.environ))
        if refused is not None:
            status, reason = refused
            return Response(reason + "\n", status=status, mimetype="text/plain")
        # nginx's own facts only from nginx: a scraper at the port could send anything.
        nginx_header = request.headers.get("X-Berth-Nginx") if _through_nginx(app.config, request.headers) else None
        return metrics_response(request.headers.get("Accept", ""), database, nginx_header, queue)

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


def mark_process_dead(pid):
    """gunicorn's child_exit: drop the exited worker's live-gauge files (its counts stay).

    gunicorn's master process counts nothing, so it does not start(): it only needs the folder."""
    multiprocess.mark_process_dead(pid, _metrics.directory if _metrics else metrics_dir())


# -- the worker's own GET /metrics -----------------------------------------------------------

def worker_metrics_app(config):
    """The WSGI app of the worker's metrics port: GET /metrics behind access_refused, the
    worker container's counters only. Nothing proxies to it, so the address that counts is
    always the TCP peer (the proxy secret is not looked at)."""
    from werkzeug.wrappers import Request, Response

    gate = {**config, "BERTH_PROXY_SECRET": None}

    def app(environ, start_response):
        request = Request(environ)
        if request.path != "/metrics" or request.method not in ("GET", "HEAD"):
            answer = Response("The worker serves only GET /metrics here.\n", status=404,
                              mimetype="text/plain")
        else:
            refused = access_refused(gate, request.headers, tcp_peer(environ))
            if refused is not None:
                answer = Response(refused[1] + "\n", status=refused[0], mimetype="text/plain")
            else:
                body, content_type = exposition(request.headers.get("Accept", ""), database=False)
                answer = Response(body, content_type=content_type)
        return answer(environ, start_response)

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the worker's exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # a scrape every few seconds is not worth a log line
        pass


_server_lock = threading.Lock()
_server_pid = None  # the process that has started (or tried to start) its server


def serve_worker_metrics(config):
    """Start counting in BERTH_METRICS_DIR, and serve worker_metrics_app on
    BERTH_WORKER_METRICS_HOST:BERTH_WORKER_METRICS_PORT, in a daemon thread, once per process
    (Huey calls its startup hooks once per worker thread). Unset port: nothing is served. A port
    already taken (a second consumer process, or replica on the same machine) is logged and
    skipped: the one that has it sums the same folder."""
    global _server_pid
    start(config.get("BERTH_METRICS_DIR"))
    port = config.get("BERTH_WORKER_METRICS_PORT")
    if not port:
        return None
    host = config.get("BERTH_WORKER_METRICS_HOST") or "127.0.0.1"
    with _server_lock:
        if _server_pid == os.getpid():
            return None
        _server_pid = os.getpid()
        try:
            server = make_server(host, port, worker_metrics_app(config),
                                 server_class=_Server6 if ":" in host else _Server,
                                 handler_class=_QuietHandler)
        except OSError as error:
            log.warning("worker metrics: cannot listen on %s:%s (%s); this process serves none",
                        host, port, error.strerror or error)
            return None
    threading.Thread(target=server.serve_forever, name="berth-worker-metrics", daemon=True).start()
    log.info("worker metrics: GET /metrics on %s:%s", host, port)
    return server

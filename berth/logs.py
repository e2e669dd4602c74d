"""Log lines of every Berth process: text or one JSON object per line (BERTH_LOG_FORMAT), each
with the request id nginx gave the request it belongs to.

nginx makes a request id for every request ($request_id), writes it in its access log and sends
it to the auth service and the web app as X-Request-Id; it never takes a client's. RequestIds
keeps it in a context variable for the request's length, and every line logged meanwhile carries
it, so one request can be followed through nginx's, the auth service's and the web app's logs
(docs/operations.md, "Logs").

A server process calls configure() once, at its start (webapp.create_server_app,
auth_service.create_server_app, the worker's startup hook, `berth run`); the app factories alone
leave logging as they find it, so that the tests' own capture is undisturbed.
"""
import contextvars
import json
import logging
import re
import sys
import time
from datetime import datetime, timezone

from berth.settings import read_setting

request_id = contextvars.ContextVar("berth_request_id", default="")
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")  # nginx's $request_id: anything else is not nginx's
# Loggers of libraries that set up handlers of their own: their lines go through Berth's instead.
_REROUTED = ("huey", "_granian")


class RequestIds:
    """WSGI middleware: the request id nginx sent (X-Request-Id) is the current one while the
    request runs. Cheap enough for the auth check's hot path: one lookup, one match."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        token = request_id.set(sent if _REQUEST_ID.fullmatch(sent) else "")
        try:
            return self.app(environ, start_response)
        finally:
            request_id.reset(token)


class _WithRequestId(logging.Filter):
    def filter(self, record):
        record.request_id = request_id.get()
        record.berth_process = _process
        return True


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(berth_process)s %(name)s: %(message)s")

    def format(self, record):
        line = super().format(record)
        return f"{line} request_id={record.request_id}" if getattr(record, "request_id", "") else line


class JsonFormatter(logging.Formatter):
    def __init__(self, process=None):
        super().__init__()
        self.process = process

    def format(self, record):
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "process": getattr(record, "berth_process", self.process or _process),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", ""):
            entry["request_id"] = record.request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_process = "berth"
_handler = None


def formatter(log_format=None, process=None):
    """The formatter of BERTH_LOG_FORMAT. granian's own lines use it too, through
    deploy/granian-logging.json, so that its supervisor's warnings are JSON when the rest is."""
    if (log_format or read_setting("BERTH_LOG_FORMAT")) == "json":
        return JsonFormatter(process)
    return logging.Formatter("%(asctime)s %(levelname)s " + (process or "server") + " %(name)s: %(message)s")


def configure(process, log_format=None, level=None, stream=None):
    """Berth's handler on the root logger, for this process (auth, web, worker, berth): the
    format of BERTH_LOG_FORMAT, the level of BERTH_LOG_LEVEL. Called again, it replaces its own
    handler and touches no other."""
    global _process, _handler
    _process = process
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream or sys.stderr)
    _handler.setFormatter(formatter(log_format))
    _handler.addFilter(_WithRequestId())
    root.addHandler(_handler)
    root.setLevel((level or read_setting("BERTH_LOG_LEVEL")).upper())
    for name in _REROUTED:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True


def log_requests(app):
    """One line per request the Flask app answers: method, path, status, time, user."""
    from flask import g, request

    log = logging.getLogger("berth.requests")

    @app.before_request
    def start_timer():
        g.berth_request_started = time.perf_counter()

    @app.after_request
    def log_request(response):
        started = g.get("berth_request_started")
        milliseconds = (time.perf_counter() - started) * 1000 if started else 0
        # Escaped: a path may hold a (percent-encoded) line break, which must not start a line.
        log.info("%s %s %s %.0fms user=%s", request.method, request.path.encode("unicode_escape").decode(),
                 response.status_code, milliseconds, request.headers.get("X-Berth-User-Id") or "-")
        return response

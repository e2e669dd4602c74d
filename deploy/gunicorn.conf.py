"""gunicorn settings for the auth service and the web app.

gthread workers keep connections from nginx alive (sync workers close every one, which
doubles the TCP connections per request on the auth path).
"""
import sys

from berth.settings import SettingError, read_setting

try:
    workers = read_setting("BERTH_GUNICORN_WORKERS")
    threads = read_setting("BERTH_GUNICORN_THREADS")
    loglevel = read_setting("BERTH_LOG_LEVEL")
except SettingError as error:
    # gunicorn prints a traceback for any exception in its configuration file: one line instead.
    sys.exit(f"Error: {error}")
worker_class = "gthread"
# Longer than nginx's upstream keepalive_timeout (60 s), so that nginx closes idle connections
# first and never sends a request on a connection gunicorn is closing.
keepalive = 75
graceful_timeout = 10
accesslog = None
errorlog = "-"
# gunicorn's control socket lives at one fixed path per user; auth and web would share it.
control_socket_disable = True


def child_exit(server, worker):
    """A worker process ended: drop its live-gauge files from BERTH_METRICS_DIR (berth/metrics.py).

    Its counters and histograms stay there, so /metrics keeps counting what it did."""
    from berth.metrics import mark_process_dead

    mark_process_dead(worker.pid)

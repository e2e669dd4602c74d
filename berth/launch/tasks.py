"""Huey tasks: the worker's side of the launch path (webapp → task → backend → database).

Tasks take ids, never ORM objects, and run inside an app context. The queue only carries
messages: if one is lost, the periodic reconcile finds the instance in the database and
enqueues it again. Run the worker with `huey_consumer berth.launch.tasks.huey -w 4 -k thread`.
"""
import logging
import os
import threading
from contextlib import nullcontext

from flask import has_app_context
from huey import RedisHuey, SqliteHuey, crontab

from berth.settings import load_settings

log = logging.getLogger(__name__)


def _make_huey():
    settings = load_settings()
    if settings["BERTH_REDIS_URL"]:
        return RedisHuey("berth", url=settings["BERTH_REDIS_URL"])
    os.makedirs(settings["BERTH_DATA_DIR"], exist_ok=True)
    return SqliteHuey("berth", filename=os.path.join(settings["BERTH_DATA_DIR"], "queue.db"))


huey = _make_huey()


@huey.on_startup()
def serve_metrics():
    """GET /metrics on BERTH_WORKER_METRICS_PORT, when set. Huey calls this in every worker
    thread of huey_consumer (never in the web app, which imports this module to enqueue); the
    server starts once per process."""
    from berth import metrics

    metrics.serve_worker_metrics(load_settings())

_app = None
_app_lock = threading.Lock()


def _app_context():
    """The worker's app context; inside a request (Huey's immediate mode in tests) reuse it."""
    global _app
    if has_app_context():
        return nullcontext()
    with _app_lock:
        if _app is None:
            from berth.web import create_base_app

            _app = create_base_app("berth.worker")
    return _app.app_context()


@huey.task()
def launch(instance_id):
    from berth.launch.state_machine import advance_launch

    with _app_context():
        return advance_launch(instance_id)


@huey.task()
def stop(instance_id):
    from berth.launch.state_machine import stop_instance

    with _app_context():
        return stop_instance(instance_id)


@huey.periodic_task(crontab(minute="*"))
def reconcile():
    from berth.launch.upkeep import reconcile as run_reconcile

    with _app_context():
        actions = run_reconcile(enqueue_launch=enqueue_launch, enqueue_stop=enqueue_stop)
        if actions:
            log.info("reconcile: %s", actions)
        return actions


@huey.periodic_task(crontab(minute="*"))
def cull_idle():
    from berth.launch.upkeep import cull_idle as run_cull

    with _app_context():
        stopped = run_cull(enqueue_stop=enqueue_stop)
        if stopped:
            log.info("culled idle instances: %s", stopped)
        return stopped


def enqueue_launch(instance_id):
    """Queue a launch. If the queue is down, the reconciler picks the instance up later."""
    try:
        launch(instance_id)
    except Exception:  # noqa: BLE001 - the database row is the source of truth, not the message
        log.exception("could not enqueue launch of instance %s; the reconciler will", instance_id)


def enqueue_stop(instance_id):
    try:
        stop(instance_id)
    except Exception:  # noqa: BLE001
        log.exception("could not enqueue stop of instance %s; the reconciler will", instance_id)

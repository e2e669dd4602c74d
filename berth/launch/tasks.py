"""Huey tasks: the worker's side of the launch path (webapp → task → backend → database).

Tasks take ids, never ORM objects, and run inside an app context. The queue only carries
messages: if one is lost, the reconciler (every BERTH_RECONCILE_SECONDS, in each worker
process) finds the instance in the database and enqueues it again. Nobody waits for a task's
result, so none is stored. Run the worker with
`huey_consumer berth.launch.tasks.huey -w 4 -k thread -g TERM -t 9` (deploy/entrypoint.sh):
SIGTERM lets running steps go on for 9 s, then the launches still under way are handed back.
"""
import atexit
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager

from flask import has_app_context

from berth.settings import load_settings, load_settings_or_exit, sqlite_folder

log = logging.getLogger(__name__)


@contextmanager
def _unused_clients_hidden(redis_used):
    """Import huey inside this block. Its storage module imports the Redis and PostgreSQL
    clients whenever they are installed: 24 MB more in each process that imports huey (RSS of
    a process importing huey alone, with and without them). A queue on SQLite needs neither,
    so they are hidden from that import; whatever needs them later (the database's driver)
    imports them as usual."""
    hidden = [] if redis_used else [name for name in ("redis", "psycopg") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # importing it raises ImportError, and huey goes without
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


_settings = load_settings_or_exit()
with _unused_clients_hidden(redis_used=bool(_settings["BERTH_REDIS_URL"])):
    from huey import RedisHuey, crontab  # noqa: E402
    from huey.consumer_options import ConsumerConfig  # noqa: E402

    from berth.launch.sqlite_queue import WakingSqliteHuey  # noqa: E402


def _make_huey(settings):
    if settings["BERTH_REDIS_URL"]:
        return RedisHuey("berth", url=settings["BERTH_REDIS_URL"], results=False)
    folder = sqlite_folder(settings["BERTH_DATA_DIR"])
    os.makedirs(folder, mode=0o700, exist_ok=True)
    # A worker wakes the moment a task is queued (sqlite_queue.py), as with Redis.
    return WakingSqliteHuey("berth", filename=os.path.join(folder, "queue.db"), results=False)


huey = _make_huey(_settings)


class Outage:
    """One log line when something Berth depends on stops answering, and one when it is back.

    Between the two, the same failure is not logged again: a queue that is down for ten seconds
    would otherwise fill the log with a traceback per poll of every worker thread."""

    def __init__(self, what):
        self.what = what
        self.since = None
        self._lock = threading.Lock()

    def failed(self, error):
        """True the first time only: the caller (or the filter) logs that one."""
        with self._lock:
            if self.since is not None:
                return False
            self.since = time.monotonic()
        log.warning("%s unreachable (%s: %s); retrying quietly until it answers",
                    self.what, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return True

    def answered(self):
        with self._lock:
            if self.since is None:
                return
            seconds, self.since = time.monotonic() - self.since, None
        log.warning("%s back after %.0f s", self.what, seconds)


queue_outage = Outage("The queue (Redis)" if isinstance(huey, RedisHuey) else "The queue")
database_outage = Outage("The database")


class QuietQueueErrors(logging.Filter):
    """Keeps huey's consumer from logging a traceback per poll while the queue is down."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not _is_connection_error(error):
            return True
        queue_outage.failed(error)
        return False


def _is_connection_error(error):
    import sqlite3

    kinds = (sqlite3.OperationalError, ConnectionError)
    redis_errors = sys.modules.get("redis.exceptions")  # only a queue on Redis raises them
    if redis_errors is not None:
        kinds += (redis_errors.ConnectionError, redis_errors.TimeoutError)
    return isinstance(error, kinds)


for _name in ("huey", "huey.consumer", "huey.consumer.Worker", "huey.consumer.Scheduler"):
    logging.getLogger(_name).addFilter(QuietQueueErrors())


def _berth_logging(_consumer_config, logger=None):
    """huey_consumer sets up its logging after importing this module: Berth's instead, so that
    its own lines too follow BERTH_LOG_FORMAT and BERTH_LOG_LEVEL (berth/logs.py)."""
    from berth.logs import configure

    configure("worker")


ConsumerConfig.setup_logger = _berth_logging

_upkeep_lock = threading.Lock()
_upkeep_thread = None


@huey.on_startup()
def start_worker_services():
    """GET /metrics on BERTH_WORKER_METRICS_PORT when set, and the reconciler's loop. Huey calls
    this in every worker thread of huey_consumer (never in the web app, which imports this
    module to enqueue); each starts once per process."""
    global _upkeep_thread
    from berth import metrics

    settings = load_settings()
    metrics.serve_worker_metrics(settings)
    with _upkeep_lock:
        if _upkeep_thread is None:
            _upkeep_thread = threading.Thread(target=_reconcile_forever, name="berth-reconciler",
                                              args=(settings["BERTH_RECONCILE_SECONDS"],), daemon=True)
            _upkeep_thread.start()
            # At exit, not in huey's on_shutdown: that runs in each worker thread once its loop
            # ends, which a thread still running a launch never reaches before the process exits.
            atexit.register(hand_back_leases)


def hand_back_leases():
    """The worker is leaving (a graceful stop whose shutdown timeout ran out): its launches still
    under way go back to the reconciler now, not once their leases run out."""
    from berth.launch.leases import leases

    with _app_context():
        handed_back = leases.hand_back()
    if handed_back:
        log.warning("leaving with launches under way: handed back instances %s", handed_back)


def _reconcile_forever(period):
    """Reconcile every period seconds. Several workers may do so at once: every action is a
    conditional update, so the second to try a change finds it done."""
    while True:
        time.sleep(period)
        try:
            run_reconcile_once()
        except Exception:  # noqa: BLE001 - the loop must outlive any one failure
            log.exception("reconcile failed; trying again in %s s", period)


def run_reconcile_once():
    from sqlalchemy.exc import DBAPIError

    from berth.launch.upkeep import reconcile as run_reconcile
    from berth.status import heartbeat

    if queue_outage.since is not None:
        try:
            huey.pending_count()
        except Exception:  # noqa: BLE001 - still down: the filter has said so once already
            pass
        else:
            queue_outage.answered()
    try:
        with _app_context():
            # While the queue is down, what is to be queued waits for the first run once it is
            # back, instead of REQUEUE_AFTER_SECONDS more.
            actions = run_reconcile(enqueue_launch=enqueue_launch, enqueue_stop=enqueue_stop,
                                    queue_down=queue_outage.since is not None)
            heartbeat(reconcile_actions=len(actions))  # for the admin status page and /metrics
    except DBAPIError as error:
        database_outage.failed(error)
        return None
    database_outage.answered()
    if actions:
        log.info("reconcile: %s", actions)
    return actions

_app = None
_app_lock = threading.Lock()


@contextmanager
def _app_context():
    """The worker's app context; inside a request (Huey's immediate mode in tests) reuse it.

    Leaving it ends the database session with a ROLLBACK. When the database went away meanwhile,
    that ROLLBACK fails on the dead connection, after the task's work is done or left to the
    reconciler: one line says so, never a traceback."""
    global _app
    if has_app_context():
        yield
        return
    with _app_lock:
        if _app is None:
            from berth.web import create_base_app

            _app = create_base_app("berth.worker")
    context = _app.app_context()
    context.push()
    try:
        yield
    finally:
        _pop_quietly(context)


def _pop_quietly(context):
    from sqlalchemy.exc import DBAPIError

    from berth.extensions import db

    try:
        context.pop()
    except DBAPIError as error:
        log.info("the database connection was lost before the task's session ended (%s); "
                 "the pool replaces it", type(error.orig or error).__name__)
        # The failed teardown left this context's session in the registry: drop it.
        with context:
            try:
                db.session.remove()
            except DBAPIError:
                pass


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


@huey.task()
def delete_home(user_id, actor):
    from berth.launch.upkeep import delete_home as run_deletion

    with _app_context():
        return run_deletion(user_id, actor)


@huey.task()
def measure_storage():
    from berth.launch.upkeep import measure_storage as run_measure

    with _app_context():
        return run_measure()


@huey.periodic_task(crontab(minute="*/5"))
def measure_storage_regularly():
    return measure_storage.call_local()


@huey.periodic_task(crontab(minute="*"))
def cull_idle():
    from berth.launch.upkeep import cull_idle as run_cull

    with _app_context():
        stopped = run_cull(enqueue_stop=enqueue_stop)
        if stopped:
            log.info("culled idle instances: %s", stopped)
        return stopped


def enqueue_launch(instance_id):
    """Queue a launch; False if the queue did not take it (the reconciler picks it up later)."""
    return _enqueue(launch, instance_id)


def enqueue_stop(instance_id):
    return _enqueue(stop, instance_id)


def enqueue_home_deletion(user_id, actor):
    """Queue the deletion of a user's home; False if the queue did not take it."""
    return _enqueue_other(delete_home, user_id, actor)


def enqueue_storage_measure():
    """Queue a measuring of homes and team folders; False if the queue did not take it."""
    return _enqueue_other(measure_storage)


def _enqueue_other(task, *args):
    """Queue a task that no instance row stands for: if the queue does not take it, say so."""
    try:
        task(*args)
    except Exception:  # noqa: BLE001 - the caller tells whoever asked to try again
        log.exception("could not enqueue %s%s", task.name, args)
        return False
    return True


def _enqueue(task, instance_id):
    try:
        task(instance_id)
    except Exception as error:  # noqa: BLE001 - the database row is the source of truth, not the message
        if _is_connection_error(error):
            if queue_outage.failed(error) is False:
                log.info("queue down: %s of instance %s left to the reconciler", task.name, instance_id)
            return False
        log.exception("could not enqueue %s of instance %s; the reconciler will", task.name, instance_id)
        return False
    queue_outage.answered()
    return True

"""How Berth is doing, for its admins: the database, the queue, the workers, the reconciler and
nginx, each read when asked (the admin status page, and GET /metrics through berth.metrics).

Workers report themselves in worker_heartbeats (WorkerHeartbeat) at every pass of their reconciler
loop (berth/launch/tasks.py), so what the page shows is the same on every web replica. nginx
reports itself on every request it sends the web app's main host: the time its configuration
was rendered and the pid of the worker process that sent it (X-Berth-Nginx, set by nginx only;
a client's copy is refused by the auth check). On one machine that worker's start time, which a
reload renews, is read from /proc.
"""
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import DBAPIError

from berth.extensions import db
from berth.models import WorkerHeartbeat, utcnow

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
FORGET_AFTER = timedelta(days=1)  # a worker unseen this long is gone: its row goes
QUEUE_TIMEOUT = 2  # seconds the status waits for Redis


# -- what the worker writes ---------------------------------------------------------------------

_started_at = None


def heartbeat(reconcile_actions=None):
    """This worker process is alive (and, with reconcile_actions, has just reconciled). Commits."""
    global _started_at
    now = utcnow()
    _started_at = _started_at or now
    values = {"seen_at": now}
    if reconcile_actions is not None:
        values.update(reconciled_at=now, reconcile_actions=reconcile_actions)
    updated = db.session.execute(db.update(WorkerHeartbeat).where(WorkerHeartbeat.name == WORKER_NAME)
                                 .values(**values)).rowcount
    if not updated:  # the name is this process's own: no other writer races for the row
        db.session.add(WorkerHeartbeat(name=WORKER_NAME, started_at=_started_at,
                                       reconcile_actions=reconcile_actions or 0,
                                       reconciled_at=values.get("reconciled_at"), seen_at=now))
    db.session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.seen_at < now - FORGET_AFTER))
    db.session.commit()


# -- what the status page reads -----------------------------------------------------------------

@dataclass
class Part:
    """One part of Berth: whether it is well (None: cannot tell), a one-line summary, details."""

    name: str
    ok: bool | None
    summary: str
    details: list = field(default_factory=list)


@dataclass
class Workers:
    alive: int
    rows: list  # WorkerHeartbeat, newest first, each with .alive set
    last_reconcile: datetime | None


def database_part():
    started = time.perf_counter()
    try:
        db.session.execute(text("SELECT 1"))
    except DBAPIError as error:
        db.session.rollback()
        return Part("Database", False, f"unreachable: {type(error.orig or error).__name__}")
    milliseconds = (time.perf_counter() - started) * 1000
    try:
        revision = db.session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        db.session.rollback()
        revision = None  # a schema made without migrations (the unit tests')
    return Part("Database", True, f"answers in {milliseconds:.0f} ms; schema revision {revision or 'unknown'}",
                [db.engine.url.render_as_string(hide_password=True)])


def queue_state(config, huey):
    """(reachable, depth, what): the messages waiting in the queue (huey: the Huey of
    berth.launch.tasks, which the caller passes, above this module) for a worker. Redis is asked
    with a short timeout of its own, so a queue that does not answer never holds the page."""
    if config["BERTH_REDIS_URL"]:
        import redis

        client = redis.Redis.from_url(config["BERTH_REDIS_URL"], socket_connect_timeout=QUEUE_TIMEOUT,
                                      socket_timeout=QUEUE_TIMEOUT)
        try:
            return True, client.llen(huey.storage.queue_key), "Redis"
        except redis.RedisError as error:
            return False, None, f"Redis ({type(error).__name__})"
        finally:
            client.close()
    try:
        return True, huey.pending_count(), "SQLite file"
    except Exception as error:  # noqa: BLE001 - any failure of the queue is "unreachable"
        return False, None, f"SQLite file ({type(error).__name__})"


def queue_part(config, huey):
    reachable, depth, what = queue_state(config, huey)
    if not reachable:
        return Part("Queue", False, f"{what}: unreachable")
    return Part("Queue", True, f"{what}: {depth} message{'s' if depth != 1 else ''} waiting")


def workers(config, now=None):
    """The workers seen lately, alive when seen within three reconciler periods."""
    now = now or utcnow()
    rows = db.session.execute(select(WorkerHeartbeat).order_by(WorkerHeartbeat.seen_at.desc())).scalars().all()
    window = timedelta(seconds=3 * config["BERTH_RECONCILE_SECONDS"] + 5)
    for row in rows:
        row.alive = row.seen_at >= now - window
    last = db.session.execute(select(func.max(WorkerHeartbeat.reconciled_at))).scalar()
    return Workers(sum(row.alive for row in rows), rows, last)


def workers_part(config):
    try:
        found = workers(config)
    except DBAPIError:
        db.session.rollback()
        return Part("Workers", None, "unknown: the database is unreachable"), None
    if not found.rows:
        return Part("Workers", False, "none has reported yet"), found
    return Part("Workers", found.alive > 0, f"{found.alive} alive"), found


def reconciler_part(config, found):
    if found is None:
        return Part("Reconciler", None, "unknown: the database is unreachable")
    if found.last_reconcile is None:
        return Part("Reconciler", False, "has not run yet")
    age = (utcnow() - found.last_reconcile).total_seconds()
    return Part("Reconciler", age <= 3 * config["BERTH_RECONCILE_SECONDS"] + 5,
                f"last run {age:.0f} s ago (every {config['BERTH_RECONCILE_SECONDS']} s per worker)")


def nginx_state(header):
    """(rendered_at, workers_started_at) from the X-Berth-Nginx header nginx sent with this
    request; either None when it cannot be told (not through nginx, or nginx on another machine)."""
    rendered, _, pid = (header or "").partition(" ")
    try:
        rendered_at = datetime.fromisoformat(rendered)
    except ValueError:
        rendered_at = None
    return rendered_at, _process_started_at(pid)


def nginx_part(header):
    rendered_at, started_at = nginx_state(header)
    if rendered_at is None:
        return Part("nginx", None, "unknown: this request did not come through Berth's nginx")
    summary = f"configuration rendered {rendered_at:%Y-%m-%d %H:%M:%S} UTC"
    if started_at is not None:
        summary += f"; last (re)load {started_at:%Y-%m-%d %H:%M:%S} UTC"
    return Part("nginx", True, summary)


def _process_started_at(pid):
    """When process pid started, from /proc; None when it is not on this machine."""
    if not pid.isdigit():
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat, open("/proc/stat") as system:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), timezone.utc)


def gather(config, huey, nginx_header=None):
    """Every part, and the workers' rows for the page."""
    database = database_part()
    worker_part, found = workers_part(config)
    return {
        "parts": [database, queue_part(config, huey), worker_part, reconciler_part(config, found),
                  nginx_part(nginx_header)],
        "workers": found.rows if found else [],
    }

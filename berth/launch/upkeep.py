"""Upkeep that the worker runs: the reconciler (every BERTH_RECONCILE_SECONDS), the idle
culler (every minute), the measuring of homes and team folders, and the deletion of a departed
user's home that an administrator asks for.

Both read the database and the backends, then move instances through the state machine
(state_machine.py) and queue what is left to do through the functions they are given, so
that this module does not depend on the queue.
"""
import logging
import socket
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from berth import homes, metrics
from berth.backends import LaunchFailed, get_backend
from berth.extensions import db
from berth.launch.leases import REQUEUE_AFTER_SECONDS, lease_seconds
from berth.launch.state_machine import begin_stop, clip_detail, transition
from berth.models import (State, StorageUsage, ToolInstance, ToolTemplate, User, record_event, update_where,
                          utcnow)

log = logging.getLogger(__name__)

# A tool whose process runs but whose address refuses connections has lost its server. Refused,
# never slow: a busy tool still accepts connections (its listening socket queues them), so no
# tool is ended for being busy. It counts as gone once it has refused for this long.
REFUSING_FOR_SECONDS = 10
_refusing_since = {}  # instance id → when its address first refused (this process's own view)


def refuses_connections(upstream):
    """True if nothing listens at upstream (host:port): the connection is refused at once."""
    host, _, port = (upstream or "").rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:  # a timeout or an unreachable network proves nothing about the tool
        return False


def _still_listening(instance, now):
    """(alive, reason) for a RUNNING tool whose process runs: whether it still takes connections."""
    if not refuses_connections(instance.upstream):
        _refusing_since.pop(instance.id, None)
        return True, ""
    since = _refusing_since.setdefault(instance.id, now)
    if now - since < timedelta(seconds=REFUSING_FOR_SECONDS):
        return True, ""
    _refusing_since.pop(instance.id, None)
    return False, (f"The tool stopped answering: its address refused connections for "
                   f"{REFUSING_FOR_SECONDS} s while its process still ran.")


def reconcile(enqueue_launch, enqueue_stop, actor="reconciler", queue_down=False):
    """Make the database and the backends agree. Returns a list of what it did.

    enqueue_launch and enqueue_stop return False when the queue did not take the message; the
    instance is then left for the next run. While queue_down, launches and stops are not
    queued at all, so that they are queued at the first run once the queue is back.

    - a RUNNING instance whose tool is gone becomes FAILED, with the reason;
    - a QUEUED or SPAWNING launch whose lease ran out (its worker died, or its queue message
      was lost) is enqueued again, and so is a STOPPING instance;
    - a tool that a backend runs for this deployment with no live instance is stopped.

    Each action is recorded as an event (reconcile.gone, .resume, .stop, .orphan).
    """
    config = current_app.config
    now = utcnow()
    actions = []
    grace = now - timedelta(seconds=5)  # give a fresh queue message time to be picked up
    live = db.session.execute(select(ToolInstance).where(ToolInstance.state.in_(State.LIVE))).scalars()
    live_ids_by_backend = {}
    for instance in live:
        live_ids_by_backend.setdefault(instance.backend, set()).add(instance.id)
        if instance.state == State.RUNNING:
            try:
                alive, reason = get_backend(instance.backend, config).is_alive(instance)
            except LaunchFailed as failure:
                alive, reason = False, failure.reason
            if alive:
                alive, reason = _still_listening(instance, now)
            gone = ("reconcile.gone", f"The tool was no longer running: {reason}",
                    {"actor": actor, "user_id": instance.owner_id})
            if not alive and transition(instance.id, ToolInstance.state == State.RUNNING, event=gone,
                                        state=State.FAILED, error=reason, ended_at=utcnow(),
                                        error_detail=_last_lines(instance, config)):
                actions.append(("failed", instance.id))
                try:  # whatever the tool left behind: its namespace, a half-dead container
                    get_backend(instance.backend, config).stop(instance)
                except LaunchFailed as failure:
                    log.warning("reconcile: could not clean up after %s: %s", instance.id, failure.reason)
        elif queue_down:
            continue
        elif instance.state in (State.QUEUED, State.SPAWNING):
            lease_over = instance.lease_expires_at is None or instance.lease_expires_at < now
            # Hand the launch back (no owner, so any worker may claim it) and queue it again,
            # once: the condition keeps two reconcilers from both doing so.
            resume = ("reconcile.resume", f"Resuming the launch at step {instance.step or 'queued'}",
                      {"actor": actor, "user_id": instance.owner_id})
            if lease_over and instance.created_at < grace and transition(
                    instance.id, ToolInstance.state.in_((State.QUEUED, State.SPAWNING)),
                    or_(ToolInstance.lease_expires_at.is_(None), ToolInstance.lease_expires_at < now),
                    event=resume, lease_owner=None,
                    lease_expires_at=now + timedelta(seconds=REQUEUE_AFTER_SECONDS)):
                if enqueue_launch(instance.id) is False:
                    _queue_at_next_run(instance.id, State.QUEUED, State.SPAWNING)
                    continue
                actions.append(("resumed", instance.id))
        elif instance.state == State.STOPPING:  # stop is idempotent: finishing it twice is harmless
            due = instance.lease_expires_at is None or instance.lease_expires_at < now
            again = ("reconcile.stop", "Finishing the stop", {"actor": actor, "user_id": instance.owner_id})
            if due and transition(instance.id, ToolInstance.state == State.STOPPING,
                                  or_(ToolInstance.lease_expires_at.is_(None),
                                      ToolInstance.lease_expires_at < now),
                                  event=again,
                                  lease_expires_at=now + timedelta(seconds=lease_seconds())):
                if enqueue_stop(instance.id) is False:
                    _queue_at_next_run(instance.id, State.STOPPING)
                    continue
                actions.append(("stop-again", instance.id))

    for name in config["BERTH_BACKENDS"]:
        backend = get_backend(name, config)
        try:
            managed = backend.list_managed()
        except LaunchFailed as failure:
            log.warning("reconcile: cannot list the %s backend: %s", name, failure.reason)
            continue
        for instance_id, description in managed.items():
            if instance_id in live_ids_by_backend.get(name, set()):
                continue
            # Still live under the database's current view? Re-check: it may have started since.
            current = db.session.get(ToolInstance, instance_id)
            if current is not None and current.state in State.LIVE:
                continue
            try:
                backend.stop_managed(instance_id, description)
            except LaunchFailed as failure:  # the backend is throttling or down: next run retries
                log.warning("reconcile: could not remove orphan %s: %s", instance_id, failure.reason)
                continue
            record_event("reconcile.orphan", f"Removed a {name} tool that had no live instance",
                         actor=actor, instance_id=instance_id if current else None)
            db.session.commit()
            actions.append(("orphan-removed", instance_id))
    metrics.record_reconcile(actions)
    return actions


def _queue_at_next_run(instance_id, *states):
    """The queue refused the message: leave the instance due, not due in REQUEUE_AFTER_SECONDS."""
    update_where(ToolInstance, ToolInstance.id == instance_id, ToolInstance.state.in_(states),
                 ToolInstance.lease_owner.is_(None), lease_expires_at=None, commit=True)


def cull_idle(enqueue_stop, actor="culler"):
    """Stop RUNNING tools idle for longer than their template's idle_timeout (0 = never).

    Activity is what the auth service records: authenticated requests through nginx to the
    tool, including WebSocket handshakes, written at most once per BERTH_ACTIVITY_INTERVAL.
    Traffic on a WebSocket that is already open is not seen, nor is work the tool does alone.
    """
    now = utcnow()
    stopped = []
    running = db.session.execute(
        select(ToolInstance).where(ToolInstance.state == State.RUNNING)
    ).scalars().all()
    for instance in running:
        limit = instance.template.idle_timeout
        last = instance.last_activity_at or instance.running_at or instance.created_at
        if not limit or last > now - timedelta(seconds=limit):
            continue
        idle = int((now - last).total_seconds())
        record_event("cull.idle", f"Idle for {idle} s, more than its limit of {limit} s",
                     actor=actor, instance_id=instance.id, user_id=instance.owner_id,
                     idle_seconds=idle, limit_seconds=limit)
        if begin_stop(instance, actor=actor):
            enqueue_stop(instance.id)
            stopped.append(instance.id)
        else:
            db.session.rollback()
    metrics.record_culled(len(stopped))
    return stopped


def _last_lines(instance, config):
    """What a tool that died wrote last, for its owner to read on the catalogue (or None)."""
    try:
        return clip_detail(get_backend(instance.backend, config).failure_detail(instance))
    except LaunchFailed:
        return None


# -- deleting a user's home ----------------------------------------------------------------------

def live_tools_of(user_id):
    """The user's own tools that are live (queued, starting, running or stopping). A shared tool
    is nobody's own: it works in a home of its own."""
    return db.session.execute(
        select(ToolInstance).join(ToolInstance.template)
        .where(ToolInstance.owner_id == user_id, ToolInstance.state.in_(State.LIVE),
               ToolTemplate.shared.is_(False)).order_by(ToolInstance.id)
    ).scalars().all()


def delete_home(user_id, actor):
    """Delete the user's home on every backend this installation runs, unless a tool of theirs
    is live; record the outcome. Returns "deleted", "refused", "failed" or "gone".

    On PostgreSQL the user's row stays locked until the outcome is recorded: a launch takes that
    lock before it adds its instance (requests._serialise_launch), so none can start in the
    home while it goes."""
    config = current_app.config
    user = db.session.get(User, user_id)
    if user is None:
        return "gone"
    if db.engine.dialect.name == "postgresql":
        db.session.execute(update(User).where(User.id == user.id).values(id=User.id))
    live = live_tools_of(user.id)
    if live:
        record_event("home.delete.refused", f"The home of {user.email} was not deleted: {len(live)} tool(s) "
                     "of theirs still run", actor=actor, user_id=user.id, instances=[row.id for row in live])
        db.session.commit()
        return "refused"
    removed, failures = [], []
    for name in config["BERTH_BACKENDS"]:
        try:
            removed += get_backend(name, config).delete_home(user.host_key)
        except (LaunchFailed, OSError) as failure:
            failures.append(f"{name}: {getattr(failure, 'reason', None) or failure}")
    if failures:
        record_event("home.delete.failed", f"The home of {user.email} was not wholly deleted: {'; '.join(failures)}",
                     actor=actor, user_id=user.id, removed=removed, failures=failures)
    else:
        record_event("home.delete", f"The home of {user.email} was deleted"
                     + (f": {', '.join(removed)}" if removed else " (there was none)"),
                     actor=actor, user_id=user.id, removed=removed)
    db.session.commit()
    return "failed" if failures else "deleted"


# -- measuring homes and team folders ----------------------------------------------------------

STORAGE_FOLDERS = (("home", "BERTH_HOMES_DIR"), ("team", "BERTH_TEAMS_DIR"))
MEASURE_BUDGET_SECONDS = 20.0  # the longest one round spends walking each kind of folder


def measure_storage(budget=MEASURE_BUDGET_SECONDS):
    """Measure the process backend's homes and team folders and record what each holds
    (StorageUsage), dropping the records of folders that are gone. Returns how many were measured."""
    config = current_app.config
    if "process" not in config["BERTH_BACKENDS"]:
        return 0
    homes.forget()  # a fresh look: the records are what the admin pages show
    measured, now = 0, utcnow()
    for kind, setting in STORAGE_FOLDERS:
        found = homes.measure_folder(config[setting], budget)
        db.session.execute(delete(StorageUsage).where(StorageUsage.kind == kind, StorageUsage.name.not_in(found))
                           .execution_options(synchronize_session=False))
        rows = {row.name: row for row in db.session.execute(
            select(StorageUsage).where(StorageUsage.kind == kind)).scalars()}
        for name, usage in found.items():
            if usage is None:  # not reached this round: its last record stands
                continue
            row = rows.get(name) or StorageUsage(kind=kind, name=name)
            row.size_bytes, row.complete, row.measured_at = usage.size_bytes, usage.complete, now
            db.session.add(row)
            measured += 1
    try:
        db.session.commit()
    except IntegrityError:  # another worker recorded the same folder first: its measure stands
        db.session.rollback()
    return measured

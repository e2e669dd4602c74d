"""The launch state machine and the stop, run by the worker (see tasks.py).

A launch moves QUEUED → SPAWNING → RUNNING, one recorded step at a time:

    <backend steps, e.g. allocate, start> → wait_healthy → RUNNING

A worker first takes a lease on the instance with a conditional UPDATE, and its heartbeat
keeps renewing it (leases.py). After each step it records the step's result and the next step
in one conditional UPDATE that also checks the lease and the state. If the worker dies, its
lease runs out and the reconciler enqueues the launch again; the next worker resumes at the
recorded step, and the step being redone finds what the dead worker made (steps are
idempotent), so a tool that had started is adopted, never killed. No in-process lock is
involved.

The spawn timeout measures the tool's own start: it counts from the later of the launch's start
and this worker's taking it up, so time lost to a dead worker or a database outage is not
charged to the tool. A transient database error is retried; it never fails a launch.
"""
import logging
import os
import socket
import time
import uuid
from datetime import timedelta

from flask import current_app
from sqlalchemy import or_
from sqlalchemy.exc import DBAPIError, IntegrityError

from berth import metrics
from berth.extensions import db
from berth.models import State, ToolInstance, record_event, update_where, utcnow
from berth.backends import LaunchFailed, get_backend
from berth.launch.leases import is_transient, lease_seconds, leases, with_database_retries

log = logging.getLogger(__name__)

WAIT_STEP = "wait_healthy"
MAX_ERROR_DETAIL = 8000  # characters of a tool's last output kept with its failure
# The wait between health probes grows with the time the tool has taken so far: a fiftieth of
# it, from 2 ms up to 50 ms. A launch is then seen running within about 2% of the tool's own
# start (a few milliseconds for most tools), at a cost of about 170 probes in the first
# second, most of them a refused connection.
MIN_PROBE_INTERVAL, MAX_PROBE_INTERVAL, PROBE_INTERVAL_SHARE = 0.002, 0.05, 1 / 50


def worker_id():
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _claim(instance_id, me):
    now = utcnow()
    return update_where(
        ToolInstance,
        ToolInstance.id == instance_id,
        ToolInstance.state.in_((State.QUEUED, State.SPAWNING)),
        or_(
            ToolInstance.lease_owner.is_(None),
            ToolInstance.lease_expires_at < now,
            ToolInstance.lease_owner == me,
        ),
        lease_owner=me,
        lease_expires_at=now + timedelta(seconds=lease_seconds()),
        commit=True,
    )


def _fresh(instance_id):
    db.session.expire_all()
    return db.session.get(ToolInstance, instance_id)


def advance_launch(instance_id, me=None):
    """Run a launch from its recorded step to RUNNING or FAILED. Safe to call any number of times."""
    me = me or worker_id()
    taken_up_at = utcnow()
    try:
        return with_database_retries(lambda: _advance_claimed(instance_id, me, taken_up_at),
                                     f"launch of instance {instance_id}")
    except DBAPIError as error:
        if not is_transient(error):
            raise
        return "database-unreachable"  # the lease runs out and the reconciler takes it up again
    finally:
        leases.release(instance_id, me)


def _advance_claimed(instance_id, me, taken_up_at):
    instance = _fresh(instance_id)
    if instance is None:
        return "not-claimed"
    try:
        backend, unknown = get_backend(instance.backend, current_app.config), None
    except LaunchFailed as failure:
        backend, unknown = None, failure
    # A queued launch is claimed and begun in one transaction; one under way is resumed.
    if not ((backend is not None and _claim_and_begin(instance, backend, me)) or _claim(instance_id, me)):
        return "not-claimed"
    leases.hold(instance_id, me)
    if unknown is not None:
        return _fail(_fresh(instance_id), unknown, me)
    try:
        return _advance(instance_id, backend, me, taken_up_at)
    except LaunchFailed as failure:
        return _fail(_fresh(instance_id), failure, me, backend)
    except DBAPIError as error:
        if is_transient(error):
            raise  # with_database_retries waits and resumes at the recorded step
        return _fail_internally(instance_id, error, me, backend)
    except Exception as error:  # noqa: BLE001 - a bug: record it, and leave nothing running
        return _fail_internally(instance_id, error, me, backend)


def _fail_internally(instance_id, error, me, backend):
    log.exception("launch of instance %s failed unexpectedly", instance_id)
    db.session.rollback()
    failure = LaunchFailed(f"Berth hit an internal error ({type(error).__name__}) while starting "
                           "the tool. The operators can find the details in the worker's log.")
    return _fail(_fresh(instance_id), failure, me, backend)


def transition(instance_id, *conditions, event=None, **values):
    """Change one instance if it still meets conditions, and record event (kind, message,
    fields) in the same transaction, so that a worker killed in between leaves neither the
    change without its event nor the event without its change. True if it applied."""
    if not update_where(ToolInstance, ToolInstance.id == instance_id, *conditions, **values):
        db.session.rollback()
        return False
    if event is not None:
        kind, message, fields = event
        record_event(kind, message, instance_id=instance_id, **fields)
    db.session.commit()
    return True


def _claim_and_begin(instance, backend, me):
    """Claim a queued launch and move it to SPAWNING at its first step, in one transaction. False
    if it is not queued, or another worker holds it."""
    if instance.state != State.QUEUED:
        return False
    now = utcnow()
    started = ("spawn.started", f"Starting on the {instance.backend} backend",
               {"actor": "worker", "user_id": instance.owner_id})
    return transition(instance.id, ToolInstance.state == State.QUEUED,
                      or_(ToolInstance.lease_owner.is_(None), ToolInstance.lease_expires_at < now,
                          ToolInstance.lease_owner == me),
                      event=started, state=State.SPAWNING, step=backend.steps[0] if backend.steps else WAIT_STEP,
                      started_at=now, lease_owner=me, lease_expires_at=now + timedelta(seconds=lease_seconds()))


def _advance(instance_id, backend, me, taken_up_at):
    instance = _fresh(instance_id)
    if instance.state == State.QUEUED and not _claim_and_begin(instance, backend, me):
        return "lost"

    while True:
        instance = _fresh(instance_id)
        if instance.state != State.SPAWNING or instance.lease_owner != me:
            return "stopped-elsewhere"
        _check_deadline(instance, taken_up_at)
        if instance.step == WAIT_STEP:
            return _wait_healthy(instance, backend, me, taken_up_at)
        _run_step(instance, backend, me)


def _run_step(instance, backend, me):
    step = instance.step
    steps = list(backend.steps) + [WAIT_STEP]
    next_step = steps[steps.index(step) + 1]
    for attempt in range(5):
        changes = backend.run_step(step, instance)
        values = {"step": next_step, "lease_expires_at": utcnow() + timedelta(seconds=lease_seconds())}
        if "backend_state" in changes:
            values["backend_state"] = {**(instance.backend_state or {}), **changes["backend_state"]}
        for key in ("port", "upstream"):
            if key in changes:
                values[key] = changes[key]
        recorded = ("spawn.step", _STEP_MESSAGES.get(step, step).format(**values),
                    {"actor": "worker", "user_id": instance.owner_id, "step": step})
        try:
            applied = transition(instance.id, ToolInstance.state == State.SPAWNING, ToolInstance.lease_owner == me,
                                 ToolInstance.step == step, event=recorded, **values)
        except IntegrityError:  # another launch took the same port between our check and write
            db.session.rollback()
            instance = _fresh(instance.id)
            continue
        break
    else:
        raise LaunchFailed(f"Step {step} kept colliding with other launches.")
    if not applied:
        # Stopped (or taken over) while this step ran: undo what the step made, then leave.
        instance = _fresh(instance.id)
        if instance.state not in (State.SPAWNING,):
            backend.stop(instance)


_STEP_MESSAGES = {
    "allocate": "Reserved a place to run",
    "start": "Started the tool; waiting for it to answer",
    "run_task": "AWS is starting the task; waiting for the tool to answer",
}


def _check_deadline(instance, taken_up_at):
    timeout = instance.template.spawn_timeout
    since = max(instance.started_at or taken_up_at, taken_up_at)
    if utcnow() > since + timedelta(seconds=timeout):
        raise LaunchFailed(f"The tool did not answer within its spawn timeout of {timeout} s.")


def _wait_healthy(instance, backend, me, taken_up_at):
    probing_since = time.monotonic()
    while True:
        address = backend.check_ready(instance)
        if address:
            break
        time.sleep(probe_interval(time.monotonic() - probing_since))
        if leases.lost(instance.id, me):  # stopped, or taken over while this worker was paused
            return "stopped-elsewhere"
        _check_deadline(instance, taken_up_at)

    now = utcnow()
    seconds = (now - instance.started_at).total_seconds() if instance.started_at else 0
    running = ("spawn.running", f"Running; answered after {seconds:.1f} s",
               {"actor": "worker", "user_id": instance.owner_id, "seconds": round(seconds, 3)})
    if not transition(instance.id, ToolInstance.state == State.SPAWNING, ToolInstance.lease_owner == me,
                      event=running, state=State.RUNNING, step="", upstream=address, running_at=now,
                      last_activity_at=now, lease_owner=None, lease_expires_at=None):
        return "stopped-elsewhere"
    metrics.record_launch(instance.backend, "running", seconds)
    return "running"


def probe_interval(seconds_waited):
    """Seconds until the next health probe of a tool that has not answered for seconds_waited."""
    return min(max(seconds_waited * PROBE_INTERVAL_SHARE, MIN_PROBE_INTERVAL), MAX_PROBE_INTERVAL)


def _fail(instance, failure, me, backend=None):
    """Record the reason, make sure nothing is left running, and end the launch."""
    detail = failure.detail
    if backend is not None:
        detail = detail or backend.failure_detail(instance)
        backend.stop(instance)
    failed = ("spawn.failed", failure.reason, {"actor": "worker", "user_id": instance.owner_id})
    if not transition(instance.id, ToolInstance.state.in_((State.QUEUED, State.SPAWNING)),
                      ToolInstance.lease_owner == me, event=failed, state=State.FAILED, error=failure.reason,
                      error_detail=clip_detail(detail), ended_at=utcnow(),
                      lease_owner=None, lease_expires_at=None):
        return "stopped-elsewhere"
    metrics.record_launch(instance.backend, "failed")
    log.info("instance %s failed: %s", instance.id, failure.reason)
    return "failed"


def clip_detail(detail):
    """The end of what a tool wrote, as kept with its failure; None when it wrote nothing."""
    return detail[-MAX_ERROR_DETAIL:] if detail else None


def begin_stop(instance, actor):
    """Move a live instance to STOPPING, recording who asked. False if it was not live.

    The caller queues the stop itself (berth.launch.requests.request_stop, or the culler).
    """
    requested = ("instance.stop", "Stop requested", {"actor": actor, "user_id": instance.owner_id})
    # No owner: a launch in progress sees the change at its next conditional update. The
    # reconciler queues the stop again only if it is not finished within a lease.
    return transition(instance.id, ToolInstance.state.in_((State.QUEUED, State.SPAWNING, State.RUNNING)),
                      event=requested, state=State.STOPPING, lease_owner=None,
                      lease_expires_at=utcnow() + timedelta(seconds=lease_seconds()))


def stop_instance(instance_id):
    """Finish a stop that begin_stop began: end the tool, then mark it STOPPED. Idempotent."""
    instance = _fresh(instance_id)
    if instance is None or instance.state != State.STOPPING:
        return "not-stopping"
    try:
        get_backend(instance.backend, current_app.config).stop(instance)
    except LaunchFailed:
        pass  # an unknown backend has nothing of ours to stop
    stopped = ("instance.stopped", "Stopped", {"actor": "worker", "user_id": instance.owner_id})
    transition(instance_id, ToolInstance.state == State.STOPPING, event=stopped, state=State.STOPPED,
               step="", ended_at=utcnow(), lease_owner=None, lease_expires_at=None)
    return "stopped"

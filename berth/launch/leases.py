"""The worker's hold on the launches it runs, and its patience with a database that blips.

A launch is held by a lease: a row's lease_owner and lease_expires_at. One heartbeat thread per
worker process renews every lease the process holds, every third of BERTH_LEASE_SECONDS, so a
step that blocks (a slow `docker create`, AWS starting a task) keeps its lease, and a worker
that dies loses all of them within BERTH_LEASE_SECONDS. The reconciler, every
BERTH_RECONCILE_SECONDS, then queues each such launch again (upkeep.py).

Transient database errors (a reset connection, a restarting server) are retried with back-off
by with_database_retries; they never fail a launch.
"""
import logging
import threading
import time
from datetime import timedelta

from flask import current_app
from sqlalchemy.exc import DBAPIError, OperationalError

from berth.extensions import db
from berth.models import State, ToolInstance, update_where, utcnow

log = logging.getLogger(__name__)

# Once the reconciler has queued a launch again, it leaves it this long before queuing it once
# more (its message may be waiting behind others). A stop is left for one lease.
REQUEUE_AFTER_SECONDS = 30

# Back-off between attempts while the database is unreachable: about a minute in all. After
# that the launch is left to the reconciler, which takes it up once its lease runs out.
RETRY_DELAYS = (0.2, 0.5, 1, 2, 4, 8, 15, 30)


def is_transient(error):
    """True for a database error that a retry can cure: the connection or the server, not the SQL."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def with_database_retries(action, what):
    """Run action(); while it raises a transient database error, roll back, wait and run it again.

    Logs one line when the database first fails and one when it answers again. Re-raises the
    last error once RETRY_DELAYS are spent."""
    failing_since = None
    for delay in (*RETRY_DELAYS, None):
        try:
            result = action()
        except DBAPIError as error:
            if not is_transient(error):
                raise
            db.session.rollback()
            if delay is None:
                log.warning("%s: the database is still unreachable after %.0f s; leaving it to the "
                            "reconciler", what, time.monotonic() - failing_since)
                raise
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("%s: the database is unreachable (%s); retrying",
                            what, type(error.orig or error).__name__)
            time.sleep(delay)
            continue
        if failing_since is not None:
            log.info("%s: the database answered again after %.1f s", what, time.monotonic() - failing_since)
        return result


def lease_seconds():
    return current_app.config["BERTH_LEASE_SECONDS"]


class LeaseKeeper:
    """Renews the leases this process holds, from one thread, until each is released.

    hold() and release() are called by the launch that claimed the lease; lost() tells it when a
    renewal found the lease taken (the launch was stopped, or another worker took it over
    while this one was paused)."""

    def __init__(self):
        self._held = {}  # instance id → owner
        self._lost = set()
        self._lock = threading.Lock()
        self._renewing = threading.Lock()  # held for a whole renewal pass (see hand_back)
        self._thread = None
        self._app = None

    def hold(self, instance_id, owner):
        with self._lock:
            self._held[instance_id] = owner
            self._lost.discard((instance_id, owner))
            if self._thread is None or not self._thread.is_alive():
                self._app = current_app._get_current_object()
                self._thread = threading.Thread(target=self._renew_forever, name="berth-leases",
                                                daemon=True)
                self._thread.start()

    def release(self, instance_id, owner):
        with self._lock:
            if self._held.get(instance_id) == owner:
                del self._held[instance_id]
            self._lost.discard((instance_id, owner))

    def lost(self, instance_id, owner):
        with self._lock:
            return (instance_id, owner) in self._lost

    def _renew_forever(self):
        with self._app.app_context():
            while True:
                seconds = lease_seconds()
                time.sleep(seconds / 3)
                try:
                    self.renew(seconds)
                except DBAPIError as error:
                    db.session.rollback()  # the launches' own retries log the outage
                    log.debug("lease renewal failed: %s", error)
                except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                    db.session.rollback()
                    log.exception("lease renewal failed")
                finally:
                    db.session.remove()

    def renew(self, seconds):
        with self._renewing:
            self._renew(seconds)

    def _renew(self, seconds):
        with self._lock:
            held = dict(self._held)
        expires = utcnow() + timedelta(seconds=seconds)
        for instance_id, owner in held.items():
            renewed = update_where(ToolInstance, ToolInstance.id == instance_id,
                                   ToolInstance.state.in_((State.QUEUED, State.SPAWNING)),
                                   ToolInstance.lease_owner == owner,
                                   lease_expires_at=expires, commit=True)
            if not renewed:
                with self._lock:
                    if self._held.get(instance_id) == owner:
                        del self._held[instance_id]
                        self._lost.add((instance_id, owner))


    def hand_back(self):
        """End every lease this process holds now, for a worker that leaves with launches still
        under way: the reconciler takes them up at its next run instead of once the leases run
        out. Each only if this process still holds it. Returns the instance ids handed back."""
        with self._lock:
            held, self._held = dict(self._held), {}
        # A renewal pass under way would extend a lease after it was handed back: let it end.
        if self._renewing.acquire(timeout=2):
            self._renewing.release()
        handed_back = []
        for instance_id, owner in held.items():
            try:
                if update_where(ToolInstance, ToolInstance.id == instance_id,
                                ToolInstance.state.in_((State.QUEUED, State.SPAWNING)),
                                ToolInstance.lease_owner == owner,
                                lease_expires_at=utcnow(), commit=True):
                    handed_back.append(instance_id)
            except DBAPIError as error:  # the lease runs out by itself
                db.session.rollback()
                log.warning("could not hand back the lease on instance %s (%s); it runs out within "
                            "%s s", instance_id, type(error.orig or error).__name__, lease_seconds())
        return handed_back


leases = LeaseKeeper()

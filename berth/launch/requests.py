"""Starting and stopping tools, deleting homes and measuring storage, as the web app asks for it.
The worker does the rest."""
import time

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from berth.launch import tasks
from berth.launch.state_machine import begin_stop
from berth.launch.upkeep import live_tools_of
from berth.extensions import db
from berth.models import (Event, State, StorageUsage, ToolInstance, ToolTemplate, lock_user, record_event,
                          update_where, utcnow)


def live_instance(host):
    return db.session.execute(
        select(ToolInstance).where(ToolInstance.host == host, ToolInstance.state.in_(State.LIVE))
    ).scalar_one_or_none()


def latest_instance(host):
    return db.session.execute(
        select(ToolInstance)
        .where(ToolInstance.host == host)
        .order_by(ToolInstance.created_at.desc(), ToolInstance.id.desc())
        .limit(1)
    ).scalar_one_or_none()


class LaunchRefused(Exception):
    """A launch that must not happen (a limit is reached, an unknown size). Shown as 429 or 400."""

    def __init__(self, reason, status=429):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def choose_size(template, name=None):
    """The template's size called name (its first size by default), as recorded on the instance."""
    sizes = template.sizes or []
    if not sizes:
        if name:
            raise LaunchRefused(f"{template.name} offers no sizes to choose from.", status=400)
        return {}
    if not name:
        return dict(sizes[0])
    for size in sizes:
        if size["name"] == name:
            return dict(size)
    names = ", ".join(size["name"] for size in sizes)
    raise LaunchRefused(f"{template.name} has no size {name!r}; choose one of: {names}.", status=400)


# The PostgreSQL advisory lock that serialises launches under a global limit (any constant
# no other code takes; "berth" in ASCII).
_GLOBAL_LAUNCH_LOCK = 0x6265727468


def _serialise_launch(owner, everyone):
    """Hold, until this transaction ends, the lock that makes counting then inserting atomic.

    The owner's row lock (lock_user) queues one user's racing launches on PostgreSQL, and every
    launch on SQLite. Under a global limit, PostgreSQL launches by different users must queue
    too: one advisory lock for all.
    """
    lock_user(owner)
    if everyone and db.engine.dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(_GLOBAL_LAUNCH_LOCK)))


def _check_limits(owner, template):
    """Refuse a launch over the per-user or the global limit of live tools.

    Shared tools count towards the global limit only: they belong to everyone with access.
    Racing launches are serialised first (_serialise_launch), so none can squeeze under a limit
    that another is about to fill.
    """
    config = current_app.config
    _serialise_launch(owner, everyone=bool(config["BERTH_MAX_TOOLS_TOTAL"]))
    per_user, total = config["BERTH_MAX_TOOLS_PER_USER"], config["BERTH_MAX_TOOLS_TOTAL"]
    live = ToolInstance.state.in_(State.LIVE)
    if per_user and not template.shared:
        personal = ToolInstance.template_id.in_(select(ToolTemplate.id).where(ToolTemplate.shared.is_(False)))
        mine = db.session.scalar(select(func.count()).where(live, personal, ToolInstance.owner_id == owner.id))
        if mine >= per_user:
            raise LaunchRefused(f"You already have {mine} tools running, the most allowed per person "
                                f"is {per_user}. Stop one of them, then try again.")
    if total:
        everyone = db.session.scalar(select(func.count()).where(live))
        if everyone >= total:
            raise LaunchRefused(f"Berth is running its maximum of {total} tools. Try again when "
                                "someone stops one, or ask an administrator.")


def request_launch(template, owner, host, actor, size_name=None):
    """Return the live instance for host, creating and queueing one if there is none.

    Safe when requests race: the partial unique index on live hosts lets exactly one INSERT
    win, and the others read the winner's row. Raises LaunchRefused over a limit.
    """
    existing = live_instance(host)
    if existing is not None:
        return existing, False
    size = choose_size(template, size_name)
    _check_limits(owner, template)
    instance = ToolInstance(template=template, owner=owner, host=host, backend=template.backend,
                            state=State.QUEUED, size=size)
    db.session.add(instance)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return live_instance(host), False
    size_note = f" ({size['name']}: {size['cpu']} CPU, {size['memory_mb']} MB)" if size else ""
    record_event("instance.launch", f"Launch of {template.name} requested{size_note}", actor=actor,
                 user_id=owner.id, instance_id=instance.id, template=template.slug, size=size)
    db.session.commit()
    tasks.enqueue_launch(instance.id)
    return instance, True


def request_stop(instance, actor):
    """Move a live instance to STOPPING and queue the stop. False if it was not live."""
    if not begin_stop(instance, actor):
        return False
    tasks.enqueue_stop(instance.id)
    return True


class HomeDeletionRefused(Exception):
    """A home that cannot be deleted now, with what to tell the administrator."""


def request_home_deletion(user, actor):
    """Record the request and queue the deletion of the user's home, which the worker carries out
    (it alone may reach every backend's storage). Refused while a tool of theirs is live; the
    worker checks again before it deletes anything."""
    live = live_tools_of(user.id)
    if live:
        names = ", ".join(sorted({row.template.name for row in live}))
        raise HomeDeletionRefused(
            f"{user.email} has {len(live)} tool{'s' if len(live) > 1 else ''} running or starting ({names}): "
            "a home in use is never deleted. Stop them first (Instances), then delete the home.")
    record_event("home.delete.request", f"Deletion of the home of {user.email} requested", actor=actor,
                 user_id=user.id)
    db.session.commit()
    if not tasks.enqueue_home_deletion(user.id, actor):
        raise HomeDeletionRefused("The queue did not take the deletion; nothing was deleted. Try again shortly.")


STORAGE_FRESH_SECONDS = 30  # storage measures older than this are measured again when shown
_storage_measure_asked = [0.0]  # monotonic time this process last asked for one


def storage_usage(kind, names):
    """{name: StorageUsage or None} of the homes ("home") or team folders ("team") called names,
    as the worker last measured them. When the measures are older than STORAGE_FRESH_SECONDS,
    a new round is queued (at most once in that time by this process) for a later view."""
    from datetime import timedelta

    rows = {row.name: row for row in db.session.execute(
        select(StorageUsage).where(StorageUsage.kind == kind, StorageUsage.name.in_(names))).scalars()}
    newest = db.session.scalar(select(func.max(StorageUsage.measured_at)))
    now = time.monotonic()
    stale = newest is None or newest < utcnow() - timedelta(seconds=STORAGE_FRESH_SECONDS)
    if stale and now - _storage_measure_asked[0] > STORAGE_FRESH_SECONDS:
        _storage_measure_asked[0] = now
        tasks.enqueue_storage_measure()
    return {name: rows.get(name) for name in names}


def mark_failure_shown(instance):
    """True the first time only: the failed page shows once, and a reload then retries."""
    return update_where(ToolInstance, ToolInstance.id == instance.id, ToolInstance.state == State.FAILED,
                        ToolInstance.error_shown.is_(False), commit=True, error_shown=True) == 1


def instance_events(instance, limit=50):
    return db.session.execute(
        select(Event).where(Event.instance_id == instance.id).order_by(Event.id).limit(limit)
    ).scalars().all()

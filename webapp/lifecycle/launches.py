"""Starting and stopping tools, as the web app asks for it. The worker does the rest."""
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from webapp import tasks
from webapp.extensions import db
from webapp.models import Event, State, ToolInstance, record_event


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


def request_launch(template, owner, host, actor):
    """Return the live instance for host, creating and queueing one if there is none.

    Safe when requests race: the partial unique index on live hosts lets exactly one INSERT
    win, and the others read the winner's row.
    """
    existing = live_instance(host)
    if existing is not None:
        return existing, False
    instance = ToolInstance(template=template, owner=owner, host=host, backend=template.backend,
                            state=State.QUEUED)
    db.session.add(instance)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return live_instance(host), False
    record_event("instance.launch", f"Launch of {template.name} requested", actor=actor,
                 user_id=owner.id, instance_id=instance.id, template=template.slug)
    db.session.commit()
    tasks.enqueue_launch(instance.id)
    return instance, True


def request_stop(instance, actor, enqueue=True):
    """Move a live instance to STOPPING and queue the stop. False if it was not live."""
    result = db.session.execute(
        update(ToolInstance)
        .where(ToolInstance.id == instance.id,
               ToolInstance.state.in_((State.QUEUED, State.SPAWNING, State.RUNNING)))
        .values(state=State.STOPPING)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        return False
    record_event("instance.stop", "Stop requested", actor=actor, user_id=instance.owner_id,
                 instance_id=instance.id)
    db.session.commit()
    if enqueue:
        tasks.enqueue_stop(instance.id)
    return True


def mark_failure_shown(instance):
    """True the first time only: the failed page shows once, and a reload then retries."""
    result = db.session.execute(
        update(ToolInstance)
        .where(ToolInstance.id == instance.id, ToolInstance.state == State.FAILED,
               ToolInstance.error_shown.is_(False))
        .values(error_shown=True)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return result.rowcount == 1


def instance_events(instance, limit=50):
    return db.session.execute(
        select(Event).where(Event.instance_id == instance.id).order_by(Event.id).limit(limit)
    ).scalars().all()

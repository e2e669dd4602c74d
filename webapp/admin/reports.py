"""Reading for administrators: the usage report, the audit log, the instance list, and CSV export."""
import csv
import io
import re
from datetime import date, datetime, time, timedelta, timezone

from flask import Response, stream_with_context
from sqlalchemy import Integer, and_, case, func, literal, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from berth.extensions import db
from berth.models import DateTime, Event, State, ToolInstance, ToolTemplate, User, utcnow

PER_PAGE = 50
DEFAULT_DAYS = 30


class DateRange:
    """From the start of `first` to the end of `last` (whole UTC days), read from a query string."""

    def __init__(self, args):
        self.errors = {}
        today = utcnow().date()
        self.last = self._date(args, "end", today)
        self.first = self._date(args, "start", self.last - timedelta(days=DEFAULT_DAYS - 1))
        if self.first > self.last:
            self.errors["start"] = "The start date is after the end date."
            self.first = self.last
        self.start = datetime.combine(self.first, time.min, tzinfo=timezone.utc)
        self.end = datetime.combine(self.last + timedelta(days=1), time.min, tzinfo=timezone.utc)

    def _date(self, args, name, default):
        text = (args.get(name) or "").strip()
        if not text:
            return default
        try:
            return date.fromisoformat(text)
        except ValueError:
            self.errors[name] = f"{text!r} is not a date such as {default.isoformat()}."
            return default

    @property
    def query(self):
        return {"start": self.first.isoformat(), "end": self.last.isoformat()}


def page_of(statement, page):
    """One page of a select, and whether another page follows."""
    rows = db.session.execute(statement.limit(PER_PAGE + 1).offset((page - 1) * PER_PAGE)).scalars().all()
    return rows[:PER_PAGE], len(rows) > PER_PAGE


# -- usage ------------------------------------------------------------------------------------

def _sql_function(postgres_name, sqlite_name):
    """A SQL function that PostgreSQL and SQLite spell differently."""
    class Function(FunctionElement):
        inherit_cache = True

    def spell(name):
        return lambda element, compiler, **kw: f"{name}({compiler.process(element.clauses, **kw)})"

    compiles(Function)(spell(postgres_name))
    compiles(Function, "sqlite")(spell(sqlite_name))
    return Function


_Greatest = _sql_function("greatest", "max")  # the largest of its arguments (SQLite's max of many)
_Least = _sql_function("least", "min")


class _Seconds(FunctionElement):
    """Whole seconds from its second argument to its first (two timestamps)."""
    type = Integer()
    inherit_cache = True


@compiles(_Seconds)
def _seconds(element, compiler, **kw):
    end, start = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM ({end} - {start}))) AS INTEGER)"


@compiles(_Seconds, "sqlite")
def _seconds_sqlite(element, compiler, **kw):
    end, start = (compiler.process(clause, **kw) for clause in element.clauses)
    # julianday() is a float of days: round to the millisecond before truncating to seconds.
    return f"CAST(ROUND((julianday({end}) - julianday({start})) * 86400, 3) AS INTEGER)"


def usage(period, now=None):
    """Launches and run time in period, per user and per template, summed by the database.

    A launch counts in the period it was created in. Run time is the time from running_at to
    ended_at (or now, for a tool still running), clipped to the period.
    """
    now = now or utcnow()
    start, end, now = (literal(value, DateTime()) for value in (period.start, period.end, now))
    instance = ToolInstance
    launched = case((and_(instance.created_at >= start, instance.created_at < end), 1), else_=0)
    ran = _Seconds(_Least(func.coalesce(instance.ended_at, now), end, now), _Greatest(instance.running_at, start))
    run_seconds = case((instance.running_at.is_(None), 0), else_=_Greatest(ran, 0))
    in_period = (instance.created_at < end, or_(instance.ended_at.is_(None), instance.ended_at >= start))

    def per(*columns):
        launches, seconds = func.sum(launched).label("launches"), func.sum(run_seconds).label("run_seconds")
        rows = db.session.execute(
            select(*columns, launches, seconds).select_from(instance)
            .join(User, instance.owner_id == User.id).join(ToolTemplate, instance.template_id == ToolTemplate.id)
            .where(*in_period).group_by(*columns).having(or_(launches > 0, seconds > 0))
            .order_by(seconds.desc(), launches.desc(), *columns[1:])).all()
        return [{"id": row[0], "label": row[1] if len(row) == 4 else f"{row[1]} ({row[2]})",
                 "launches": int(row[-2]), "run_seconds": int(row[-1])} for row in rows]

    return per(User.id, User.email), per(ToolTemplate.id, ToolTemplate.name, ToolTemplate.slug)


# -- audit log --------------------------------------------------------------------------------

def audit_filters(args, period):
    """The audit log's conditions from a query string, and the problems with it and with period."""
    conditions = [Event.created_at >= period.start, Event.created_at < period.end]
    errors = {}
    kind = (args.get("kind") or "").strip()
    if kind:
        # "instance" matches instance.stop and instance.start; "instance.stop" only itself.
        conditions.append(or_(Event.kind == kind, Event.kind.startswith(kind.rstrip(".") + ".", autoescape=True)))
    actor = (args.get("actor") or "").strip()
    if "@" in actor:  # a person, by email: what they did as a user and as an administrator
        actor_id = _user_id(actor)
        if actor_id is None:
            errors["actor"] = f"There is no user with the email {actor!r}."
        conditions.append(Event.actor.in_([f"user:{actor_id}", f"admin:{actor_id}"]))
    elif actor:
        conditions.append(Event.actor == actor)
    if not kind.startswith("spawn"):
        conditions.append(Event.kind.not_in(LAUNCH_STEPS))  # shown folded into their launch
    user = (args.get("user") or "").strip()
    if user:
        user_id = user if user.isdigit() else _user_id(user)
        if user_id is None:
            errors["user"] = f"There is no user with the email {user!r}."
            user_id = -1
        conditions.append(Event.user_id == int(user_id))
    return conditions, {**errors, **period.errors}


def _user_id(email):
    return db.session.scalar(select(User.id).where(func.lower(User.email) == email.lower()))


# A launch's progress, shown under its instance.launch event (its failure, spawn.failed, stands alone).
LAUNCH_STEPS = ("spawn.started", "spawn.step", "spawn.running")
_PERSON_ACTOR = re.compile(r"(?:user|admin):(\d{1,10})")


def launch_steps(events):
    """The steps of each launch among events: {instance id: [step events, oldest first]}."""
    ids = {event.instance_id for event in events if event.kind == "instance.launch" and event.instance_id}
    steps = {}
    if ids:
        for step in db.session.execute(select(Event).where(Event.kind.in_(LAUNCH_STEPS), Event.instance_id.in_(ids))
                                       .order_by(Event.id)).scalars():
            steps.setdefault(step.instance_id, []).append(step)
    return steps


def actor_emails(actors):
    """{actor: email} for the actors among actors that name a person ("user:7", "admin:7")."""
    ids = {actor: int(match.group(1)) for actor in set(actors) if actor and (match := _PERSON_ACTOR.fullmatch(actor))}
    emails = user_emails(ids.values())
    return {actor: emails[user_id] for actor, user_id in ids.items() if user_id in emails}


def audit_events(conditions):
    return select(Event).where(*conditions).order_by(Event.id.desc())


def event_kinds():
    return db.session.execute(select(Event.kind).distinct().order_by(Event.kind)).scalars().all()


def user_emails(ids):
    return dict(db.session.execute(select(User.id, User.email).where(User.id.in_(set(ids) - {None}))).all())


# -- instances ----------------------------------------------------------------------------------

def instance_filters(args):
    conditions, errors = [], {}
    state = (args.get("state") or "").strip().upper()
    if state == "LIVE":
        conditions.append(ToolInstance.state.in_(State.LIVE))
    elif state in State.LIVE + State.ENDED:
        conditions.append(ToolInstance.state == state)
    elif state:
        errors["state"] = f"There is no state {state!r}."
    user = (args.get("user") or "").strip()
    if user:
        conditions.append(ToolInstance.owner_id.in_(
            select(User.id).where(func.lower(User.email).contains(user.lower(), autoescape=True))))
    slug = (args.get("template") or "").strip()
    if slug:
        conditions.append(ToolInstance.template_id.in_(select(ToolTemplate.id).where(ToolTemplate.slug == slug)))
    return conditions, errors


# -- CSV --------------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A cell a spreadsheet shows as text: one starting like a formula gets a leading quote."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_response(filename, header, rows):
    """Stream rows (an iterable, read as the response is sent) as a CSV download."""
    def generate():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(header)
        for number, row in enumerate(rows, start=1):
            writer.writerow([csv_cell(cell) for cell in row])
            if number % 200 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    return Response(stream_with_context(generate()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def audit_rows(conditions):
    """The audit log as CSV rows, read from the database in batches as they are sent."""
    import json

    statement = (select(Event, User.email).outerjoin(User, Event.user_id == User.id).where(*conditions)
                 .order_by(Event.id.desc()).execution_options(yield_per=500))
    for event, email in db.session.execute(statement):
        data = event.data or {}
        rest = {key: value for key, value in data.items() if key not in ("before", "after")}
        yield [event.id, event.created_at, event.kind, event.actor, event.user_id,
               email, event.instance_id, event.message,
               json.dumps(data["before"], sort_keys=True) if "before" in data else "",
               json.dumps(data["after"], sort_keys=True) if "after" in data else "",
               json.dumps(rest, sort_keys=True) if rest else ""]


AUDIT_HEADER = ["id", "time", "kind", "actor", "user_id", "user_email", "instance_id", "message",
                "before", "after", "data"]

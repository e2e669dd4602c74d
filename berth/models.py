"""The whole state of Berth. The web app owns this schema; migrations live in migrations/.

No process keeps anything in memory that another replica would need: sessions, launches and
their progress are rows here, and every change is a conditional UPDATE or guarded by a
unique index, so replicas can race safely.
"""
import hashlib
import itertools
import secrets
from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, Column, ForeignKey, Index, Integer, String, Table, Text,
                        UniqueConstraint, delete, event, func, select, text, update)
from sqlalchemy import DateTime as _DateTime
from sqlalchemy.orm import Mapped, mapped_column, object_session, relationship
from sqlalchemy.types import TypeDecorator
from flask import has_request_context
from werkzeug.security import check_password_hash, generate_password_hash

from berth.extensions import db
from berth.hosts import MAX_ADDRESS_NAME_LENGTH, address_name_base, address_name_candidates
from berth.web import client_ip


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps are UTC and come back timezone-aware on SQLite as on PostgreSQL."""

    impl = _DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def DateTime(timezone=True):  # noqa: N802 - reads like the SQLAlchemy type it stands for
    return UTCDateTime()


def hash_token(token):
    """Sessions and tokens are stored as SHA-256 of the random value; the value itself never is."""
    return hashlib.sha256(token.encode()).hexdigest()


class State:
    QUEUED = "QUEUED"
    SPAWNING = "SPAWNING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    # A host has at most one instance in these states (partial unique index below).
    LIVE = (QUEUED, SPAWNING, RUNNING, STOPPING)
    ENDED = (STOPPED, FAILED)


_LIVE_SQL = "state IN ('QUEUED', 'SPAWNING', 'RUNNING', 'STOPPING')"


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(300))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Short, stable and opaque: names the user's home, volumes and access points, and the
    # older form of their tool addresses, <slug>-<host_key>.<domain>, which still works.
    host_key: Mapped[str] = mapped_column(
        String(16), unique=True, default=lambda: secrets.token_hex(4)
    )
    # The readable part of the user's tool addresses, <slug>--<address_name>.<domain>: made once,
    # when the user is (_give_an_address_name), and never changed, so that addresses stay put.
    address_name: Mapped[str] = mapped_column(String(MAX_ADDRESS_NAME_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Single sign-on: the provider's issuer and subject name this user from the first sign-in on.
    oidc_issuer: Mapped[str | None] = mapped_column(String(300))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (UniqueConstraint("oidc_issuer", "oidc_subject", name="uq_users_oidc_identity"),)

    def set_password(self, password):
        self.password_hash = hash_password(password)

    def check_password(self, password):
        return bool(self.password_hash) and check_password_hash(self.password_hash, password)

    @property
    def display_name(self):
        return self.name or self.email


def hash_password(password):
    """What a user's password_hash holds for password (salted, slow: made once per change)."""
    return generate_password_hash(password)


def verify_password(user, password):
    """True if user is an active account with this password. It takes as long when there is no
    such user, or the user has no password, as when the password is wrong: the time of the
    answer must not tell which emails have accounts."""
    stored = user.password_hash if user is not None and user.password_hash else _stand_in_hash()
    matches = check_password_hash(stored, password)
    return matches and user is not None and bool(user.password_hash) and user.is_active


_STAND_IN_HASH = []


def _stand_in_hash():
    """A hash of a random password, made once per process, with the same method as real ones."""
    if not _STAND_IN_HASH:
        _STAND_IN_HASH.append(generate_password_hash(secrets.token_urlsafe(16)))
    return _STAND_IN_HASH[0]


class Session(db.Model):
    """A sign-in. The browser holds the random token; this row holds only its hash."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(300), default="")
    # For the idle lifetime. The auth check writes it at most once per BERTH_ACTIVITY_INTERVAL.
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                   server_default=func.now())
    # How the user signed in: "password" or "oidc" (logout then also signs out at the provider).
    method: Mapped[str] = mapped_column(String(20), default="password", server_default="password")

    user: Mapped[User] = relationship()


class ToolSignIn(db.Model):
    """A platform sign-in carried to one tool host by the sign-in hand-off (auth_service/handoff.py).

    The main host issues a one-time code for (session, host); the tool host redeems it once
    and sets its own host-only cookie, whose hash is then stored here. The row lives and dies
    with its session: the auth check accepts the cookie only on this host and only while the
    session is live, so signing out or revoking the session ends every tool cookie at once.
    """

    __tablename__ = "tool_sign_ins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    code_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when the code is redeemed (once: a conditional UPDATE); the tool host's cookie.
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    redeemed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(db.Model):
    """A personal API token. Shown once at creation; this row holds only its hash."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The token's first characters, so that people can tell their tokens apart.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the token may do (berth/tokens.py SCOPES): "read", "launch" or "admin".
    scope: Mapped[str] = mapped_column(String(10), default="read", server_default="launch")

    user: Mapped[User] = relationship()

    __table_args__ = (CheckConstraint("scope IN ('read', 'launch', 'admin')", name="ck_api_tokens_scope"),)


class Group(db.Model):
    """A named set of users. Single sign-on fills groups from the provider's groups claim."""

    __tablename__ = "groups"
    # A group's id names its team folder's gid (berth/backends/teams.py): never hand a deleted
    # group's id to a new one, whose members would then hold the old folder's gid.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A folder its members' tools mount read-write, and nobody else's (berth/backends/teams.py).
    team_folder: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class Membership(db.Model):
    """A user in a group. source "oidc" rows follow the groups claim at every sign-in; others stay."""

    __tablename__ = "memberships"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(20), default="local", server_default="local")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    group: Mapped[Group] = relationship()

    __table_args__ = (UniqueConstraint("group_id", "user_id", name="uq_memberships_group_user"),)


# The groups whose members may launch a template. A template with none is open to everyone.
template_groups = Table(
    "template_groups",
    db.metadata,
    Column("template_id", ForeignKey("tool_templates.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)


class ToolTemplate(db.Model):
    """What a tool is: how to run it and how to tell that it is up, and who may open it."""

    __tablename__ = "tool_templates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    backend: Mapped[str] = mapped_column(String(20), default="process")
    command: Mapped[list] = mapped_column(JSON, default=list)
    image: Mapped[str | None] = mapped_column(String(300))
    port: Mapped[int | None] = mapped_column(Integer)
    env: Mapped[dict] = mapped_column(JSON, default=dict)
    health_path: Mapped[str] = mapped_column(String(300), default="/")
    spawn_timeout: Mapped[int] = mapped_column(Integer, default=60)
    idle_timeout: Mapped[int] = mapped_column(Integer, default=3600)
    # Named sizes the user picks from: [{"name": "small", "cpu": 0.5, "memory_mb": 512}, ...].
    sizes: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    # Whether API clients may reach the tool with `Authorization: Bearer <Berth API token>`.
    allow_api_tokens: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # One instance for everyone with access, at <slug>.<domain>, instead of one per user.
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Whether the tool receives X-Berth-User-Email, -Name and -Groups from the auth answer.
    identity_headers: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # Whether the tool may open connections beyond Berth's host (process backend: its
    # namespace's route out). Never to Berth's services or other tools either way.
    egress: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # False: the tool sees none of its user's files (no home, no team folders), only a scratch
    # folder of its own that goes when it stops.
    home: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    # CIDRs a client must come from to reach the tool at all; empty means anywhere.
    ip_allowlist: Mapped[list] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    groups: Mapped[list[Group]] = relationship(secondary=template_groups, order_by=Group.name)


class ToolInstance(db.Model):
    """One launch of a template, and the resumable record of how far it has got."""

    __tablename__ = "tool_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("tool_templates.id"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default=State.QUEUED)
    # The next launch step to run; each backend names its own steps.
    step: Mapped[str] = mapped_column(String(32), default="")
    backend: Mapped[str] = mapped_column(String(20))
    # What the backend has recorded so far (pid, container id, ...): enough to resume.
    backend_state: Mapped[dict] = mapped_column(JSON, default=dict)
    port: Mapped[int | None] = mapped_column(Integer)
    # The size chosen at launch: {"name": ..., "cpu": ..., "memory_mb": ...}.
    size: Mapped[dict] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    upstream: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    # The failed page is shown once; reloading it after that retries the launch.
    error_shown: Mapped[bool] = mapped_column(Boolean, default=False)
    # Which worker is advancing this launch, and until when; another may take over after.
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When a worker first took the launch up; the spawn timeout counts from here.
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    running_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_activity_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    template: Mapped[ToolTemplate] = relationship()
    owner: Mapped[User] = relationship()

    __table_args__ = (
        # At most one live instance per host: this is what makes the start page idempotent.
        Index(
            "uq_tool_instances_live_host",
            "host",
            unique=True,
            postgresql_where=text(_LIVE_SQL),
            sqlite_where=text(_LIVE_SQL),
        ),
        # Two live instances never share an allocated port.
        Index(
            "uq_tool_instances_live_port",
            "port",
            unique=True,
            postgresql_where=text(f"{_LIVE_SQL} AND port IS NOT NULL"),
            sqlite_where=text(f"{_LIVE_SQL} AND port IS NOT NULL"),
        ),
        Index("ix_tool_instances_host_created", "host", "created_at"),
        Index("ix_tool_instances_state", "state"),
    )


# Exactly one grantee: a user, a group, or an email without an account yet.
GRANTEE_COUNT = ("(CASE WHEN user_id IS NULL THEN 0 ELSE 1 END) + (CASE WHEN group_id IS NULL THEN 0 ELSE 1 END)"
                 " + (CASE WHEN email IS NULL THEN 0 ELSE 1 END)")


class Grant(db.Model):
    """The owner of a personal tool lets another user, or a group, open it at its address.

    Keyed on the tool's host, so that a grant outlives one run of the tool and holds for the
    next, until the owner revokes it.
    """

    __tablename__ = "tool_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("tool_templates.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    # An email that has no account yet: the grant is the same to its owner, and becomes the
    # user's own when that account is made (claim_email_grants), so that sharing never tells
    # which emails have accounts.
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    template: Mapped[ToolTemplate] = relationship()
    owner: Mapped[User] = relationship(foreign_keys=[owner_id])
    user: Mapped[User | None] = relationship(foreign_keys=[user_id])
    group: Mapped[Group | None] = relationship()

    __table_args__ = (
        CheckConstraint(GRANTEE_COUNT + " = 1", name="ck_tool_grants_one_grantee"),
        UniqueConstraint("host", "user_id", name="uq_tool_grants_host_user"),
        UniqueConstraint("host", "group_id", name="uq_tool_grants_host_group"),
        UniqueConstraint("host", "email", name="uq_tool_grants_host_email"),
    )

    @property
    def grantee(self):
        """Who may open the tool, as its owner named them: an email (an account's or not yet
        one's, told apart nowhere) or a group."""
        if self.group is not None:
            return f"group {self.group.name}"
        return self.user.email if self.user is not None else self.email


def claim_email_grants(connection, user_id, email):
    """Grants made to an email before it had an account become the new user's own."""
    table = Grant.__table__
    connection.execute(update(table).where(table.c.email == email.lower()).values(user_id=user_id, email=None))


@event.listens_for(User, "before_insert")
def _give_an_address_name(mapper, connection, user):
    """However the account is made (Add user, the command line, a first single sign-on): the
    first free one of its base name, base-2, base-3, …, past those of the users saved so far and
    of the others in the same flush. Two accounts made at once by two processes with the same
    base name meet the unique index: one of them fails, as for two with the same email."""
    if user.address_name is None:
        pending = {other.address_name for other in object_session(user).new
                   if isinstance(other, User) and other.address_name is not None}
        user.address_name = available_address_name(connection, address_name_base(user.email, user.name), pending)


def available_address_name(connection, base, pending=()):
    """The first of base's candidates that no user holds, looked up a batch at a time."""
    candidates = address_name_candidates(base)
    while True:
        batch = [name for name in itertools.islice(candidates, 20) if name not in pending]
        taken = set(connection.execute(select(User.address_name).where(User.address_name.in_(batch))).scalars())
        free = [name for name in batch if name not in taken]
        if free:
            return free[0]


@event.listens_for(User, "after_insert")
def _claim_grants_of_a_new_user(mapper, connection, user):
    """However the account is made (Add user, the command line, a first single sign-on)."""
    claim_email_grants(connection, user.id, user.email)


class SignInThrottle(db.Model):
    """Failures lately counted for one key (berth/throttle.py): password sign-ins for an account
    ("account:<email>") or from an address ("address:<ip>"), invalid API tokens from an address
    ("token:<ip>"), and failed single sign-on callbacks from an address ("oidc:<ip>")."""

    __tablename__ = "sign_in_throttles"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # No attempt for this key is tried before then.
    blocked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerHeartbeat(db.Model):
    """One worker process, as it last reported itself (berth/status.py): written at every pass of
    its reconciler loop, read by the admin status page and /metrics. A row unseen for a day is
    removed."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # The end of its reconciler's last run that reached the database, and what it did then.
    reconciled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reconcile_actions: Mapped[int] = mapped_column(Integer, default=0)


class StorageUsage(db.Model):
    """What a home or a team folder on the process backend held when the worker last measured it
    (berth/homes.py). The worker measures, as root: the web app may not read people's files."""

    __tablename__ = "storage_usage"
    __table_args__ = (UniqueConstraint("kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # "home" or "team"
    name: Mapped[str] = mapped_column(String(100))  # the folder's name: a user's host key, a team folder's
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    complete: Mapped[bool] = mapped_column(Boolean)  # False: the walk was cut short, size_bytes is a lower bound
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Event(db.Model):
    """The audit log and spawn progress. Rows are only ever added (the database enforces it)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    # Who or what caused it: "user:<id>", "admin:<id>", "anonymous", "worker", "reconciler", "culler",
    # "oidc", "cli" (a command an operator ran).
    actor: Mapped[str] = mapped_column(String(100), default="", index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("tool_instances.id", ondelete="CASCADE"), index=True
    )
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict] = mapped_column(JSON, default=dict)


def record_event(kind, message="", *, actor="", user_id=None, instance_id=None, **data):
    """Add an event to the current transaction; the caller commits.

    An event recorded while answering a request carries the client's address (ip), found by the
    one trusted-proxy-aware rule (berth.web.client_ip), unless the caller gave it."""
    if "ip" not in data and has_request_context():
        data["ip"] = client_ip()
    event = Event(
        kind=kind, message=message, actor=actor, user_id=user_id, instance_id=instance_id, data=data
    )
    db.session.add(event)
    return event


def lock_user(user):
    """Hold, until this transaction ends, a lock that makes counting then adding a user's rows
    atomic (launches, tokens, sessions). The statement is a write to the user's row: on
    PostgreSQL it locks that row, so one user's racing requests queue; on SQLite it takes the
    database's write lock (a read would not: SQLite reads here each see their own moment)."""
    db.session.execute(update(User).where(User.id == user.id).values(id=User.id))


def update_where(model, *conditions, commit=False, **values):
    """A conditional UPDATE: set values on the rows of model that meet every condition, and
    return how many it changed.

    This is how every change that replicas may race for is made: the conditions say what the
    change requires (the state it starts from, the lease, "not revoked yet"), and the count tells
    the caller whether it won. Objects already loaded in the session are not refreshed.
    """
    return _rows_changed(update(model).where(*conditions).values(**values), commit)


def revoke_where(model, *conditions):
    """Revoke the rows of model (sessions, API tokens) that meet every condition and are not
    revoked yet; the auth check refuses them from then on. Returns how many this call revoked."""
    return update_where(model, model.revoked_at.is_(None), *conditions, revoked_at=utcnow())


def revoke_owned(model, item_id, user, actor, kind, message, **data):
    """Revoke one of user's sessions or API tokens and record the event; False if it was not
    theirs, or not live. The caller commits."""
    if not revoke_where(model, model.id == item_id, model.user_id == user.id):
        return False
    record_event(kind, message, actor=actor, user_id=user.id, **data)
    return True


def delete_where(model, *conditions, commit=False):
    """A conditional DELETE of the rows of model that meet every condition; how many it removed."""
    return _rows_changed(delete(model).where(*conditions), commit)


def _rows_changed(statement, commit):
    result = db.session.execute(statement.execution_options(synchronize_session=False))
    if commit:
        db.session.commit()
    return result.rowcount

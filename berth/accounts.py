"""Accounts: the sign-ins a user can see and end, deactivation, and users from single sign-on.

The auth service and the web app both use these rules, so that "a session in force" means the
same thing on the account page as in the auth check (auth_service/check.py applies the same
conditions in SQL).
"""
import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from berth.extensions import db
from berth.models import (ApiToken, Group, Membership, Session, User, delete_where, hash_password, lock_user,
                          record_event, revoke_owned, revoke_where, utcnow)

MAX_GROUPS = 200


# -- sessions -------------------------------------------------------------------------------

def live_session_filter(now=None):
    """The conditions a session meets while it is in force: not revoked, expired or idle."""
    now = now or utcnow()
    conditions = [Session.revoked_at.is_(None), Session.expires_at > now]
    idle = current_app.config["BERTH_SESSION_IDLE_LIFETIME"]
    if idle:
        conditions.append(Session.last_seen_at > now - timedelta(seconds=idle))
    return conditions


def user_sessions(user):
    """The user's sessions in force, the most recently used first."""
    return db.session.execute(
        select(Session).where(Session.user_id == user.id, *live_session_filter())
        .order_by(Session.last_seen_at.desc(), Session.id.desc())
    ).scalars().all()


def end_session(user, session_id, actor):
    """Revoke one of user's sessions; the next request with it is refused. The caller commits."""
    return revoke_owned(Session, session_id, user, actor, "auth.session_end", f"Session {session_id} ended",
                        session_id=session_id)


def end_other_sessions(user, keep_session_id, actor):
    """Revoke every session of user except keep_session_id; returns how many. The caller commits."""
    ended = revoke_where(Session, Session.user_id == user.id, Session.id != keep_session_id)
    if ended:
        record_event("auth.session_end", f"{ended} other sessions ended", actor=actor, user_id=user.id)
    return ended


def make_room_for_session(user, actor):
    """Before a new sign-in of user: at BERTH_MAX_SESSIONS_PER_USER live sessions, end the oldest
    ones, so that with the new one the user has at most that many. The caller commits.

    Ending the oldest rather than refusing the sign-in keeps the owner able to sign in whatever
    sessions a forgotten device (or someone who took the password) holds. Counting and ending
    happen under the user's row lock, so racing sign-ins cannot pass the cap together."""
    lock_user(user)
    cap = current_app.config["BERTH_MAX_SESSIONS_PER_USER"]
    live = db.session.execute(
        select(Session.id).where(Session.user_id == user.id, *live_session_filter())
        .order_by(Session.created_at.desc(), Session.id.desc())
    ).scalars().all()
    oldest = live[cap - 1:]
    if oldest and revoke_where(Session, Session.id.in_(oldest)):
        record_event("auth.session_end", f"{len(oldest)} oldest session{'s' if len(oldest) != 1 else ''} "
                     f"ended: at most {cap} per person", actor=actor, user_id=user.id, session_ids=oldest)


def set_user_flags(user, actor, is_active=None, is_admin=None):
    """Activate or deactivate a user, grant or take administration. The caller commits.

    Deactivation takes effect on the user's next request (the auth check reads users.is_active),
    and in the same transaction it revokes the user's sessions and API tokens, so that
    reactivating a user revives none of them.
    """
    if is_active is not None and is_active != user.is_active:
        user.is_active = is_active
        if not is_active:
            revoke_where(Session, Session.user_id == user.id)
            revoke_where(ApiToken, ApiToken.user_id == user.id)
        record_event("user.activate" if is_active else "user.deactivate",
                     f"{user.email} {'activated' if is_active else 'deactivated'}", actor=actor,
                     user_id=user.id, before={"is_active": not is_active}, after={"is_active": is_active})
    if is_admin is not None and is_admin != user.is_admin:
        user.is_admin = is_admin
        record_event("user.admin", f"{user.email} {'made' if is_admin else 'no longer'} an administrator",
                     actor=actor, user_id=user.id, before={"is_admin": not is_admin}, after={"is_admin": is_admin})


# -- local accounts ---------------------------------------------------------------------------

MIN_PASSWORD_LENGTH = 8
MAX_EMAIL_LENGTH = 320


def email_problem(email):
    """Why email cannot be an account's address, in plain words; None when it can."""
    local, at, domain = email.partition("@")
    if not (local and at and domain) or len(email) > MAX_EMAIL_LENGTH or any(c.isspace() for c in email):
        return f"{email!r} is not an email address."
    return None


def password_problem(password):
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must have at least {MIN_PASSWORD_LENGTH} characters."
    return None


def temporary_password():
    """A password that Berth makes for a new user, shown once to the administrator who made the
    account: 16 URL-safe characters (96 random bits), easy to type."""
    return secrets.token_urlsafe(12)


_CREATE_ATTEMPTS = 3


def create_local_user(email, name, password, actor, is_admin=False):
    """A new active user with a local password, recorded with actor; None if the email is taken.

    The caller has checked email_problem and password_problem, and commits."""
    email = email.strip().lower()
    password_hash = hash_password(password)  # once, however many attempts the insert takes
    for _ in range(_CREATE_ATTEMPTS):
        user = User(email=email, name=name.strip() or email.split("@")[0], is_admin=is_admin,
                    password_hash=password_hash)
        try:
            with db.session.begin_nested():  # another administrator may have taken the email meanwhile
                db.session.add(user)
            break
        except IntegrityError:
            if email_taken(email):
                return None
            # Another account made at the same moment took the same address name: the next
            # attempt finds the one after it.
    else:
        return None
    record_event("user.create", f"{email} created", actor=actor, user_id=user.id, before={},
                 after={"email": email, "name": user.name, "is_admin": is_admin})
    return user


def change_password(user, new_password, keep_session_id, actor):
    """user sets a new password (the caller proved the current one and checked password_problem).
    Every other session of theirs ends in the same transaction: whoever else signed in with the
    old password is signed out at their next request. The caller commits."""
    user.set_password(new_password)
    ended = revoke_where(Session, Session.user_id == user.id, Session.id != keep_session_id)
    record_event("user.password", f"{user.email} changed their password"
                 + (f"; {ended} other session{'s' if ended != 1 else ''} ended" if ended else ""),
                 actor=actor, user_id=user.id)
    return ended


def email_taken(email):
    return db.session.scalar(select(User.id).where(func.lower(User.email) == email.strip().lower())) is not None


# -- users from single sign-on ----------------------------------------------------------------

class SignInRefused(Exception):
    """A provider's sign-in that Berth cannot accept, with what to tell the person."""

    def __init__(self, title, message, status=403, kind="refused"):
        super().__init__(message)
        self.title = title
        self.message = message
        self.status = status
        self.kind = kind


def _email(claims):
    email = claims.get("email")
    if not isinstance(email, str):
        return None
    email = email.strip().lower()
    return email if "@" in email and len(email) <= 320 else None


def _name(claims, email):
    for key in ("name", "preferred_username"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return (email or "").split("@")[0][:200]


def _groups(claims, claim):
    """The group names in claim: a list of strings, or one string. Absent means none."""
    value = claims.get(claim)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SignInRefused("Sign-in refused",
                            f"The provider's {claim!r} claim is not a list of group names.",
                            status=502, kind="bad_claim")
    names = sorted({item.strip()[:200] for item in value if item.strip()})
    if len(names) > MAX_GROUPS:
        raise SignInRefused("Sign-in refused", f"The provider lists more than {MAX_GROUPS} groups.",
                            status=502, kind="bad_claim")
    return names


def _subject(claims):
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise SignInRefused("Sign-in refused", "The provider's answer names no valid user (sub).",
                            status=502, kind="bad_claim")
    return subject


def link_identity(user, issuer, claims):
    """Link the provider's identity to user, at the user's own request while signed in to this
    account otherwise. Refused when the identity is another account's already. The caller commits."""
    subject = _subject(claims)
    owner = db.session.execute(
        select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)
    ).scalar_one_or_none()
    if owner is not None and owner.id != user.id:
        raise SignInRefused("Single sign-on not linked",
                            "This identity at the provider is linked to another Berth account already.",
                            status=409, kind="identity_taken")
    if user.oidc_subject is not None and user.oidc_subject != subject:
        raise SignInRefused("Single sign-on not linked",
                            "This Berth account is linked to another identity at the provider already.",
                            status=409, kind="linked_already")
    if owner is None:
        user.oidc_issuer, user.oidc_subject = issuer, subject
        record_event("user.link", f"{user.email} linked to single sign-on at the user's request",
                     actor=f"user:{user.id}", user_id=user.id, subject=subject)


def user_from_claims(issuer, claims, groups_claim=None, link_by_email=False, admin_group=None):
    """Find or create the user the provider vouches for, and bring email, name and groups up to date.

    The user is matched on (issuer, sub). A first sign-in creates the user. An existing account
    with the same email is taken over only with link_by_email (BERTH_OIDC_LINK_BY_EMAIL), when
    the provider says that email is verified, the account is linked to no other identity, and it
    is not an administrator's; otherwise its owner links it themselves (link_identity). With
    admin_group, the user is an administrator exactly when the groups claim lists that group;
    nothing else a provider says makes anyone one. Raises SignInRefused with what to tell the
    person. The caller commits.
    """
    subject = _subject(claims)
    email = _email(claims)
    user = db.session.execute(
        select(User).where(User.oidc_issuer == issuer, User.oidc_subject == subject)
    ).scalar_one_or_none()
    actor = "oidc"
    if user is None:
        if email is None:
            raise SignInRefused("Sign-in refused",
                                "The provider did not share an email address, which Berth needs for a "
                                "new account. Ask your administrator to release the email claim.",
                                status=403, kind="no_email")
        user = db.session.execute(
            select(User).where(func.lower(User.email) == email)
        ).scalar_one_or_none()
        if user is not None:
            if not (link_by_email and user.oidc_subject is None and not user.is_admin
                    and claims.get("email_verified") is True):
                raise SignInRefused("Sign-in refused",
                                    f"A Berth account for {email} exists already, and Berth does not link "
                                    "it to a sign-in by email alone. If it is yours, sign in with its "
                                    "password, then choose Link single sign-on on your Account page.",
                                    status=409, kind="email_taken")
            user.oidc_issuer, user.oidc_subject = issuer, subject
            record_event("user.link", f"{email} linked to single sign-on", actor=actor, user_id=user.id)
        else:
            user = User(email=email, name=_name(claims, email), oidc_issuer=issuer, oidc_subject=subject)
            db.session.add(user)
            db.session.flush()
            record_event("user.create", f"{email} created at first single sign-on", actor=actor,
                         user_id=user.id)
    if not user.is_active:
        raise SignInRefused("Account deactivated",
                            "Your Berth account is deactivated. Ask an administrator to activate it.",
                            status=403, kind="deactivated")
    _update_profile(user, email, _name(claims, email or user.email))
    if groups_claim:
        groups = _groups(claims, groups_claim)
        sync_groups(user, groups)
        if admin_group:
            set_user_flags(user, actor="oidc", is_admin=admin_group in groups)
    return user


def _update_profile(user, email, name):
    if email and email != user.email:
        taken = db.session.execute(
            select(User.id).where(func.lower(User.email) == email, User.id != user.id)
        ).first()
        if taken:
            record_event("user.email_conflict", f"Kept {user.email}: {email} belongs to another account",
                         actor="oidc", user_id=user.id)
        else:
            record_event("user.update", f"Email changed from {user.email} to {email}", actor="oidc",
                         user_id=user.id)
            user.email = email
    if name and name != user.name:
        user.name = name


def _group(name):
    """The group called name, created if need be (safe when two sign-ins race to create it)."""
    group = db.session.execute(select(Group).where(Group.name == name)).scalar_one_or_none()
    if group is not None:
        return group
    try:
        with db.session.begin_nested():
            group = Group(name=name)
            db.session.add(group)
    except IntegrityError:
        group = db.session.execute(select(Group).where(Group.name == name)).scalar_one()
    return group


def sync_groups(user, names):
    """Make the user's provider-given memberships exactly names; other memberships stay."""
    current = {m.group.name: m for m in db.session.execute(
        select(Membership).where(Membership.user_id == user.id)).scalars()}
    wanted = set(names)
    stale = [m for name, m in current.items() if m.source == "oidc" and name not in wanted]
    if stale:
        delete_where(Membership, Membership.id.in_([m.id for m in stale]))
        for membership in stale:  # gone: SQLite may hand its id to a new row in this very flush
            db.session.expunge(membership)
    for name in sorted(wanted - set(current)):
        db.session.add(Membership(user_id=user.id, group_id=_group(name).id, source="oidc"))
    db.session.flush()


def groups_by_user(users):
    """{user id: the names of their groups, sorted} for a page of users, in one query."""
    groups = {}
    for user_id, name in db.session.execute(
        select(Membership.user_id, Group.name).join(Group)
        .where(Membership.user_id.in_([user.id for user in users])).order_by(Group.name)
    ).all():
        groups.setdefault(user_id, []).append(name)
    return groups


def user_groups(user):
    return db.session.execute(
        select(Group.name).join(Membership).where(Membership.user_id == user.id).order_by(Group.name)
    ).scalars().all()

"""Platform sign-ins: a random token in the browser's cookie, only its hash in the database."""
import secrets
from datetime import timedelta

from sqlalchemy import select

from berth.accounts import live_session_filter
from berth.extensions import db
from berth.models import Session, User, hash_token, update_where, utcnow


def start_session(user, *, lifetime_seconds, client_ip="", user_agent="", method="password"):
    """Create a new sign-in and return the token for the cookie. A new token every time."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    db.session.add(
        Session(
            token_hash=hash_token(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=lifetime_seconds),
            client_ip=client_ip[:64],
            user_agent=user_agent[:300],
            method=method,
        )
    )
    return token


def find_session(token):
    """The live Session for a cookie value (not revoked, expired or idle too long), or None."""
    if not token or len(token) > 200:
        return None
    return db.session.execute(
        select(Session)
        .join(User)
        .where(Session.token_hash == hash_token(token), User.is_active.is_(True), *live_session_filter())
    ).scalar_one_or_none()


def revoke_session(token):
    """End a sign-in at once: the next auth check for this token answers 401."""
    if not token:
        return False
    return update_where(Session, Session.token_hash == hash_token(token), Session.revoked_at.is_(None),
                        revoked_at=utcnow()) == 1


def set_session_cookie(response, token, config):
    response.set_cookie(
        config["BERTH_SESSION_COOKIE"],
        token,
        max_age=config["BERTH_SESSION_LIFETIME"],
        # Scoped to the parent domain, so the same sign-in reaches every tool host.
        domain=config["BERTH_DOMAIN"],
        path="/",
        secure=config["BERTH_SCHEME"] == "https",
        httponly=True,
        samesite="Lax",
    )


def clear_session_cookie(response, config):
    response.delete_cookie(
        config["BERTH_SESSION_COOKIE"],
        domain=config["BERTH_DOMAIN"],
        path="/",
        secure=config["BERTH_SCHEME"] == "https",
        httponly=True,
        samesite="Lax",
    )

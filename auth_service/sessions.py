"""Platform sign-ins: a random token in the browser's cookie, only its hash in the database."""
import secrets
from datetime import timedelta

from flask import current_app, redirect, request
from sqlalchemy import select

from berth.accounts import live_session_filter, make_room_for_session
from berth.extensions import db
from berth.hosts import session_cookie_name
from berth.models import Session, User, hash_token, record_event, revoke_where, utcnow
from berth.web import client_ip

# How the audit log tells of a sign-in, by the session's method.
_SIGNED_IN = {"password": "{email} signed in", "oidc": "{email} signed in with single sign-on"}


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


def complete_sign_in(user, next_url, method):
    """Sign user in, whichever way they proved who they are, and send the browser on to next_url
    (made safe by safe_next_url already): a new session, the browser's old one revoked (a fresh
    token at every sign-in: no fixation), the event in the audit log, and the cookie."""
    config = current_app.config
    revoke_session(session_token())
    make_room_for_session(user, actor=f"user:{user.id}")
    address = client_ip()
    token = start_session(user, lifetime_seconds=config["BERTH_SESSION_LIFETIME"], client_ip=address,
                          user_agent=request.headers.get("User-Agent", ""), method=method)
    record_event("auth.login", _SIGNED_IN[method].format(email=user.email), actor=f"user:{user.id}",
                 user_id=user.id, ip=address, method=method)
    db.session.commit()
    response = redirect(next_url)
    set_session_cookie(response, token, config)
    return response


def session_token():
    """The session token in this request's cookie, or None; None too when the browser sends two
    copies (one planted beside the real one), as the auth check refuses them: signing in again
    then replaces both."""
    copies = request.cookies.getlist(session_cookie_name(current_app.config))
    return copies[0] if len(copies) == 1 else None


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
    return revoke_where(Session, Session.token_hash == hash_token(token)) == 1


def set_session_cookie(response, token, config):
    """The session cookie, host-only on the main host (no Domain): no tool host ever receives
    it; tool hosts get cookies of their own through the sign-in hand-off (handoff.py)."""
    _clear_parent_domain_cookie(response, config)
    response.set_cookie(session_cookie_name(config), token, max_age=config["BERTH_SESSION_LIFETIME"],
                        **_cookie_scope(config))


def clear_session_cookie(response, config):
    _clear_parent_domain_cookie(response, config)
    response.delete_cookie(session_cookie_name(config), **_cookie_scope(config))


def _clear_parent_domain_cookie(response, config):
    # Earlier versions scoped the cookie to the parent domain: a browser that still holds one
    # would send it beside the host-only one, and be refused for two session cookies.
    response.delete_cookie(config["BERTH_SESSION_COOKIE"], domain=config["BERTH_DOMAIN"], **_cookie_scope(config))


def _cookie_scope(config):
    return {"path": "/", "secure": config["BERTH_SCHEME"] == "https", "httponly": True, "samesite": "Lax"}

"""Personal API tokens: `berth_` and 43 random characters, shown once, stored as a SHA-256 hash.

The auth service accepts one in `Authorization: Bearer berth_...` (auth_service/check.py):
on the main host for the API under /api/, and on tool hosts for tools whose template sets
`api_tokens: true`. The prefix lets Berth tell its own tokens from a tool's own bearer
tokens, which pass through to the tool untouched; nginx never forwards a Berth token to a tool.
"""
import re
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from berth.extensions import db
from berth.models import ApiToken, hash_token, record_event, revoke_owned, utcnow

PREFIX = "berth_"
_BEARER = re.compile(r"^bearer\s+(berth_[A-Za-z0-9_-]{1,200})\s*$", re.IGNORECASE)
MAX_NAME_LENGTH = 100
# Printable text with something other than spaces (PostgreSQL stores no NUL in text, either).
NAME_PATTERN = re.compile(r"^(?=.*\S)[^\u0000-\u001f\u007f]+$")


# Why an API token was refused, as its client is told: every token error in one place. The
# auth service names the case; nginx writes the text into its JSON 401 answer, so none may hold
# a quote or a backslash.
TOKEN_REFUSALS = {
    "invalid": "Invalid API token: Berth has no such token. Check that it was copied whole.",
    "revoked": "Revoked API token: make a new one on the Account page.",
    "expired": "Expired API token: make a new one on the Account page.",
    "inactive": "API token of a deactivated account.",
}
# What tells the cases apart, read only for a token that the auth check refused.
TOKEN_STANDING_SQL = """
    SELECT t.revoked_at, t.expires_at, u.is_active FROM api_tokens t JOIN users u ON u.id = t.user_id
    WHERE t.token_hash = :token_hash
    """


def token_refusal(standing, now):
    """The message for a refused token, from its row of TOKEN_STANDING_SQL (None: no such token)."""
    if standing is None:
        return TOKEN_REFUSALS["invalid"]
    revoked_at, expires_at, is_active = standing
    if revoked_at is not None:
        return TOKEN_REFUSALS["revoked"]
    if isinstance(expires_at, str):  # SQLite hands timestamps back as text
        expires_at = datetime.fromisoformat(expires_at)
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=timezone.utc)
    if expires_at <= now:
        return TOKEN_REFUSALS["expired"]
    return TOKEN_REFUSALS["inactive"] if not is_active else TOKEN_REFUSALS["invalid"]


class TokenError(ValueError):
    """A token request that cannot be granted: field says which input ("name" or "days") is wrong."""

    def __init__(self, message, field):
        super().__init__(message)
        self.field = field


def bearer_token(authorization):
    """The Berth API token in an Authorization header value, or None."""
    if not authorization or len(authorization) > 300:
        return None
    match = _BEARER.match(authorization.strip())
    return match.group(1) if match else None


def token_allowed_on_main_host(uri):
    """Tokens reach only the API. The raw URI is checked strictly, so that no dot segment or
    percent-encoding can make nginx and the web app see a path outside /api/."""
    path = (uri or "").split("?", 1)[0]
    return path.startswith("/api/") and "%" not in path and "/." not in path and "\\" not in path


def create_token(user, name, days, max_days, actor):
    """A new token for user: returns (row, the token itself). The caller commits."""
    name = (name or "").strip()
    if not name:
        raise TokenError("Give the token a name, so that you can tell it apart later.", "name")
    if len(name) > MAX_NAME_LENGTH:
        raise TokenError(f"The name is longer than {MAX_NAME_LENGTH} characters.", "name")
    if not NAME_PATTERN.match(name):
        raise TokenError("The name may not contain control characters.", "name")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= max_days:
        raise TokenError(f"The lifetime must be a whole number of days from 1 to {max_days}.", "days")
    value = PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    token = ApiToken(user_id=user.id, name=name, token_hash=hash_token(value), prefix=value[:12],
                     created_at=now, expires_at=now + timedelta(days=days))
    db.session.add(token)
    db.session.flush()
    record_event("token.create", f"API token {name!r} created, valid {days} days", actor=actor,
                 user_id=user.id, token_id=token.id)
    return token, value


def user_tokens(user):
    """The user's tokens that are not revoked, newest first (expired ones included, marked)."""
    return db.session.execute(
        select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    ).scalars().all()


def revoke_token(user, token_id, actor):
    """Revoke one of user's tokens at once. False if there is no such live token. The caller commits."""
    return revoke_owned(ApiToken, token_id, user, actor, "token.revoke", f"API token {token_id} revoked",
                        token_id=token_id)


def is_expired(token):
    return token.expires_at <= utcnow()

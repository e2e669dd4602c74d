"""Personal API tokens: `berth_` and 43 random characters, shown once, stored as a SHA-256 hash.

The auth service accepts one in `Authorization: Bearer berth_...` (auth_service/check.py):
on the main host for the API under /api/, and on tool hosts for tools whose template sets
`api_tokens: true`. The prefix lets Berth tell its own tokens from a tool's own bearer
tokens, which pass through to the tool untouched; nginx never forwards a Berth token to a tool.

Each token has a scope, and each scope allows what the one before it does:
  read    looks, changes nothing: the API's GET, HEAD and OPTIONS, and the same on a running
          tool that accepts tokens (no WebSocket, never a start);
  launch  also launches, stops and shares the user's tools, revokes tokens, and uses a tool in full;
  admin   also reaches the administration endpoints, while its user is an administrator.
Only a signed-in browser session makes tokens (the Account page, or the API with its cookie and
CSRF token): no token mints another, so none can outlive or outrank the one that made it. The
door (auth_service/check.py) and the web app both apply api_refusal, so neither is trusted alone.
"""
import re
import secrets
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select

from berth.extensions import db
from berth.models import ApiToken, User, hash_token, lock_user, record_event, revoke_owned, utcnow

PREFIX = "berth_"
_BEARER = re.compile(r"^bearer\s+(berth_[A-Za-z0-9_-]{1,200})\s*$", re.IGNORECASE)
MAX_NAME_LENGTH = 100
# Printable text with something other than spaces (PostgreSQL stores no NUL in text, either).
NAME_PATTERN = re.compile(r"^(?=.*\S)[^\u0000-\u001f\u007f]+$")


# Why an API token was refused, as its client is told: every token error in one place. The
# auth service names the case; nginx writes the text into its JSON 401 answer, so none may hold
# a quote or a backslash.
TOKEN_REFUSALS = {
    "invalid": "This API token is not valid: Berth knows no such token. Check that it was copied whole.",
    "revoked": "This API token has been revoked. Create a new one on the Account page.",
    "expired": "This API token has expired. Create a new one on the Account page.",
    "inactive": "The account this API token belongs to is deactivated.",
}


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


READ, LAUNCH, ADMIN = "read", "launch", "admin"
SCOPES = (READ, LAUNCH, ADMIN)  # each allows what the ones before it do
SCOPE_NAMES = {READ: "read-only", LAUNCH: "launch", ADMIN: "admin"}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

MINTING_REFUSED = "An API token cannot create tokens: create one on the Account page."


def scope_allows(scope, needed):
    """Whether a token of scope may do what needed allows; an unknown scope allows nothing."""
    return scope in SCOPES and SCOPES.index(scope) >= SCOPES.index(needed)


def read_only_refusal(what):
    return (f"This API token is read-only: it cannot {what}. Create a token with the launch scope "
            "on the Account page.")


def api_refusal(scope, method, path):
    """Why a token of scope may not make this request to the API, or None when it may."""
    path = re.sub("/{2,}", "/", path)
    if path.rstrip("/") == "/api/tokens" and method not in SAFE_METHODS:
        return MINTING_REFUSED
    if path.rstrip("/") == "/api/admin" or path.startswith("/api/admin/"):
        if not scope_allows(scope, ADMIN):
            return ("This API token lacks the admin scope, which the administration endpoints need. "
                    "An administrator creates one on the Account page.")
    elif method not in SAFE_METHODS and not scope_allows(scope, LAUNCH):
        return read_only_refusal("launch, stop or share tools, or revoke tokens")
    return None


def tool_refusal(scope, method, upgrade, page, tool_name):
    """Why a token of scope may not make this request to a tool host, or None when it may.
    page is the lifecycle page the request would get ("start" launches), "" for the tool itself."""
    if scope_allows(scope, LAUNCH):
        return None
    if page == "start":
        return read_only_refusal(f"start {tool_name}")
    if method not in SAFE_METHODS or upgrade:
        return read_only_refusal(f"change anything in {tool_name} (only GET, HEAD and OPTIONS, no WebSockets)")
    return None


def create_token(user, name, days, max_days, actor, scope=READ):
    """A new token for user: returns (row, the token itself). The caller commits.

    At most BERTH_MAX_TOKENS_PER_USER live tokens per user: counting them and adding the new one
    happen under the user's row lock (lock_user), so racing requests cannot pass the cap together."""
    name = (name or "").strip()
    if not name:
        raise TokenError("Give the token a name, so that you can tell it apart later.", "name")
    if len(name) > MAX_NAME_LENGTH:
        raise TokenError(f"The name is longer than {MAX_NAME_LENGTH} characters.", "name")
    if not NAME_PATTERN.match(name):
        raise TokenError("The name may not contain control characters.", "name")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= max_days:
        raise TokenError(f"The lifetime must be a whole number of days from 1 to {max_days}.", "days")
    if scope not in SCOPES:
        raise TokenError(f"The scope must be one of: {', '.join(SCOPES)}.", "scope")
    if scope == ADMIN and not user.is_admin:
        raise TokenError("Only administrators may create tokens with the admin scope.", "scope")
    lock_user(user)
    now = utcnow()
    cap = current_app.config["BERTH_MAX_TOKENS_PER_USER"]
    held = db.session.scalar(select(func.count()).select_from(ApiToken).where(
        ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None), ApiToken.expires_at > now))
    if held >= cap:
        raise TokenError(f"You already hold {held} API tokens, the most allowed per person is {cap}. "
                         "Revoke one you no longer need, then try again.", "name")
    value = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, name=name, token_hash=hash_token(value), prefix=value[:12],
                     created_at=now, expires_at=now + timedelta(days=days), scope=scope)
    db.session.add(token)
    db.session.flush()
    record_event("token.create", f"API token {name!r} created, {SCOPE_NAMES[scope]}, valid {days} days",
                 actor=actor, user_id=user.id, token_id=token.id, scope=scope, days=days)
    return token, value


def live_token(value, user_id=None):
    """The ApiToken row for a token value while it is good (not revoked or expired, its user
    active), or None. With user_id, only that user's."""
    if not value or len(value) > 200:
        return None
    conditions = [ApiToken.token_hash == hash_token(value), ApiToken.revoked_at.is_(None),
                  ApiToken.expires_at > utcnow(), User.is_active.is_(True)]
    if user_id is not None:
        conditions.append(ApiToken.user_id == user_id)
    return db.session.execute(select(ApiToken).join(User).where(*conditions)).scalar_one_or_none()


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

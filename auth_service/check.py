"""GET /auth/check: nginx's auth_request subrequest, on every request to Berth.

This is the hot path. It parses no session machinery and runs one indexed query that
answers both "who is this" and "where does this host go": by the session cookie, or, for a
request with `Authorization: Bearer berth_...`, by the personal API token (the same query
over api_tokens; the cookie is then ignored). Tokens reach the API on the main host and the
tools whose template allows them. The answer is carried in headers that nginx picks up with
auth_request_set:

  X-Berth-Upstream   where nginx proxies: a tool's address, or the web app
  X-Berth-Page       on tool hosts, which lifecycle page the web app shows
  X-Berth-User-Id    the user, for the web app only (never sent to a tool)
  X-Berth-Login-Url  on 401: the percent-encoded login address for browsers
  X-Berth-Reason     on 403: why, for the forbidden page
"""
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request
from sqlalchemy import Boolean, Integer, String, bindparam, text

from webapp.extensions import db
from webapp.hosts import is_main_host, parse_tool_host, public_url
from webapp.models import UTCDateTime, hash_token, utcnow
from webapp.tokens import bearer_token, token_allowed_on_main_host

bp = Blueprint("check", __name__)

WEB_UPSTREAM = "berth_web"  # the name of the web app's upstream block in nginx/berth.conf.j2

# The X-Berth-* headers a request may carry: the secret nginx adds, and the spawning page's
# no-launch flag. Any other X-Berth-* header was forged by the client, and is refused.
_ALLOWED_HEADERS = {"x-berth-proxy-secret", "x-berth-no-launch"}

_ANSWER_SQL = """
    SELECT u.id AS user_id, s.id AS credential_id, s.{seen} AS seen_at,
           t.id AS template_id, t.enabled AS template_enabled,
           t.allow_api_tokens AS allow_api_tokens,
           o.id AS owner_id,
           i.id AS instance_id, i.state AS state, i.upstream AS upstream,
           i.last_activity_at AS last_activity_at
    FROM {credentials} s
    JOIN users u ON u.id = s.user_id
    LEFT JOIN tool_templates t ON t.slug = :slug
    LEFT JOIN users o ON o.host_key = :host_key
    LEFT JOIN tool_instances i ON i.host = :host
         AND i.state IN ('QUEUED', 'SPAWNING', 'RUNNING', 'STOPPING')
    WHERE s.token_hash = :token_hash
      AND s.revoked_at IS NULL
      AND s.expires_at > :now{idle_condition}
      AND u.is_active
    """


def _answer_query(credentials, seen, idle_condition=""):
    """The one query, over sessions (cookie) or api_tokens (bearer): both are indexed by token_hash."""
    sql = _ANSWER_SQL.format(credentials=credentials, seen=seen, idle_condition=idle_condition)
    params = [bindparam("now", type_=UTCDateTime())]
    if ":idle_cutoff" in sql:
        params.append(bindparam("idle_cutoff", type_=UTCDateTime()))
    return text(sql).bindparams(*params).columns(
        user_id=Integer,
        credential_id=Integer,
        seen_at=UTCDateTime(),
        template_id=Integer,
        template_enabled=Boolean,
        allow_api_tokens=Boolean,
        owner_id=Integer,
        instance_id=Integer,
        state=String,
        upstream=String,
        last_activity_at=UTCDateTime(),
    )


# A session also ends when it has not been used for BERTH_SESSION_IDLE_LIFETIME.
_ANSWER = _answer_query("sessions", "last_seen_at", "\n      AND s.last_seen_at > :idle_cutoff")
_TOKEN_ANSWER = _answer_query("api_tokens", "last_used_at")
_NO_IDLE_LIMIT = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Marks a session or token as used, at most once per BERTH_ACTIVITY_INTERVAL (like _TOUCH).
_SEEN = {
    table: text(
        f"""
        UPDATE {table} SET {column} = :now
        WHERE id = :id AND ({column} IS NULL OR {column} < :cutoff)
        """
    ).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("cutoff", type_=UTCDateTime()))
    for table, column in (("sessions", "last_seen_at"), ("api_tokens", "last_used_at"))
}

_TOUCH = text(
    """
    UPDATE tool_instances SET last_activity_at = :now
    WHERE id = :instance_id AND (last_activity_at IS NULL OR last_activity_at < :cutoff)
    """
).bindparams(bindparam("now", type_=UTCDateTime()), bindparam("cutoff", type_=UTCDateTime()))


def _answer(status, **headers):
    response = Response(status=status)
    for name, value in headers.items():
        response.headers["X-Berth-" + name.replace("_", "-").title()] = str(value)
    return response


def _unauthorised(config, host, uri):
    original = public_url(config, host, uri or "/")
    login = public_url(config, config["BERTH_DOMAIN"], "/auth/login?next=" + quote(original, safe=""))
    return _answer(401, login_url=login)


def _forbidden(reason, user_id=""):
    return _answer(403, reason=reason, user_id=user_id)


def _to_web(user_id, page="", instance_id=""):
    return _answer(
        200,
        upstream=WEB_UPSTREAM,
        page=page,
        user_id=user_id,
        instance_id=instance_id or "",
    )


@bp.get("/auth/check")
def check():
    config = current_app.config
    host = request.headers.get("X-Original-Host", "")
    uri = request.headers.get("X-Original-URI", "/")

    forged = [name for name in request.headers.keys() if name.lower().startswith("x-berth-")
              and name.lower() not in _ALLOWED_HEADERS]
    if forged:
        return _forbidden(f"The request carries a reserved header ({forged[0]}).")

    # A Berth API token in Authorization wins over the cookie; any other Authorization (a
    # tool's own scheme) is left alone for the tool.
    api_token = bearer_token(request.headers.get("Authorization"))
    token = api_token or request.cookies.get(config["BERTH_SESSION_COOKIE"])
    if not token or len(token) > 200:
        return _unauthorised(config, host, uri)

    main_host = is_main_host(host, config["BERTH_DOMAIN"])
    if api_token and main_host and not token_allowed_on_main_host(uri):
        return _forbidden("API tokens are accepted only for the API, under /api/.")
    tool = None if main_host else parse_tool_host(host, config["BERTH_DOMAIN"])
    now = utcnow()
    idle = config["BERTH_SESSION_IDLE_LIFETIME"]
    with db.engine.connect() as connection:
        row = connection.execute(
            _TOKEN_ANSWER if api_token else _ANSWER,
            {
                "token_hash": hash_token(token),
                "now": now,
                "slug": tool.slug if tool else None,
                "host_key": tool.host_key if tool else None,
                "host": host.split(":", 1)[0].lower() if tool else None,
                **({} if api_token else
                   {"idle_cutoff": now - timedelta(seconds=idle) if idle else _NO_IDLE_LIMIT}),
            },
        ).first()
        if row is None:
            return _unauthorised(config, host, uri)
        _record_seen(connection, config, "api_tokens" if api_token else "sessions", row, now)
        if tool is None:
            # The main host, or a name under the domain that is no tool address.
            page = "" if main_host else "notfound"
            return _to_web(row.user_id, page=page)
        if row.template_id is None or row.owner_id is None:
            return _to_web(row.user_id, page="notfound")
        if row.owner_id != row.user_id:
            return _forbidden("This tool belongs to another user.", row.user_id)
        if api_token and not row.allow_api_tokens:
            return _forbidden("This tool does not accept API tokens.", row.user_id)
        if row.state == "RUNNING" and row.upstream:
            _record_activity(connection, config, row, now)
            return _to_tool(config, row)
        if row.instance_id is not None:
            return _to_web(row.user_id, page="spawning", instance_id=row.instance_id)
        if not row.template_enabled:
            return _to_web(row.user_id, page="notfound")
        return _to_web(row.user_id, page="start")


def _to_tool(config, row):
    answer = _answer(200, upstream=nginx_upstream(config, row.upstream), user_id=row.user_id,
                     instance_id=row.instance_id)
    if config["BERTH_AUTH_CACHE_SECONDS"]:
        # Only answers for running tools are cached: lifecycle pages must follow state at once.
        answer.headers["X-Accel-Expires"] = str(config["BERTH_AUTH_CACHE_SECONDS"])
    return answer


def nginx_upstream(config, address):
    """The nginx upstream for a tool address: its keepalive block when it has one (berth.conf.j2)."""
    host, _, port = address.rpartition(":")
    if host == "127.0.0.1" and config["BERTH_TOOL_KEEPALIVE"] and port.isdigit():
        low, high = config["BERTH_PORT_RANGE"]
        if low <= int(port) <= high:
            return f"berth_tool_{port}"
    return address


def _record_seen(connection, config, table, row, now):
    """Mark the session or token as used, at most once per interval (no write per request)."""
    interval = timedelta(seconds=config["BERTH_ACTIVITY_INTERVAL"])
    if row.seen_at is not None and row.seen_at > now - interval:
        return
    connection.execute(_SEEN[table], {"now": now, "cutoff": now - interval, "id": row.credential_id})
    connection.commit()


def _record_activity(connection, config, row, now):
    """Write last activity at most once per interval: a read decides, a conditional UPDATE writes."""
    interval = timedelta(seconds=config["BERTH_ACTIVITY_INTERVAL"])
    if row.last_activity_at is not None and row.last_activity_at > now - interval:
        return
    connection.execute(_TOUCH, {"now": now, "cutoff": now - interval, "instance_id": row.instance_id})
    connection.commit()


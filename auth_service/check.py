"""GET /auth/check: nginx's auth_request subrequest, on every request to Berth.

This is the hot path. It parses no session machinery and runs one indexed query that
answers both "who is this" and "where does this host go". The answer is carried in
headers that nginx picks up with auth_request_set:

  X-Berth-Upstream   where nginx proxies: a tool's address, or the web app
  X-Berth-Page       on tool hosts, which lifecycle page the web app shows
  X-Berth-User-Id    the user, for the web app only (never sent to a tool)
  X-Berth-Login-Url  on 401: the percent-encoded login address for browsers
  X-Berth-Reason     on 403: why, for the forbidden page
"""
from datetime import timedelta
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request
from sqlalchemy import Boolean, Integer, String, bindparam, text

from webapp.extensions import db
from webapp.hosts import is_main_host, parse_tool_host, public_url
from webapp.models import UTCDateTime, hash_token, utcnow

bp = Blueprint("check", __name__)

WEB_UPSTREAM = "berth_web"  # the name of the web app's upstream block in nginx/berth.conf.j2

# The X-Berth-* headers a request may carry: the secret nginx adds, and the spawning page's
# no-launch flag. Any other X-Berth-* header was forged by the client, and is refused.
_ALLOWED_HEADERS = {"x-berth-proxy-secret", "x-berth-no-launch"}

_ANSWER = text(
    """
    SELECT u.id AS user_id,
           t.id AS template_id, t.enabled AS template_enabled,
           o.id AS owner_id,
           i.id AS instance_id, i.state AS state, i.upstream AS upstream,
           i.last_activity_at AS last_activity_at
    FROM sessions s
    JOIN users u ON u.id = s.user_id
    LEFT JOIN tool_templates t ON t.slug = :slug
    LEFT JOIN users o ON o.host_key = :host_key
    LEFT JOIN tool_instances i ON i.host = :host
         AND i.state IN ('QUEUED', 'SPAWNING', 'RUNNING', 'STOPPING')
    WHERE s.token_hash = :token_hash
      AND s.revoked_at IS NULL
      AND s.expires_at > :now
      AND u.is_active
    """
).bindparams(bindparam("now", type_=UTCDateTime())).columns(
    user_id=Integer,
    template_id=Integer,
    template_enabled=Boolean,
    owner_id=Integer,
    instance_id=Integer,
    state=String,
    upstream=String,
    last_activity_at=UTCDateTime(),
)

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

    token = request.cookies.get(config["BERTH_SESSION_COOKIE"])
    if not token or len(token) > 200:
        return _unauthorised(config, host, uri)

    tool = None if is_main_host(host, config["BERTH_DOMAIN"]) else parse_tool_host(
        host, config["BERTH_DOMAIN"]
    )
    now = utcnow()
    with db.engine.connect() as connection:
        row = connection.execute(
            _ANSWER,
            {
                "token_hash": hash_token(token),
                "now": now,
                "slug": tool.slug if tool else None,
                "host_key": tool.host_key if tool else None,
                "host": host.split(":", 1)[0].lower() if tool else None,
            },
        ).first()
        if row is None:
            return _unauthorised(config, host, uri)
        if tool is None:
            # The main host, or a name under the domain that is no tool address.
            page = "" if is_main_host(host, config["BERTH_DOMAIN"]) else "notfound"
            return _to_web(row.user_id, page=page)
        if row.template_id is None or row.owner_id is None:
            return _to_web(row.user_id, page="notfound")
        if row.owner_id != row.user_id:
            return _forbidden("This tool belongs to another user.", row.user_id)
        if row.state == "RUNNING" and row.upstream:
            _record_activity(connection, config, row, now)
            return _answer(200, upstream=row.upstream, user_id=row.user_id, instance_id=row.instance_id)
        if row.instance_id is not None:
            return _to_web(row.user_id, page="spawning", instance_id=row.instance_id)
        if not row.template_enabled:
            return _to_web(row.user_id, page="notfound")
        return _to_web(row.user_id, page="start")


def _record_activity(connection, config, row, now):
    """Write last activity at most once per interval: a read decides, a conditional UPDATE writes."""
    interval = timedelta(seconds=config["BERTH_ACTIVITY_INTERVAL"])
    if row.last_activity_at is not None and row.last_activity_at > now - interval:
        return
    connection.execute(_TOUCH, {"now": now, "cutoff": now - interval, "instance_id": row.instance_id})
    connection.commit()


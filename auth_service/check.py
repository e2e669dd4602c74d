"""GET /auth/check: nginx's auth_request subrequest, on every request to Berth.

This is the hot path. It parses no session machinery and runs one indexed query that
answers both "who is this" and "where does this host go": on the main host by the session
cookie (host-only there); on a tool host by that host's own tool cookie, which the sign-in
hand-off set (auth_service/handoff.py) and which holds only while its session does; or, for a
request with `Authorization: Bearer berth_...`, by the personal API token (the same query
over api_tokens; the cookie is then ignored). Tokens reach the API on the main host and the
tools whose template allows them. On SQLite, a cookie's row is kept while the database is
unchanged (Database.unchanged_rows, docs/decisions/0025). The answer is carried in headers that
nginx picks up with auth_request_set:

  X-Berth-Upstream   where nginx proxies: a tool's address, or the web app
  X-Berth-Page       on tool hosts, which lifecycle page the web app shows ("moved": a
                     browser's navigation to a tool's legacy address, sent on to its current one)
  X-Berth-User-Id    the user, for the web app only (never sent to a tool)
  X-Berth-Login-Url  on 401: where browsers go to sign in: the login page for the main host,
                     the sign-in hand-off for a tool host
  X-Berth-Reason     on 403: why, for the forbidden page; on 401 for an API token: why it was
                     refused (invalid, revoked, expired, or its address must wait), which nginx
                     puts in the JSON answer, as does WWW-Authenticate (RFC 6750)
  Retry-After        on 503, when the database cannot be reached: nginx shows the
                     temporarily-unavailable page
  X-Berth-User-Email, -Name, -Groups
                     for a tool whose template asks for identity headers: who is using it,
                     percent-encoded UTF-8 (groups comma-separated)

Who may open what (berth/access.py states the rules) is decided by the same query: the
template's groups, the owner, and the grants on the host. Templates with an IP allowlist are
checked against the client address (berth/addresses.py).

An API token's scope (berth/tokens.py) is checked here too, against the method and the path.
Unknown API tokens are counted per client address (berth/throttle.py, "token:<ip>"): past
BERTH_TOKEN_ADDRESS_FAILURES, every token from that address is refused until its wait is over,
whatever the token, so that guessing gains nothing. The wait is read in the same query.
"""
import collections
import hmac
import json
import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from sqlalchemy.exc import SQLAlchemyError
from werkzeug.datastructures import EnvironHeaders

from berth import throttle
from berth.addresses import allowed, parse_networks, request_client_address
from berth.database import RETRY_AFTER_SECONDS, connect, connect_arguments
from berth.hosts import (MAX_NEXT_URL_LENGTH, is_main_host, parse_tool_host, public_url, session_cookie_name,
                         personal_host_parts, strip_port, tool_cookie_name, tools_domain)
from berth.extensions import db
from berth.models import hash_token, record_event, utcnow
from berth.nginx_conf import tool_upstream_address
from berth.tokens import TOKEN_REFUSALS, api_refusal, bearer_token, token_allowed_on_main_host, tool_refusal
from berth.web.launch_pass import is_navigation

WEB_UPSTREAM = "berth_web"  # the name of the web app's upstream block in nginx/berth.conf.j2

# The X-Berth-* headers a request may carry: the secret nginx adds, and the spawning page's
# no-launch flag. Any other X-Berth-* header was forged by the client, and is refused.
_ALLOWED_HEADERS = {"HTTP_X_BERTH_PROXY_SECRET", "HTTP_X_BERTH_NO_LAUNCH"}

log = logging.getLogger(__name__)

_ANSWER_SQL = """
    SELECT u.id AS user_id, s.id AS credential_id, s.{seen} AS seen_at, s.expires_at AS expires_at,
           {scope} AS scope, {blocked_until} AS blocked_until,
           u.email AS email, u.name AS name,
           t.id AS template_id, t.name AS template_name, t.enabled AS template_enabled,
           t.shared AS shared, t.allow_api_tokens AS allow_api_tokens,
           t.identity_headers AS identity_headers, t.ip_allowlist AS ip_allowlist,
           (u.is_admin
            OR NOT EXISTS (SELECT 1 FROM template_groups tg WHERE tg.template_id = t.id)
            OR EXISTS (SELECT 1 FROM template_groups tg
                       JOIN memberships m ON m.group_id = tg.group_id AND m.user_id = u.id
                       WHERE tg.template_id = t.id)) AS may_use,
           o.id AS owner_id,
           EXISTS (SELECT 1 FROM tool_grants g
                   WHERE g.host = {tool_host}
                     AND (g.user_id = u.id
                          OR g.group_id IN (SELECT m.group_id FROM memberships m
                                            WHERE m.user_id = u.id))) AS granted,
           i.id AS instance_id, i.state AS state, i.upstream AS upstream,
           i.last_activity_at AS last_activity_at
    FROM {credentials}
    JOIN users u ON u.id = s.user_id
    LEFT JOIN tool_templates t ON t.slug = :slug
    LEFT JOIN users o ON o.{owner_column} = :owner
    LEFT JOIN tool_instances i ON i.host = {tool_host}
         AND i.state IN ('QUEUED', 'SPAWNING', 'RUNNING', 'STOPPING')
    WHERE {credential_hash} = :token_hash
      AND s.revoked_at IS NULL
      AND s.expires_at > :now{idle_condition}
      AND u.is_active
    """
_COLUMNS = ("user_id", "credential_id", "seen_at", "expires_at", "scope", "blocked_until", "email", "name", "template_id",
            "template_name", "template_enabled", "shared", "allow_api_tokens", "identity_headers", "ip_allowlist",
            "may_use", "owner_id", "granted", "instance_id", "state", "upstream", "last_activity_at")
_TIMESTAMPS = ("seen_at", "expires_at", "blocked_until", "last_activity_at")

# A session also ends when it has not been used for BERTH_SESSION_IDLE_LIFETIME.
_IDLE_CONDITION = "\n      AND s.last_seen_at > :idle_cutoff"
_SESSION_ONLY = {"scope": "NULL", "blocked_until": "NULL"}
# The owner is found by address name, or on a legacy address by host key; either way the tool's
# instances and grants are under its address in the current form, which the legacy variant
# builds around the owner's address name (berth.hosts.personal_host_parts).
_OWNER = {False: {"owner_column": "address_name", "tool_host": ":host"},
          True: {"owner_column": "host_key", "tool_host": "(:host_prefix || o.address_name || :host_suffix)"}}
_ANSWER = {legacy: _ANSWER_SQL.format(credentials="sessions s", credential_hash="s.token_hash", seen="last_seen_at",
                                      idle_condition=_IDLE_CONDITION, **_SESSION_ONLY, **owner)
           for legacy, owner in _OWNER.items()}
# A tool cookie: good on its own host only (the address it was opened at), and only while its
# session is live.
_TOOL_COOKIE_ANSWER = {legacy: _ANSWER_SQL.format(
    credentials="tool_sign_ins c\n    JOIN sessions s ON s.id = c.session_id AND c.host = :host",
    credential_hash="c.token_hash", seen="last_seen_at", idle_condition=_IDLE_CONDITION, **_SESSION_ONLY, **owner)
    for legacy, owner in _OWNER.items()}
# A token also brings its scope, and how long its client's address must still wait.
_TOKEN_ANSWER = {legacy: _ANSWER_SQL.format(
    credentials="api_tokens s", credential_hash="s.token_hash", seen="last_used_at", idle_condition="",
    scope="s.scope",
    blocked_until="(SELECT b.blocked_until FROM sign_in_throttles b WHERE b.key = :throttle_key)", **owner)
    for legacy, owner in _OWNER.items()}
# Until when a client address must wait before its tokens are looked at (NULL: no wait).
_TOKEN_WAIT = "SELECT blocked_until FROM sign_in_throttles WHERE key = :throttle_key"
# Why a token the answer query did not find is no good: unknown, revoked, expired, or its user's.
_TOKEN_STATE = """
    SELECT s.expires_at, s.revoked_at, u.is_active
    FROM api_tokens s JOIN users u ON u.id = s.user_id
    WHERE s.token_hash = :token_hash
    """
_NO_IDLE_LIMIT = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Marks a session or token as used, at most once per BERTH_ACTIVITY_INTERVAL (like _TOUCH).
_SEEN = {
    table: f"""
        UPDATE {table} SET {column} = :now
        WHERE id = :id AND ({column} IS NULL OR {column} < :cutoff)
        """
    for table, column in (("sessions", "last_seen_at"), ("api_tokens", "last_used_at"))
}

_GROUP_NAMES = """
    SELECT g.name FROM memberships m JOIN groups g ON g.id = m.group_id
    WHERE m.user_id = :user_id ORDER BY g.name
    """

_TOUCH = """
    UPDATE tool_instances SET last_activity_at = :now
    WHERE id = :id AND (last_activity_at IS NULL OR last_activity_at < :cutoff)
    """


# The answer's row, its columns by name; a tuple built in one call (no attribute set per column).
_Row = collections.namedtuple("_Row", _COLUMNS)
_TIMESTAMP_INDEXES = tuple(_COLUMNS.index(name) for name in _TIMESTAMPS)


# Answer rows a thread keeps while the database is unchanged (see Database.unchanged_rows).
_MAX_KEPT_ROWS = 2048
_DATA_VERSION = "PRAGMA data_version"


class Database:
    """The auth check's own DBAPI connections, one per thread, kept open.

    SQLAlchemy's result machinery cost more than the query itself on this path, so the check
    talks to the driver directly: the same SQL, with the driver's parameter style, and (on
    PostgreSQL) prepared statements.
    """

    def __init__(self, engine, config):
        self.engine = engine
        self.config = config
        self.dialect = engine.dialect.name
        self.local = threading.local()
        self.pyformat = engine.dialect.paramstyle == "pyformat"
        self._sql = {}  # the driver's text of each statement, converted once, not per request

    def sql(self, text):
        converted = self._sql.get(text)
        if converted is None:
            converted = self._sql[text] = re.sub(r":(\w+)", r"%(\1)s", text) if self.pyformat else text
        return converted

    def _connect(self):
        dialect = self.engine.dialect
        cargs, cparams = dialect.create_connect_args(self.engine.url)
        cparams.update(connect_arguments(self.config, self.dialect, self.engine.url.query.get("options")))
        connection = connect(dialect, cargs, cparams, self.config) or dialect.loaded_dbapi.connect(*cargs, **cparams)
        if self.dialect == "sqlite":
            connection.isolation_level = None  # autocommit: every statement stands alone
        else:
            connection.autocommit = True
            connection.prepare_threshold = 0  # prepare at once: the same few statements, always
        return connection

    def run(self, sql, params, fetch=None):
        if self.dialect == "sqlite":
            params = {key: _sqlite_value(value) for key, value in params.items()}
        if fetch is None:
            # A write of this connection's own: SQLite's data_version does not count it.
            self.local.rows = None
        for attempt in (1, 2):
            connection = getattr(self.local, "connection", None)
            try:
                if connection is None:
                    self.local.rows = None
                    connection = self.local.connection = self._connect()
                cursor = connection.cursor()
                try:
                    cursor.execute(self.sql(sql), params)
                    if fetch == "one":
                        return cursor.fetchone()
                    return cursor.fetchall() if fetch == "all" else None
                finally:
                    cursor.close()
            except self.engine.dialect.loaded_dbapi.OperationalError:
                # The server restarted or the connection broke: reconnect once, then give up.
                self.local.connection = None
                if attempt == 2:
                    raise

    def unchanged_rows(self):
        """This thread's answer rows, kept for as long as nothing in the database changes; None
        where that cannot be known cheaply (PostgreSQL).

        SQLite's `PRAGMA data_version` changes whenever another connection, in this process or
        any other, commits: reading it costs about 1.5 µs, against about 17 for the answer query.
        Every rule the query checks is data, except time (expiry, idleness), which the caller
        checks again on a kept row (AuthCheck._answer_row). Writes on this thread's own
        connection, which data_version does not count, drop the rows (run). See
        docs/decisions/0025.
        """
        if self.dialect != "sqlite":
            return None
        local = self.local
        connection = getattr(local, "connection", None)
        if connection is None:
            version = self.run(_DATA_VERSION, {}, fetch="one")[0]
        else:
            try:
                version = connection.execute(_DATA_VERSION).fetchone()[0]
            except self.engine.dialect.loaded_dbapi.OperationalError:
                version = self.run(_DATA_VERSION, {}, fetch="one")[0]  # reconnects once, or raises
        rows = getattr(local, "rows", None)
        if rows is None or local.version != version or len(rows) >= _MAX_KEPT_ROWS:
            rows = local.rows = {}
            local.version = version
        return rows

    def row(self, sql, params):
        values = self.run(sql, params, fetch="one")
        if values is None:
            return None
        values = list(values)
        for index in _TIMESTAMP_INDEXES:
            values[index] = _timestamp(values[index])
        return _Row._make(values)


def _sqlite_value(value):
    if isinstance(value, datetime):
        # The format SQLAlchemy's UTCDateTime stores in SQLite, so that comparisons hold.
        if value.tzinfo is not timezone.utc:
            value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")
    return value


def _timestamp(value):
    """A timestamp as the driver returns it (text on SQLite), timezone-aware."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def _answer(status, **headers):
    return status, [(_HEADER_NAMES.get(name) or _header_name(name), str(value)) for name, value in headers.items()]


_HEADER_NAMES = {}


def _header_name(name):
    """user_id → X-Berth-User-Id, made once per name."""
    header = _HEADER_NAMES[name] = "X-Berth-" + name.replace("_", "-").title()
    return header


def _unauthorised(config, host, uri, tool=None):
    """401: a browser is sent to sign in (on a tool host through the hand-off)."""
    if tool is not None:
        return _to_handoff(config, host, uri)
    return _to_login(config, host, uri)


def _token_refused(config, host, uri, reason, error="invalid_token"):
    """401 for an API token, saying why: nginx answers it as JSON, and passes WWW-Authenticate on."""
    status, headers = _to_login(config, host, uri)
    headers += [("X-Berth-Reason", reason),
                ("WWW-Authenticate", f'Bearer error="{error}", error_description="{reason}"')]
    return status, headers


def _to_login(config, host, uri):
    original = public_url(config, host, uri or "/")
    if len(original) > MAX_NEXT_URL_LENGTH:
        # The login page would refuse so long a "next" anyway (safe_next_url), and encoded it
        # could outgrow the header buffer nginx reads this answer into: sign in, then go home.
        return _answer(401, login_url=public_url(config, config["BERTH_DOMAIN"], "/auth/login"))
    login = public_url(config, config["BERTH_DOMAIN"], "/auth/login?next=" + quote(original, safe=""))
    return _answer(401, login_url=login)


def _to_handoff(config, host, uri):
    """A browser without this tool host's cookie is sent to the main host, which signs it in
    there (auth_service/handoff.py) and sends it back to the same path."""
    path = uri if uri and uri.startswith("/") and len(uri) <= MAX_NEXT_URL_LENGTH else "/"
    handoff = public_url(config, config["BERTH_DOMAIN"],
                         f"/auth/handoff?host={quote(strip_port(host), safe='')}&next={quote(path, safe='')}")
    return _answer(401, login_url=handoff)


def _wait_reason(until, now):
    seconds = max(1, throttle.seconds_until(until, now))
    return (f"Too many unknown API tokens came from your address. Wait {seconds} "
            f"second{'s' if seconds != 1 else ''}, then try again.")


def _page_for(row, tool):
    """The lifecycle page for a tool host whose tool is not running (the user may open it)."""
    if row.instance_id is not None:
        return "spawning"
    if not row.template_enabled:
        return "notfound"
    if not tool.shared and row.owner_id != row.user_id:
        return "unavailable"  # a grantee: only the owner starts it
    return "start"


def _forbidden(reason, user_id=""):
    return _answer(403, reason=reason, user_id=user_id)


def _to_web(user_id, page="", instance_id="", session_id=""):
    """To the web app. session_id, the sign-in's row (none for an API token), is what the web
    app binds its CSRF tokens to: no cookie a tool's page could plant."""
    return _answer(
        200,
        upstream=WEB_UPSTREAM,
        page=page,
        user_id=user_id,
        instance_id=instance_id or "",
        session_id=session_id,
    )


_STATUS_LINES = {200: "200 OK", 401: "401 Unauthorized", 403: "403 Forbidden",
                 500: "500 Internal Server Error", 503: "503 Service Unavailable"}


class AuthCheck:
    """WSGI middleware: answers GET /auth/check itself, and passes everything else to Flask.

    No request context, no Flask session, no SQLAlchemy ORM: the hot path is parsing a few
    headers, one indexed query, and (at most once a minute per session) one small UPDATE.
    """

    def __init__(self, app):
        self.app = app
        self.flask_app = app.wsgi_app
        self.config = app.config
        self.secret = app.config["BERTH_PROXY_SECRET"].encode()
        self.session_cookie = _cookie_pattern(session_cookie_name(app.config))
        self.tool_cookie = _cookie_pattern(tool_cookie_name(app.config))
        with app.app_context():
            self.database = Database(db.engine, app.config)
        self._allowlists = {}
        self._hosts = {}
        # Settings the hot path reads as values it can use at once (they hold for the process).
        idle = app.config["BERTH_SESSION_IDLE_LIFETIME"]
        self.idle_lifetime = timedelta(seconds=idle) if idle else None
        self.activity_interval = timedelta(seconds=app.config["BERTH_ACTIVITY_INTERVAL"])
        cache = app.config["BERTH_AUTH_CACHE_SECONDS"]
        self.cached_for = [("X-Accel-Expires", str(cache))] if cache else []

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != "/auth/check":
            return self.flask_app(environ, start_response)
        sent = environ.get("HTTP_X_BERTH_PROXY_SECRET", "").encode()
        if not hmac.compare_digest(sent, self.secret):
            status, headers = 403, [("Content-Type", "text/plain")]
            body = b"Berth answers only through its nginx.\n"
        else:
            status, headers = self.answer(environ)
            body = b""
            if status == 403:  # a refusal is worth a line: who was refused what, and why
                reason = next((value for name, value in headers if name == "X-Berth-Reason"), "")
                log.info("auth check: 403 for %s%s: %s", environ.get("HTTP_X_ORIGINAL_HOST", "")[:200],
                         environ.get("HTTP_X_ORIGINAL_URI", "")[:200].encode("unicode_escape").decode(), reason)
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS_LINES.get(status, str(status)), headers)
        return [body]

    def answer(self, environ):
        config = self.config
        host = environ.get("HTTP_X_ORIGINAL_HOST", "")
        uri = environ.get("HTTP_X_ORIGINAL_URI", "/")

        forged = _forged_headers(environ)
        if forged:
            name = "-".join(part.title() for part in forged[0][5:].split("_"))
            return _forbidden(f"The request carries a reserved header ({name}).")

        main_host, tool = self._host(host)
        # A Berth API token in Authorization wins over the cookie; any other Authorization (a
        # tool's own scheme) is left alone for the tool. The main host reads the session
        # cookie, a tool host only its own tool cookie: a session cookie there is ignored.
        api_token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
        token = api_token
        if not token:
            copies = (self.tool_cookie if tool else self.session_cookie).findall(environ.get("HTTP_COOKIE", ""))
            if len(copies) > 1:
                # A page on another host planted a second one: trust neither (fail closed).
                return _forbidden("This browser sends two Berth session cookies, so Berth trusts "
                                  "neither. Clear this site's cookies, then sign in again.")
            token = copies[0].strip().strip('"') if copies else None  # quoted, as cookies may be
        if not token or len(token) > 200:
            return _unauthorised(config, host, uri, tool)

        if api_token and main_host and not token_allowed_on_main_host(uri):
            return _forbidden("API tokens are accepted only for the API, under /api/.")
        now = utcnow()
        params = {
            "token_hash": hash_token(token),
            "now": now,
            "slug": tool.slug if tool else None,
            "owner": (tool.host_key or tool.address_name) if tool else None,
            "host": host.split(":", 1)[0].lower() if tool else None,
        }
        legacy = tool is not None and tool.legacy
        if legacy:
            params["host_prefix"], params["host_suffix"] = personal_host_parts(tool.slug, tools_domain(config))
        if api_token:
            # The client's address only matters to tokens here (the throttle); allowlists read it below.
            address = request_client_address(config, environ.get("HTTP_X_REAL_IP", ""),
                                             environ.get("HTTP_X_FORWARDED_FOR", ""))
            address = str(address) if address is not None else ""
            params["throttle_key"] = throttle.token_key(address)
        else:
            params["idle_cutoff"] = now - self.idle_lifetime if self.idle_lifetime else _NO_IDLE_LIMIT
        query = (_TOKEN_ANSWER if api_token else _TOOL_COOKIE_ANSWER if tool else _ANSWER)[legacy]
        try:
            kept = None if api_token else self.database.unchanged_rows()
            row = self._answer_row(query, params, kept)
            if api_token and row is not None and row.blocked_until is not None and row.blocked_until > now:
                # The address is waiting: the answer must not depend on the token at all.
                return _token_refused(config, host, uri, _wait_reason(row.blocked_until, now))
            if row is None:
                if api_token:
                    return self._refuse_token(params, address, host, uri)
                return _unauthorised(config, host, uri, tool)
            self._record_seen("api_tokens" if api_token else "sessions", row, now)
            session_id = "" if api_token else row.credential_id
            if tool is None:
                if api_token and main_host:
                    method = environ.get("HTTP_X_ORIGINAL_METHOD", "GET")
                    refusal = api_refusal(row.scope, method, uri.split("?", 1)[0])
                    if refusal is not None:
                        return _forbidden(refusal, row.user_id)
                # The main host, or a name under the domain that is no tool address.
                page = "" if main_host else "notfound"
                return _to_web(row.user_id, page=page, session_id=session_id)
            refusal = self._refusal(row, tool, environ, api_token) or _foreign_websocket(config, host, environ)
            if refusal is not None:
                return refusal
            if legacy and not api_token and _browser_navigation(environ):
                # One address per tool in the browser (one cookie, one origin): the web app
                # sends it on to the current one. Everything else is answered here as it is.
                return _to_web(row.user_id, page="moved", session_id=session_id)
            running = row.state == "RUNNING" and row.upstream
            if api_token:
                refusal = tool_refusal(row.scope, environ.get("HTTP_X_ORIGINAL_METHOD", "GET"),
                                       environ.get("HTTP_X_ORIGINAL_UPGRADE", ""),
                                       "" if running else _page_for(row, tool), row.template_name)
                if refusal is not None:
                    return _forbidden(refusal, row.user_id)
            if running:
                self._record_activity(row, now)
                return self._to_tool(row, session_id, kept)
        except self.database.engine.dialect.loaded_dbapi.OperationalError as failure:
            # Unreachable, paused, or too slow (berth/database.py bounds each wait): nginx shows
            # the temporarily-unavailable page, and the next request connects again.
            log.error("auth check: the database is unavailable: %s", str(failure).strip())
            return 503, [("Retry-After", str(RETRY_AFTER_SECONDS))]
        except self.database.engine.dialect.loaded_dbapi.Error:
            log.exception("auth check: the database failed")
            return 500, []
        return _to_web(row.user_id, page=_page_for(row, tool), instance_id=row.instance_id or "",
                       session_id=session_id)

    def _answer_row(self, query, params, rows):
        """The answer query's row; for a cookie, the one this thread kept (rows: unchanged_rows)
        while the database has not changed since, if its session is still in time. A token's row
        is always read afresh (rows None): it depends on its client address's wait too."""
        if rows is None:
            return self.database.row(query, params)
        key = (query, params["token_hash"], params["slug"], params["owner"], params["host"])
        row = rows.get(key)
        if row is None:
            row = self.database.row(query, params)
            if row is not None:
                rows[key] = row
        elif not (row.expires_at > params["now"] and row.seen_at is not None
                  and row.seen_at > params["idle_cutoff"]):
            # What the query's own conditions would say now: expired, or idle for too long.
            del rows[key]
            return None
        return row

    def _host(self, host):
        """(whether host is the main host, its ToolHost or None): what the settings make of the
        name, kept by its text, as most requests name one of a few hosts."""
        known = self._hosts.get(host)
        if known is None:
            main_host = is_main_host(host, self.config["BERTH_DOMAIN"])
            known = (main_host, None if main_host else parse_tool_host(host, tools_domain(self.config)))
            if len(host) <= 300:  # a longer one is no DNS name (at most 253, and a port)
                if len(self._hosts) > 1000:  # any name reaches here: keep the memory bounded
                    self._hosts.clear()
                self._hosts[host] = known
        return known

    def _refuse_token(self, params, address, host, uri):
        """401 for a token the answer query did not find, saying why. An unknown one counts
        against its client's address (and may start that address's wait, which the audit log
        records). While the address waits, the answer says only that."""
        waiting = self.database.run(_TOKEN_WAIT, {"throttle_key": params["throttle_key"]}, fetch="one")
        until = _timestamp(waiting[0]) if waiting else None
        if until is not None and until > params["now"]:
            return _token_refused(self.config, host, uri, _wait_reason(until, params["now"]))
        found = self.database.run(_TOKEN_STATE, {"token_hash": params["token_hash"]}, fetch="one")
        if found is not None:
            expires_at, revoked_at, is_active = found
            case = "revoked" if revoked_at is not None else "inactive" if not is_active else "expired"
            return _token_refused(self.config, host, uri, TOKEN_REFUSALS[case])
        threshold = self.config["BERTH_TOKEN_ADDRESS_FAILURES"]
        try:
            with self.app.app_context():
                wait = throttle.count_failure(throttle.token_key(address), threshold)
                if wait:
                    record_event("auth.token_throttled",
                                 f"API tokens from {address or 'an unreadable address'} refused for {wait} s: "
                                 f"{threshold} or more unknown tokens", actor="anonymous", ip=address,
                                 throttle="token", retry_after=wait)
                db.session.commit()
        except SQLAlchemyError:
            log.exception("auth check: could not count an unknown API token")
        return _token_refused(self.config, host, uri, TOKEN_REFUSALS["invalid"])

    def _refusal(self, row, tool, environ, api_token):
        """The answer when this user may not open this tool (a page or a 403), else None."""
        if row.template_id is None or bool(row.shared) != tool.shared:
            return _to_web(row.user_id, page="notfound")
        if not tool.shared and row.owner_id is None:
            return _to_web(row.user_id, page="notfound")
        if row.ip_allowlist and row.ip_allowlist != "[]":
            address = request_client_address(self.config, environ.get("HTTP_X_REAL_IP", ""),
                                             environ.get("HTTP_X_FORWARDED_FOR", ""))
            if not allowed(address, self._networks(row.ip_allowlist)):
                seen = address or "an unreadable address"
                return _forbidden(f"{row.template_name} cannot be reached from your address, {seen}.",
                                  row.user_id)
        if not row.may_use:
            return _forbidden(f"You are not in a group that may use {row.template_name}.", row.user_id)
        if not tool.shared and row.owner_id != row.user_id and not row.granted:
            return _forbidden(f"This {row.template_name} belongs to another user, who has not shared it "
                              "with you.", row.user_id)
        if api_token and not row.allow_api_tokens:
            return _forbidden("This tool does not accept API tokens.", row.user_id)
        return None

    def _networks(self, allowlist):
        """Parsed allowlists, kept by their stored text: templates change rarely."""
        key = allowlist if isinstance(allowlist, str) else json.dumps(allowlist)
        networks = self._allowlists.get(key)
        if networks is None:
            values = json.loads(allowlist) if isinstance(allowlist, str) else allowlist
            try:
                networks = parse_networks(values)
            except ValueError:  # the loader and admin form validate; never let a bad one open up
                log.error("auth check: a template's ip_allowlist is invalid (%r); refusing all", allowlist)
                networks = []
            if len(self._allowlists) > 1000:
                self._allowlists.clear()
            self._allowlists[key] = networks
        return networks

    def _to_tool(self, row, session_id, kept=None):
        # The sign-in is for the page nginx shows when the tool does not answer (its restart
        # form's CSRF token); nginx sends it to the web app only, never to the tool.
        headers = [("X-Berth-Upstream", nginx_upstream(self.config, row.upstream)), ("X-Berth-User-Id", str(row.user_id)),
                   ("X-Berth-Instance-Id", str(row.instance_id)), ("X-Berth-Session-Id", str(session_id))]
        if row.identity_headers:
            # The user's groups, kept with the answer rows while the database is unchanged.
            key = ("groups", row.user_id)
            groups = kept.get(key) if kept is not None else None
            if groups is None:
                groups = _group_list(self.database.run(_GROUP_NAMES, {"user_id": row.user_id}, fetch="all"))
                if kept is not None:
                    kept[key] = groups
            headers += [("X-Berth-User-Email", _encoded(row.email)),
                        ("X-Berth-User-Name", _encoded(row.name or "")),
                        ("X-Berth-User-Groups", groups)]
        # Only answers for running tools are cached: lifecycle pages must follow state at once.
        headers += self.cached_for
        return 200, headers

    def _record_seen(self, table, row, now):
        """Mark the session or token as used, at most once per interval (no write per request)."""
        interval = self.activity_interval
        if row.seen_at is not None and row.seen_at > now - interval:
            return
        self.database.run(_SEEN[table], {"now": now, "cutoff": now - interval, "id": row.credential_id})

    def _record_activity(self, row, now):
        """Write last activity at most once per interval: a read decides, a conditional UPDATE writes."""
        interval = self.activity_interval
        if row.last_activity_at is not None and row.last_activity_at > now - interval:
            return
        self.database.run(_TOUCH, {"now": now, "cutoff": now - interval, "id": row.instance_id})


# Room for a user in a couple of hundred groups: nginx reads the answer's headers into 16 KiB
# (proxy_buffer_size in nginx/snippets/auth_locations.conf.j2), and tools have limits of their own.
MAX_GROUPS_HEADER = 8 * 1024


def _forged_headers(environ):
    """The X-Berth-* headers a client sent that are not its to send. The keys are counted in one
    pass over their joined text (the hot path); only a request with more than the allowed ones,
    or a key that merely contains the prefix, is looked at key by key."""
    allowed = sum(map(environ.__contains__, _ALLOWED_HEADERS))
    if " ".join(environ).count("HTTP_X_BERTH_") <= allowed:
        return []
    return [key for key in environ if key.startswith("HTTP_X_BERTH_") and key not in _ALLOWED_HEADERS]


def _foreign_websocket(config, host, environ):
    """Refuse a WebSocket handshake that a page of another site or another tool started.

    The browser sends the cookies with any page's WebSocket, and the server cannot tell the
    pages apart but by Origin. A tool's own pages have its own origin. Clients that are not
    browsers send no Origin, and carry no one else's cookies either."""
    if environ.get("HTTP_X_ORIGINAL_UPGRADE", "").lower() != "websocket":
        return None
    origin = environ.get("HTTP_ORIGIN")
    own = public_url(config, host.split(":", 1)[0].lower(), path="")
    # A header sent twice arrives joined with commas; every copy must be the tool's own.
    if origin is None or all(part.strip() == own for part in origin.split(",")):
        return None
    return _forbidden(f"A WebSocket to this tool must come from its own pages, not from {origin[:200]}.")


def _browser_navigation(environ):
    if environ.get("HTTP_X_ORIGINAL_UPGRADE"):
        return False
    return is_navigation(environ.get("HTTP_X_ORIGINAL_METHOD", "GET"), EnvironHeaders(environ))


def _cookie_pattern(name):
    """Every copy of the cookie name in a Cookie header."""
    return re.compile(r"(?:^|;)\s*" + re.escape(name) + r"\s*=\s*([^;]*)")


def _group_list(rows):
    """The user's groups for X-Berth-User-Groups: comma-separated, cut at a whole group."""
    text = ",".join(_encoded(name) for (name,) in rows)
    if len(text) > MAX_GROUPS_HEADER:
        text = text[:MAX_GROUPS_HEADER + 1].rsplit(",", 1)[0]
        log.warning("auth check: X-Berth-User-Groups cut to %d bytes", len(text))
    return text


def _encoded(value):
    """Header-safe: UTF-8, percent-encoded (urllib.parse.unquote reads it back)."""
    return quote(value, safe="@._-+")


def nginx_upstream(config, address):
    """The nginx upstream for a tool address: its port's keepalive block when the block leads to
    this very address (berth.conf.j2), else the address itself."""
    _, _, port = address.rpartition(":")
    if port.isdigit() and tool_upstream_address(config, int(port)) == address:
        return f"berth_tool_{port}"
    return address

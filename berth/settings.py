"""Settings: every BERTH_* environment variable, defined once in SETTINGS.

Each Setting names its variable, how it is parsed (the typed parse_* helpers below), its
default and what it does. load_settings() reads the Flask config from that list, and the
configuration reference, docs/configuration.md, is generated from it (`berth settings-doc`, or
`python -m berth.settings`); a test fails when the two differ. A bad value stops the process with
a message naming the variable and the value, rather than being guessed at.
"""
import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit


class SettingError(ValueError):
    """A BERTH_* variable holds a value that cannot be used."""


# -- the typed parsers: (name, default, environ, limits) → value, or SettingError naming name ----

def _raw(name, environ):
    value = environ.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def parse_boolean(name, default, environ=os.environ):
    value = _raw(name, environ)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name}={value!r} is not a boolean (use true or false)")


def parse_int(name, default, environ=os.environ, minimum=None, maximum=None):
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not a whole number") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{name}={number} is below the minimum of {minimum}")
    if maximum is not None and number > maximum:
        raise SettingError(f"{name}={number} is above the maximum of {maximum}")
    return number


def parse_port_range(name, default, environ=os.environ, lowest=1024, highest=65535):
    value = _raw(name, environ) or default
    try:
        low, high = (int(part) for part in value.split("-", 1))
    except ValueError:
        raise SettingError(f"{name}={value!r} is not a range like {default}") from None
    if not (lowest <= low <= high <= highest):
        raise SettingError(f"{name}={value!r} must lie within {lowest}-{highest}, low end first")
    return low, high


def parse_uid_range(name, default, environ=os.environ):
    return parse_port_range(name, default, environ, lowest=1000, highest=2**31 - 1)


def parse_tool_network(name, default, environ=os.environ):
    import ipaddress

    value = _raw(name, environ) or default
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not an IPv4 network like {default}") from None
    if network.prefixlen > 28:
        raise SettingError(f"{name}={value!r} is too small: tools need at least four /30s (a /28)")
    return str(network)


def parse_string(name, default, environ=os.environ, choices=None):
    value = _raw(name, environ)
    return default if value is None else _choice(name, value, choices)


def parse_lowercase(name, default, environ=os.environ, choices=None):
    """Text in any case, returned in lower case (host names, log levels)."""
    value = _raw(name, environ)
    return default if value is None else _choice(name, value.lower(), choices)


def _choice(name, value, choices):
    if choices and value not in choices:
        raise SettingError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def parse_path(name, default, environ=os.environ):
    """A folder, made absolute (relative to the working directory the process starts in)."""
    value = parse_string(name, default, environ)
    return None if value is None else os.path.abspath(value)


def parse_list(name, default, environ=os.environ, choices=None):
    value = _raw(name, environ) or default
    items = [item.strip() for item in value.split(",") if item.strip()]
    for item in items:
        if choices and item not in choices:
            raise SettingError(f"{name}: {item!r} is not one of {', '.join(choices)}")
    return tuple(items)


def parse_networks(name, default="", environ=os.environ):
    from berth.addresses import AddressError, parse_networks as networks

    try:
        return tuple(networks(list(parse_list(name, default, environ)), field=name))
    except AddressError as error:
        raise SettingError(str(error)) from None


def parse_secret(name, default=None, environ=os.environ, minimum=16):
    """An optional shared secret: unset is fine, a short one is refused."""
    value = _raw(name, environ)
    if value is None:
        return default
    if len(value) < minimum:
        raise SettingError(f"{name} must have at least {minimum} characters "
                           "(try: openssl rand -hex 32)")
    return value


def parse_url(name, default, environ=os.environ):
    value = _raw(name, environ)
    if value is None:
        return default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SettingError(f"{name}={value!r} is not an http(s) URL without query or fragment")
    return value.rstrip("/")


def parse_nginx_size(name, default, environ=os.environ):
    """An nginx size: 0, 512, 64k, 10m, 1g."""
    value = _raw(name, environ) or default
    if value is not None and not re.fullmatch(r"\d+[kKmMgG]?", value):
        raise SettingError(f"{name}={value!r} is not an nginx size like 10m, 64k or 0")
    return value


def parse_nginx_time(name, default, environ=os.environ):
    """An nginx time: 60s, 500ms, 1h, 1h30m."""
    value = _raw(name, environ) or default
    if not re.fullmatch(r"\d+|(?:\d+(?:ms|s|m|h|d))+", value):
        raise SettingError(f"{name}={value!r} is not an nginx time like 60s, 500ms or 1h")
    return value


def parse_nginx_buffers(name, default, environ=os.environ):
    """nginx's proxy_buffers: a number and a size, "8 16k"."""
    value = _raw(name, environ) or default
    if value is not None and not re.fullmatch(r"\d+\s+\d+[kKmM]?", value):
        raise SettingError(f"{name}={value!r} is not a number and a size like '8 16k'")
    return None if value is None else " ".join(value.split())


_RESOLVER_WORD = re.compile(r"(?:valid=(?:\d+|(?:\d+(?:ms|s|m|h|d))+)|ipv6=(?:on|off)|ipv4=(?:on|off)"
                            r"|\[[0-9a-fA-F:.]+\](?::\d+)?|[A-Za-z0-9.-]+(?::\d+)?)")


def parse_nginx_resolver(name, default, environ=os.environ):
    """DNS servers for nginx's resolver, with its options: "10.96.0.10 valid=10s ipv6=off"."""
    value = _raw(name, environ)
    if value is None:
        return default
    words = value.split()
    bad = [word for word in words if not _RESOLVER_WORD.fullmatch(word)]
    if bad or all("=" in word for word in words):
        raise SettingError(f"{name}={value!r} is not a resolver like '10.96.0.10 valid=10s' "
                           f"(addresses, then valid=, ipv6=off)")
    return " ".join(words)


def parse_nginx_log(name, default, environ=os.environ):
    """Where nginx writes a log: off, a file (relative: to nginx's prefix) or syslog:server=..."""
    value = _raw(name, environ) or default
    if value is not None and not re.fullmatch(r"[^\s;{}'\"\\$#]+", value):
        raise SettingError(f"{name}={value!r} is not a file, syslog:server=... or off "
                           "(no spaces, quotes, ;, {, }, $ or #)")
    return value


def parse_nginx_name(name, default, environ=os.environ):
    """The name of something declared in nginx's configuration (a log_format)."""
    value = _raw(name, environ)
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise SettingError(f"{name}={value!r} is not an nginx name (letters, digits and _)")
    return value or default


def parse_host_name(name, default, environ=os.environ):
    """A DNS name in lower case, made of labels of letters, digits and hyphens."""
    value = parse_lowercase(name, default, environ)
    if value is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*",
                                              value):
        raise SettingError(f"{name}={value!r} is not a plain host name")
    return value


def parse_database_url(name, default, environ=os.environ):
    """A SQLAlchemy URL whose database driver is installed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    value = _raw(name, environ)
    if value is None:
        return default
    try:
        make_url(value).get_dialect()
    except (NoSuchModuleError, ImportError) as error:
        raise SettingError(f"{name}={_without_password(value)!r} names a database driver that is not "
                           f"installed ({str(error).splitlines()[0]})") from None
    except ArgumentError:
        raise SettingError(f"{name}={_without_password(value)!r} is not a database URL like "
                           "postgresql+psycopg://user:password@host/db or sqlite:////path/berth.db") from None
    return value


def parse_redis_url(name, default, environ=os.environ):
    value = _raw(name, environ)
    if value is None:
        return default
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise SettingError(f"{name}={_without_password(value)!r} is not a Redis URL like "
                           "redis://host:6379/0 (or rediss://, unix://)")
    try:
        parts.port
    except ValueError:
        raise SettingError(f"{name}={_without_password(value)!r} has a port that is not a number") from None
    return value


def _without_password(url):
    """A URL as an error message may show it: its password replaced by ***."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def parse_ip_address(name, default, environ=os.environ):
    import ipaddress

    value = parse_string(name, default, environ)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise SettingError(f"{name}={value!r} is not an IP address like 127.0.0.1 or 0.0.0.0") from None


def check_data_dir(path, name="BERTH_DATA_DIR"):
    """Create the data folder if need be and make sure this process may write in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise SettingError(f"{name}={path}: cannot write there ({error.strerror})") from None
    return path


# -- the definition --------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One BERTH_* environment variable: how it is read, its default, and what it does."""

    name: str
    group: str
    doc: str  # one paragraph of Markdown, for docs/configuration.md
    parse: Callable = parse_string
    # A value the parser takes (for a range or a list: the text), or a function of the other
    # settings (given a reader: settings["BERTH_DATA_DIR"]), called only when the variable is unset.
    default: Any = None
    default_doc: Optional[str] = None  # the default as the reference shows it, when not `default`
    kind: Optional[str] = None  # the type as the reference shows it, when the parser's is too vague
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    choices: Optional[tuple] = None
    key: Optional[str] = None  # the Flask config key, when not the variable's name
    # What reads it, when that is not every Berth process through load_settings(); such a
    # setting is not in the Flask config.
    read_by: Optional[str] = None

    @property
    def config_key(self):
        return None if self.read_by else self.key or self.name

    def read(self, environ, settings):
        """The value in environ, or the default; settings reads the others a default derives from."""
        limits = {limit: getattr(self, limit) for limit in ("minimum", "maximum", "choices")
                  if getattr(self, limit) is not None}
        if not callable(self.default):
            return self.parse(self.name, self.default, environ, **limits)
        value = self.parse(self.name, None, environ, **limits)
        return self.default(settings) if value is None else value


def _port(name, group, doc, default=None):
    return Setting(name, group, doc, parse=parse_int, default=default, minimum=1, maximum=65535,
                   kind="TCP port")


ADDRESSES = "Addresses and ports"
DATA = "Data and secrets"
SIGN_IN = "Sign-in"
TOOLS = "Tools"
BACKENDS = "Backends"
LIMITS = "Limits"
NGINX = "nginx"
METRICS = "Metrics"
PROCESSES = "Processes"
COMPOSE = "Docker Compose"

ENTRYPOINT = "`deploy/entrypoint.sh`"
GUNICORN = "`deploy/gunicorn.conf.py`"
DOCKER_COMPOSE = "`docker compose`"

SETTINGS = (
    # -- Addresses and ports
    Setting("BERTH_DOMAIN", ADDRESSES, parse=parse_host_name, default="berth.localhost", kind="host name",
            doc="Parent domain. The main host is this name; tools live at `<slug>-<user>.<domain>` "
                "(shared ones at `<slug>.<domain>`). Needs wildcard DNS in production; `*.localhost` "
                "resolves to loopback, so the default needs none."),
    Setting("BERTH_TOOLS_DOMAIN", ADDRESSES, parse=parse_host_name, kind="host name",
            doc="Parent domain of the tool hosts, when they should not live under `BERTH_DOMAIN`: "
                "tools are then at `<slug>-<user>.<tools domain>`, on a registrable domain of their "
                "own (as GitHub serves user content), so that no tool's page can set or read a "
                "cookie of the main host's site at all. Needs wildcard DNS and a TLS certificate for "
                "it. Unset: `BERTH_DOMAIN`."),
    Setting("BERTH_SCHEME", ADDRESSES, choices=("http", "https"), default="http",
            doc="Scheme browsers use to reach nginx (`https` behind TLS). With `https` the session "
                "cookie and the tool hosts' cookies are `Secure`, under the `__Host-` prefix."),
    _port("BERTH_HTTP_PORT", ADDRESSES, default=8080,
          doc="Port browsers use to reach nginx; part of every public address. docker-compose.yml "
              "also publishes nginx on it."),
    _port("BERTH_AUTH_PORT", ADDRESSES, default=8101,
          doc="Port of the auth service behind nginx (loopback with `berth run`; the container's "
              "port in the image)."),
    _port("BERTH_WEB_PORT", ADDRESSES, default=8102,
          doc="Port of the web app behind nginx (loopback with `berth run`; the container's port in "
              "the image)."),
    Setting("BERTH_TRUSTED_HOPS", ADDRESSES, parse=parse_int, default=0, minimum=0, maximum=5,
            doc="Number of proxies in front of nginx whose `X-Forwarded-For` and `X-Forwarded-Proto` "
                "are trusted. Also decides the client address that IP allowlists check."),
    Setting("BERTH_TRUSTED_PROXIES", ADDRESSES, parse=parse_networks, default="",
            doc="Where those proxies are. When set, a hop counts as trusted only from these "
                "addresses, so that a client reaching nginx directly cannot pose as a proxy."),
    Setting("BERTH_HTTP_BIND", ADDRESSES, parse=parse_ip_address, default="127.0.0.1", kind="IP address",
            read_by=f"`berth run` and {DOCKER_COMPOSE}",
            doc="The host address nginx listens on with `berth run`, and that docker-compose.yml "
                "publishes nginx's port on: `127.0.0.1` serves this machine only; `0.0.0.0` "
                "serves other machines too, as a try on a remote VM needs."),

    # -- Data and secrets
    Setting("BERTH_DATA_DIR", DATA, parse=parse_path, default="var", kind="folder",
            doc="Where the SQLite database and Huey's queue file (in its `database` folder), "
                "generated secrets, logs and users' homes live; a relative path is taken from the "
                "working directory. The image sets `/home/berth/data`."),
    Setting("BERTH_DATABASE_URL", DATA, key="SQLALCHEMY_DATABASE_URI", kind="SQLAlchemy URL",
            parse=parse_database_url,
            default=lambda settings: f"sqlite:///{sqlite_folder(settings['BERTH_DATA_DIR'])}/berth.db",
            default_doc="`sqlite:///<BERTH_DATA_DIR>/database/berth.db`",
            doc="The database. SQLite by default; `postgresql+psycopg://user:password@host/db` in "
                "production."),
    Setting("BERTH_DATABASE_CONNECT_TIMEOUT", DATA, parse=parse_int, default=3, minimum=2, maximum=60,
            doc="Seconds a process waits to connect to PostgreSQL (libpq's `connect_timeout`; it "
                "counts at least 2) before the request is answered 503, temporarily unavailable."),
    Setting("BERTH_DATABASE_STATEMENT_TIMEOUT", DATA, parse=parse_int, default=4, minimum=1, maximum=3600,
            doc="Longest wait in seconds for one database statement: PostgreSQL's `statement_timeout`, the "
                "same bound on the client side (for a server that does not answer at all), and "
                "SQLite's busy timeout. A request that runs out of it is answered 503. Migrations "
                "are not bound."),
    Setting("BERTH_REDIS_URL", DATA, kind="Redis URL", parse=parse_redis_url,
            doc="Huey's queue uses Redis at this URL (`redis://host:6379/0`) when set, and a SQLite "
                "file in the data folder otherwise."),
    Setting("BERTH_SECRET_KEY", DATA, key="SECRET_KEY", kind="secret",
            default=lambda settings: _persistent_secret(settings["BERTH_DATA_DIR"], "secret_key"),
            default_doc="generated into `<BERTH_DATA_DIR>/secret_key`",
            doc="Signs Flask's own cookie (the CSRF token). Set it, to the same value on every "
                "replica, in production."),
    Setting("BERTH_PROXY_SECRET", DATA, kind="secret",
            default=lambda settings: _persistent_secret(settings["BERTH_DATA_DIR"], "proxy_secret"),
            default_doc="generated into `<BERTH_DATA_DIR>/proxy_secret`",
            doc="nginx sends it on every request to the auth service and the web app; a request "
                "without it is refused. The same value on every replica and in nginx's rendered "
                "configuration."),
    Setting("BERTH_CATALOGUE", DATA, kind="file",
            default_doc="`berth run`: `deploy/demo-catalogue.yml`; unset elsewhere",
            doc="A YAML catalogue of tool templates, loaded by `berth run` when it starts and by the "
                "image's `migrate` command; `berth check` checks it."),
    Setting("BERTH_ADMIN_EMAIL", DATA, kind="email address", read_by=f"`berth run` and {ENTRYPOINT} (`migrate`)",
            default_doc="`admin@berth.localhost` with `berth run`; unset in the image",
            doc="The administrator account that `berth run` creates or resets at start, and the "
                "image's `migrate` command when `BERTH_ADMIN_PASSWORD` is set too."),
    Setting("BERTH_ADMIN_PASSWORD", DATA, kind="secret",
            read_by=f"`berth run` and {ENTRYPOINT} (`migrate`)",
            default_doc="`berth run`: generated into `<BERTH_DATA_DIR>/admin_password`",
            doc="That administrator's password. `berth run` prints it when it starts."),

    # -- Sign-in
    Setting("BERTH_LOCAL_LOGIN", SIGN_IN, choices=("on", "admins", "off"), default="on",
            doc="Password sign-in: `on` for every local account, `admins` for administrators only "
                "(everyone else uses single sign-on), `off`. `admins` and `off` need "
                "`BERTH_OIDC_ISSUER`."),
    Setting("BERTH_SESSION_COOKIE", SIGN_IN, default="berth_session",
            doc="Name of the platform session cookie, host-only on the main host (`__Host-<name>` "
                "with `https`); tool hosts get `<name>_tool` through the sign-in hand-off."),
    Setting("BERTH_SESSION_LIFETIME", SIGN_IN, parse=parse_int, default=12 * 3600, minimum=60,
            doc="Absolute lifetime of a sign-in, in seconds (default 12 hours)."),
    Setting("BERTH_SESSION_IDLE_LIFETIME", SIGN_IN, parse=parse_int, default=4 * 3600, minimum=0,
            doc="A sign-in unused this long ends (seconds, default 4 hours; `0`: no idle limit). Use "
                "is recorded at most once per `BERTH_ACTIVITY_INTERVAL`, so this must be at least "
                "twice that."),
    Setting("BERTH_SIGN_IN_ACCOUNT_FAILURES", SIGN_IN, parse=parse_int, default=5, minimum=1,
            doc="Failed password sign-ins for one email within `BERTH_SIGN_IN_WINDOW_SECONDS` after "
                "which that email must wait: 1 second, then twice as long after each further failure, "
                "up to `BERTH_SIGN_IN_MAX_DELAY_SECONDS`. Meanwhile the login page answers `429` with "
                "`Retry-After`. Emails with no account are counted alike; a successful sign-in clears "
                "the count."),
    Setting("BERTH_SIGN_IN_ADDRESS_FAILURES", SIGN_IN, parse=parse_int, default=20, minimum=1,
            doc="The same for one client address (as seen past `BERTH_TRUSTED_HOPS`), whatever the "
                "emails tried, so that one address cannot guess at many accounts."),
    Setting("BERTH_SIGN_IN_WINDOW_SECONDS", SIGN_IN, parse=parse_int, default=15 * 60, minimum=1,
            doc="How long failed sign-ins are counted for (seconds, default 15 minutes); the count "
                "starts afresh after it."),
    Setting("BERTH_SIGN_IN_MAX_DELAY_SECONDS", SIGN_IN, parse=parse_int, default=5 * 60, minimum=1,
            doc="The longest wait imposed after failed sign-ins (seconds, default 5 minutes)."),
    Setting("BERTH_OIDC_ISSUER", SIGN_IN, parse=parse_url,
            doc="Single sign-on over OpenID Connect: the provider's issuer URL; Berth reads "
                "`<issuer>/.well-known/openid-configuration`. Unset: local accounts only."),
    Setting("BERTH_OIDC_CLIENT_ID", SIGN_IN,
            doc="The confidential client registered for Berth at the provider; required with the "
                "issuer."),
    Setting("BERTH_OIDC_CLIENT_SECRET", SIGN_IN, kind="secret",
            doc="That client's secret."),
    Setting("BERTH_OIDC_SCOPES", SIGN_IN, default="openid email profile", kind="space-separated scopes",
            doc="Scopes Berth asks for; must include `openid`. Add the provider's groups scope if "
                "it has one."),
    Setting("BERTH_OIDC_GROUPS_CLAIM", SIGN_IN,
            doc="A claim (in the ID token or userinfo) listing the user's groups: at every sign-in "
                "the user's provider-given group memberships are set to it. Unset: groups are not "
                "synced."),
    Setting("BERTH_OIDC_PROVIDER_NAME", SIGN_IN, default="single sign-on",
            doc="The name on the sign-in button: *Sign in with …*."),
    Setting("BERTH_OIDC_TIMEOUT", SIGN_IN, parse=parse_int, default=10, minimum=1, maximum=120,
            doc="Seconds to wait for the provider's discovery, token and userinfo answers."),
    Setting("BERTH_TOKEN_MAX_DAYS", SIGN_IN, parse=parse_int, default=365, minimum=1, maximum=3650,
            doc="The longest lifetime a personal API token may be given, in days."),
    # -- Tokens, sessions and single sign-on: caps, guessing, linking
    Setting("BERTH_MAX_TOKENS_PER_USER", SIGN_IN, parse=parse_int, default=20, minimum=1, maximum=1000,
            doc="Most API tokens one user may hold at once (neither revoked nor expired). Creating "
                "another is refused with the reason; revoke one first."),
    Setting("BERTH_MAX_SESSIONS_PER_USER", SIGN_IN, parse=parse_int, default=10, minimum=1, maximum=1000,
            doc="Most live sign-ins one user may have. A new sign-in at the cap ends the user's "
                "oldest session, rather than refusing the sign-in."),
    Setting("BERTH_TOKEN_ADDRESS_FAILURES", SIGN_IN, parse=parse_int, default=20, minimum=1,
            doc="Requests with an unknown API token from one client address within "
                "`BERTH_SIGN_IN_WINDOW_SECONDS` after which that address must wait (1 second, "
                "doubling, up to `BERTH_SIGN_IN_MAX_DELAY_SECONDS`) before any token of its is looked "
                "at: meanwhile each answer is `401` saying so."),
    Setting("BERTH_OIDC_CALLBACK_FAILURES", SIGN_IN, parse=parse_int, default=20, minimum=1,
            doc="Failed single sign-on callbacks (a forged state, a refused code, an ID token that "
                "does not verify, a refused account) from one client address within "
                "`BERTH_SIGN_IN_WINDOW_SECONDS` after which that address must wait likewise: the "
                "callback answers `429` with `Retry-After`."),
    Setting("BERTH_OIDC_LINK_BY_EMAIL", SIGN_IN, parse=parse_boolean, default=False,
            doc="Whether a first single sign-on may take over an existing local account with the "
                "same email, when the provider says the email is verified (never an "
                "administrator's). Off: such a sign-in is refused, and the account's owner links "
                "single sign-on from the Account page while signed in with their password."),
    Setting("BERTH_OIDC_ADMIN_GROUP", SIGN_IN,
            doc="The group, in `BERTH_OIDC_GROUPS_CLAIM`, whose members are administrators: every "
                "single sign-on makes the user an administrator exactly when the claim lists it. "
                "Unset: single sign-on never changes who is an administrator."),

    # -- Tools
    Setting("BERTH_PORT_RANGE", TOOLS, parse=parse_port_range, default="20000-20999",
            doc="Ports handed to tools on the process backend (each listens on its own in its own "
                "network namespace) and on the docker backend with `BERTH_DOCKER_NETWORK=host`."),
    Setting("BERTH_TOOL_ISOLATION", TOOLS, choices=("namespaces", "single-user"), default="namespaces",
            doc="How process-backend tools are kept apart. `namespaces`: each runs as its owner's own "
                "unprivileged uid, in a network namespace of its own that reaches neither Berth nor "
                "other tools; the worker needs root. `single-user`: tools run as Berth's own user on "
                "loopback, which is safe for one person only, so a launch is refused while more than "
                "one user account is active ([docs/security.md](security.md))."),
    Setting("BERTH_TOOL_UIDS", TOOLS, parse=parse_uid_range, default="200000-299999",
            doc="The uids (and gids) tools run as: a user's tools run as the low end plus the user's "
                "id, a shared tool as the high end minus the template's id. No other account on the "
                "host may use them."),
    Setting("BERTH_TOOL_NETWORK", TOOLS, parse=parse_tool_network, default="10.213.0.0/16",
            doc="The IPv4 network whose /30s the process backend gives tools' namespaces (one veth "
                "pair each; nginx reaches a tool at its end). It must not be in use on the host: an "
                "address of it that no running tool holds is unreachable there, never sent on by the "
                "default route."),
    Setting("BERTH_TOOL_PYTHON", TOOLS, default="/usr/bin/python3", kind="path",
            doc="The interpreter `{python}` names in an isolated tool's command. Tools' users must be "
                "able to execute it: a virtualenv in a root-only folder will not do. `make run` "
                "builds `.venv-tools` on Debian's Python, with JupyterLab; `berth run` uses it when "
                "this is unset and it exists."),
    Setting("BERTH_HOMES_DIR", TOOLS, parse=parse_path, kind="folder",
            default=lambda settings: os.path.join(settings["BERTH_DATA_DIR"], "homes"),
            default_doc="`<BERTH_DATA_DIR>/homes`",
            doc="Where users' homes live on the process backend: one folder per user, 0700 and "
                "owned by the user's tool uid, which every tool of theirs works in. Every folder "
                "above it must be passable by other users (o+x)."),
    Setting("BERTH_TEAMS_DIR", TOOLS, parse=parse_path, kind="folder",
            default=lambda settings: os.path.join(settings["BERTH_DATA_DIR"], "teams"),
            default_doc="`<BERTH_DATA_DIR>/teams`",
            doc="Where team folders live on the process backend: one folder per group that has one "
                "(admin group page), mode 2770 and owned by the group's gid from `BERTH_TEAM_GIDS`, "
                "which its members' tools run with as a supplementary group."),
    Setting("BERTH_TEAM_GIDS", TOOLS, parse=parse_uid_range, default="300000-309999",
            doc="The gids of team folders: a group's is the low end plus the group's id. It must "
                "not overlap `BERTH_TOOL_UIDS`, and no other account or group on the host may use them."),
    Setting("BERTH_ACTIVITY_INTERVAL", TOOLS, parse=parse_int, default=60, minimum=1,
            doc="A running tool's last activity, and a sign-in's last use, is written at most this "
                "often (seconds), not on every request. The idle culler works from it."),
    Setting("BERTH_LEASE_SECONDS", TOOLS, parse=parse_int, default=10, minimum=3,
            doc="How long a launch stays with a worker that stopped renewing it (seconds). The "
                "worker renews its leases every third of this; once a dead worker's lease runs "
                "out, the next reconcile hands the launch to another worker."),
    Setting("BERTH_RECONCILE_SECONDS", TOOLS, parse=parse_int, default=5, minimum=1,
            doc="How often each worker reconciles (seconds): resumes launches whose worker died, "
                "notices tools that died, finishes stops and removes orphans. A dead worker's "
                "launches resume within `BERTH_LEASE_SECONDS` plus this."),
    Setting("BERTH_DEPLOYMENT", TOOLS, default=lambda settings: _default_deployment(settings["BERTH_DATA_DIR"]),
            default_doc="`berth-` and 8 hex digits of the data folder's path, kept in "
                        "`<BERTH_DATA_DIR>/deployment`; `berth` for a data folder that Berth used before "
                        "it kept that file",
            doc="Names this installation in the labels of everything it starts, so that two Berths "
                "on one host (or one engine, or one cluster) never adopt or remove each other's tools. "
                "The default differs per data folder, so two `berth run` on one machine keep apart; "
                "a data folder from before keeps `berth`, the label its tools were started with. Set "
                "it, to the same value in every process, when the processes do not share one data "
                "folder (the deploy files do)."),

    # -- Backends
    Setting("BERTH_BACKENDS", BACKENDS, parse=parse_list, default="process",
            choices=("process", "docker", "ecs"),
            doc="The spawner backends this installation runs; the reconciler watches each of them."),
    Setting("BERTH_DOCKER_URL", BACKENDS, kind="URL", default_doc="`DOCKER_HOST`, or the local socket",
            doc="Docker Engine API address for the docker backend."),
    Setting("BERTH_DOCKER_NETWORK", BACKENDS,
            doc="Unset (the default): each docker tool gets a bridge network of its own, internal "
                "unless its template allows egress, and nginx reaches it at its address there. A "
                "name: every tool and nginx's container share that network (docker-compose.yml), "
                "so tools can reach each other. `host`: host networking on ports from "
                "`BERTH_PORT_RANGE`, beside everything on the host (one person's laptop only)."),
    Setting("BERTH_DOCKER_PULL", BACKENDS, choices=("never", "missing", "always"), default="missing",
            doc="When to pull a tool's image: `never`, `missing` (only if not on the host), "
                "`always`. A missing image with `never` fails the launch at once, with the reason."),
    Setting("BERTH_ECS_CLUSTER", BACKENDS,
            doc="ECS (Fargate) backend: the cluster that runs the tools (name or ARN); required by "
                "the ecs backend."),
    Setting("BERTH_ECS_SUBNETS", BACKENDS, parse=parse_list, default="",
            doc="Subnet ids of every task's network interface (awsvpc); at least one. nginx "
                "reaches a task at its private IPv4 address."),
    Setting("BERTH_ECS_SECURITY_GROUPS", BACKENDS, parse=parse_list, default="",
            doc="Security-group ids of every task's network interface: let in nginx and the worker "
                "only, and let out nothing beyond the VPC's endpoints (`ToolsSecurityGroup` of "
                "`deploy/ecs/security-groups.json`)."),
    Setting("BERTH_ECS_EGRESS_SECURITY_GROUPS", BACKENDS, parse=parse_list, default="",
            doc="Security-group ids added for a tool whose template allows egress (`egress: true`): "
                "those that let it reach beyond the VPC (`ToolsEgressSecurityGroup`). Unset, such a "
                "tool gets only `BERTH_ECS_SECURITY_GROUPS`, like any other."),
    Setting("BERTH_ECS_ASSIGN_PUBLIC_IP", BACKENDS, parse=parse_boolean, default=False,
            doc="Give each task a public IP too: needed only in subnets without a NAT or VPC "
                "endpoints to pull images."),
    Setting("BERTH_ECS_REGION", BACKENDS, default_doc="boto3's own lookup (e.g. `AWS_REGION`)",
            doc="AWS region of the cluster."),
    Setting("BERTH_ECS_ENDPOINT_URL", BACKENDS, kind="URL",
            doc="Another ECS API endpoint; only for an emulator (the tests use moto)."),
    Setting("BERTH_ECS_EFS_FILE_SYSTEM", BACKENDS, kind="EFS file system id",
            doc="Homes for ECS tools: each user gets an access point of their own on this EFS file "
                "system (`fs-...`), at `/berth-homes/<user>` and with the uid their process tools run "
                "as, mounted at `/home/berth` (also `$HOME`) in every ECS tool of theirs. Unset: ECS "
                "tools have no home that outlives them. Setup: deploy/ecs/README.md."),
    Setting("BERTH_ECS_API_ATTEMPTS", BACKENDS, parse=parse_int, default=8, minimum=1, maximum=30,
            doc="Throttling, IAM and ECS catching up, and \"no Fargate capacity\" are retried, at "
                "most this many attempts per call; then the launch fails with AWS's last answer."),
    Setting("BERTH_ECS_RETRY_BASE_MS", BACKENDS, parse=parse_int, default=200, minimum=1,
            maximum=60000,
            doc="Those retries back off exponentially from this base, in milliseconds (at most 10 s "
                "apart)."),

    # -- Limits
    Setting("BERTH_MAX_TOOLS_PER_USER", LIMITS, parse=parse_int, default=5, minimum=0,
            doc="Most live tools (queued, starting, running or stopping) one user may have. A launch "
                "over it is refused: the starting page answers `429` with the reason, and no "
                "instance is created. `0`: no limit."),
    Setting("BERTH_MAX_TOOLS_TOTAL", LIMITS, parse=parse_int, default=0, minimum=0,
            doc="Most live tools in all, for everyone together; refused the same way. `0`: no limit."),

    # -- nginx
    Setting("BERTH_TOOL_KEEPALIVE", NGINX, parse=parse_boolean, default=True,
            doc="nginx keeps connections to tools alive, through one `upstream` block per port of "
                "`BERTH_PORT_RANGE` ([decision 0005](decisions/0005-tool-keepalive.md)), rendered "
                "where a tool's address follows from its port: process tools, isolated (at their "
                "port's /30 of `BERTH_TOOL_NETWORK`, [decision 0024](decisions/0024-keepalive-to-isolated-tools.md)) "
                "or single-user, and docker host networking. Off: a smaller configuration, and a "
                "new connection to the tool for every request."),
    Setting("BERTH_AUTH_CACHE_SECONDS", NGINX, parse=parse_int, default=1, minimum=0, maximum=60,
            doc="nginx reuses the auth answer for a *running* tool this long, keyed on the session "
                "token, `Authorization`, host and client address (`0`: never). Also the longest a "
                "signed-out or revoked session, token or share can still reach a running tool, and "
                "how long a stopped tool's address may answer Berth's \"has stopped\" page (503, `Retry-After: 1`) before the starting page shows. "
                "At `1`, an answer is reused only within the second of nginx's clock "
                "in which it was asked for, so the bound is 1 s on every nginx; above 1, nginx "
                "counts whole seconds and the bound is up to one second more "
                "([decision 0021](decisions/0021-one-second-auth-cache.md))."),
    # nginx's knobs, rendered into nginx/snippets/tuning.conf.j2 and logging.conf.j2.
    Setting("BERTH_NGINX_CLIENT_MAX_BODY_SIZE", NGINX, parse=parse_nginx_size, default="0",
            kind="nginx size",
            doc="Largest request body nginx lets through to a tool (`client_max_body_size`; `0`: no "
                "limit, tools handle their own data). Berth's own pages keep their small limits."),
    Setting("BERTH_NGINX_PROXY_CONNECT_TIMEOUT", NGINX, parse=parse_nginx_time, default="60s",
            kind="nginx time",
            doc="How long nginx waits to connect to a tool or to the web app (`proxy_connect_timeout`)."),
    Setting("BERTH_NGINX_PROXY_READ_TIMEOUT", NGINX, parse=parse_nginx_time, default="1h",
            kind="nginx time",
            doc="How long a tool may stay silent on an open request (`proxy_read_timeout`): long "
                "polls, WebSockets and slow downloads stay open this long without a byte."),
    Setting("BERTH_NGINX_PROXY_SEND_TIMEOUT", NGINX, parse=parse_nginx_time, default="1h",
            kind="nginx time",
            doc="How long nginx may wait for a tool to take the next part of a request "
                "(`proxy_send_timeout`)."),
    Setting("BERTH_NGINX_PROXY_BUFFER_SIZE", NGINX, parse=parse_nginx_size, kind="nginx size",
            default_doc="nginx's own (one memory page)",
            doc="Buffer for the head of a tool's answer (`proxy_buffer_size`): raise it for tools "
                "that send very large headers (nginx answers 502 `upstream sent too big header`)."),
    Setting("BERTH_NGINX_PROXY_BUFFERS", NGINX, parse=parse_nginx_buffers, kind="number and nginx size",
            default_doc="nginx's own (`8 4k` or `8 8k`)",
            doc="`proxy_buffers` for answers nginx buffers, as `8 16k`."),
    Setting("BERTH_NGINX_RESOLVER", NGINX, parse=parse_nginx_resolver, kind="DNS servers and options",
            doc="DNS servers nginx asks while it runs (`resolver`), as `10.96.0.10 valid=10s "
                "ipv6=off`: needed where upstream names must be looked up again while nginx runs, "
                "as on Kubernetes. Unset: names are resolved once, when nginx starts."),
    Setting("BERTH_NGINX_ACCESS_LOG", NGINX, parse=parse_nginx_log,
            kind="file, `syslog:server=…` or `off`",
            default_doc="`logs/access.log` in a standalone nginx.conf (`berth run`, the image); "
                        "included in your own `http` block: your `access_log`",
            doc="nginx's access log for Berth's hosts: a file (relative to nginx's prefix; the "
                "image links it to its standard output), `syslog:server=host`, or `off`. Each line "
                "has the user id, the instance id, the upstream's time and the request id that the "
                "auth service and web app log too ([docs/operations.md](operations.md#logs))."),
    Setting("BERTH_NGINX_ACCESS_LOG_FORMAT", NGINX, parse=parse_nginx_name,
            kind="nginx `log_format` name",
            default_doc="`berth`, or `berth_json` with `BERTH_LOG_FORMAT=json`",
            doc="The access log's format: `berth` (text), `berth_json`, or one of your own defined "
                "with `log_format` in a snippet of `BERTH_NGINX_INCLUDE_DIR/http.d`."),
    Setting("BERTH_NGINX_INCLUDE_DIR", NGINX, parse=parse_path, kind="folder",
            doc="Your own nginx configuration, kept out of the rendered file: `http.d/*.conf` is "
                "included at the `http` level (after Berth's maps, before its servers), "
                "`server.d/*.conf` inside each of Berth's servers (the main host and the tool "
                "hosts), both read when nginx starts or reloads. A snippet may add what Berth "
                "does not set at that level; for what it does set, use the setting above (nginx "
                "refuses a directive set twice in one block, and `nginx -t` says which) "
                "([docs/operations.md](operations.md#tuning-nginx))."),
    # The door: what nginx allows one client address before any sign-in, and TLS.
    Setting("BERTH_DOOR_RATE", NGINX, parse=parse_int, default=10, minimum=1, maximum=10000,
            doc="Requests per second that one client address may make to the endpoints that need no "
                "sign-in: the sign-in page and form, single sign-on's start and callback, the sign-in "
                "hand-off, sign-out, `/healthz` and `/metrics` (static files are not counted). nginx "
                "answers 429 past it. The address is the one `BERTH_TRUSTED_HOPS` and "
                "`BERTH_TRUSTED_PROXIES` decide, so clients behind a load balancer are counted "
                "apart; raise it when many people share one address (an office behind one NAT)."),
    Setting("BERTH_DOOR_BURST", NGINX, parse=parse_int, default=60, minimum=0, maximum=100000,
            doc="Requests above `BERTH_DOOR_RATE` that one address may make at once before nginx "
                "answers 429: a sign-in with its hand-offs to a dozen open tabs fits easily."),
    Setting("BERTH_DOOR_CONNECTIONS", NGINX, parse=parse_int, default=16, minimum=1, maximum=100000,
            doc="Requests that one client address may have in progress at once on those endpoints "
                "(a client that trickles its body holds one until `client_body_timeout`); nginx "
                "answers 429 past it."),
    Setting("BERTH_DOOR_EXEMPT", NGINX, parse=parse_networks, default="",
            doc="Client addresses or networks (CIDRs, comma-separated) that those limits do not "
                "count: a health checker or monitoring that signs in often from one address. The "
                "address is the one the limits count by (past `BERTH_TRUSTED_HOPS`). Empty: none."),
    Setting("BERTH_TLS_CERTIFICATE", NGINX, parse=parse_path, kind="file",
            doc="PEM certificate chain (the server's certificate first) that nginx serves HTTPS "
                "with, on `BERTH_HTTP_PORT`. It must cover `BERTH_DOMAIN`, `*.BERTH_DOMAIN` and, "
                "when set, `*.BERTH_TOOLS_DOMAIN` ([operations](operations.md#tls-and-dns)). Needs "
                "`BERTH_TLS_KEY` and `BERTH_SCHEME=https`. Unset: nginx speaks plain HTTP (TLS "
                "ends in front of it, or nowhere)."),
    Setting("BERTH_TLS_KEY", NGINX, parse=parse_path, kind="file",
            doc="PEM private key of `BERTH_TLS_CERTIFICATE`."),
    Setting("BERTH_HTTP_REDIRECT_PORT", NGINX, parse=parse_int, default=80, minimum=0, maximum=65535,
            kind="TCP port, or `0`",
            doc="With `BERTH_TLS_CERTIFICATE`, nginx also listens on this port for plain HTTP and "
                "redirects every request on Berth's hosts to HTTPS (`0`: no plain listener). Where "
                "nginx runs unprivileged (the image), pick a port above 1023 and publish it as 80."),
    Setting("BERTH_HSTS_SECONDS", NGINX, parse=parse_int, default=0, minimum=0, maximum=2 * 365 * 86400,
            doc="`Strict-Transport-Security` max-age, sent with every answer over HTTPS (never over "
                "plain HTTP), covering the tool hosts too (`includeSubDomains`). `0`: not sent. "
                "Start small (300) and raise it (31536000) once HTTPS works everywhere: browsers "
                "refuse plain HTTP to the domain for that long."),
    Setting("BERTH_NGINX_USER", NGINX, read_by="`berth run`", default="www-data", kind="user name",
            doc="When `berth run` starts nginx as root, the user its worker processes run as: they "
                "handle every request and never need root."),
    Setting("BERTH_NGINX_LISTEN", NGINX, read_by=f"{ENTRYPOINT} (`nginx`)", default="8080",
            kind="nginx `listen` address",
            doc="Where the image's nginx listens (passed to `berth nginx-conf --listen`)."),
    Setting("BERTH_NGINX_PREFIX", NGINX, read_by=f"{ENTRYPOINT} (`nginx`)", default="/tmp/nginx",
            kind="folder",
            doc="nginx's prefix in the image: its configuration, temporary files and logs."),
    Setting("BERTH_NGINX_TEMPLATE", NGINX, read_by=f"{ENTRYPOINT} (`nginx`)", kind="file",
            doc="An nginx.conf rendered beforehand (Kubernetes keeps it in a ConfigMap), with "
                "`${BERTH_PROXY_SECRET}` standing for the secret, which comes from the environment. "
                "Unset: the entrypoint renders the configuration with `berth nginx-conf`."),
    Setting("BERTH_WEB_SERVER", NGINX, read_by=f"{ENTRYPOINT} (`nginx`)", default="web:8102",
            kind="host:port",
            doc="The web app, as nginx in its own container reaches it (resolved when nginx starts)."),

    # -- Metrics
    Setting("BERTH_METRICS_TOKEN", METRICS, parse=parse_secret, minimum=16,
            doc="`GET /metrics` (web, auth and worker) answers a scraper that sends "
                "`Authorization: Bearer <this>`. With neither this nor `BERTH_METRICS_NETWORKS`, "
                "`/metrics` answers 404."),
    Setting("BERTH_METRICS_NETWORKS", METRICS, parse=parse_networks, default="",
            doc="Clients in these networks may read `/metrics` without the token: through nginx, "
                "the client address as seen past `BERTH_TRUSTED_HOPS`; scraped directly at a "
                "process's port, the TCP peer."),
    Setting("BERTH_METRICS_DIR", METRICS, parse=parse_path, kind="folder",
            default=lambda settings: os.path.join(settings["BERTH_DATA_DIR"], "metrics"),
            default_doc="`<BERTH_DATA_DIR>/metrics` (`/tmp/berth-metrics` in the image)",
            doc="Where each process writes its counters, for `/metrics` to sum (prometheus_client's "
                "multiprocess mode, [decision 0009](decisions/0009-metrics.md)). Shared by the "
                "processes of one machine or container; emptied when the stack or container starts."),
    _port("BERTH_WORKER_METRICS_PORT", METRICS,
          doc="The worker serves its own `GET /metrics` on this port, behind the same token or "
              "networks; unset: none. Set it in containers, where the worker's counters are in a "
              "folder no other process reads (the deploy files use `9102`); `berth run` needs none."),
    Setting("BERTH_WORKER_METRICS_HOST", METRICS, default="127.0.0.1", kind="IP address",
            doc="Address the worker's metrics server listens on; `0.0.0.0` in containers, so that "
                "Prometheus can reach it."),

    # -- Processes
    Setting("BERTH_GUNICORN_WORKERS", PROCESSES, parse=parse_int, default=2, minimum=1,
            read_by=GUNICORN,
            doc="gunicorn worker processes for the auth service with `BERTH_AUTH_SERVER=gunicorn`."),
    Setting("BERTH_GUNICORN_THREADS", PROCESSES, parse=parse_int, default=8, minimum=1,
            read_by=GUNICORN,
            doc="Threads per gunicorn worker process (gthread workers, which keep nginx's "
                "connections alive)."),
    Setting("BERTH_LOG_LEVEL", PROCESSES, parse=parse_lowercase, default="info",
            choices=("debug", "info", "warning", "error", "critical"), read_by=GUNICORN,
            doc="gunicorn's log level."),
    Setting("BERTH_LOG_FORMAT", PROCESSES, choices=("text", "json"), default="text",
            doc="Log lines of every Berth process (auth, web, worker, `berth run`) and nginx's "
                "access log: `text`, or `json`, one object per line with `time`, `level`, "
                "`process`, `logger`, `message` and, during a request, `request_id`."),
    Setting("BERTH_AUTH_SERVER", PROCESSES, read_by=f"`berth run` and {ENTRYPOINT}",
            default_doc="`granian` (`auth`); `auth:8101` (`nginx`)",
            kind="`granian` or `gunicorn`; host:port",
            doc="Two uses, by the process it is given to. To the auth service (`auth` in the image, "
                "and `berth run`): the HTTP server that runs it, `granian` or `gunicorn` "
                "([decision 0008](decisions/0008-auth-server.md)). To nginx in its own container "
                "(`nginx`): the auth service's `host:port`, resolved when nginx starts."),
    Setting("BERTH_AUTH_WORKERS", PROCESSES, parse=parse_int, default=2, minimum=1,
            read_by=f"`berth run` and {ENTRYPOINT} (`auth`)",
            doc="granian worker processes for the auth service."),
    Setting("BERTH_AUTH_THREADS", PROCESSES, parse=parse_int, default=4, minimum=1,
            read_by=f"`berth run` and {ENTRYPOINT} (`auth`)",
            doc="granian's blocking threads per auth worker process."),
    Setting("BERTH_WEB_WORKERS", PROCESSES, parse=parse_int, default=1, minimum=1,
            read_by=f"`berth run` and {ENTRYPOINT} (`web`)",
            doc="granian worker processes for the web app. It answers pages, the API and the "
                "lifecycle pages, not the proxied requests (the auth service does), so one process "
                "of `BERTH_WEB_THREADS` threads serves most deployments in about 75 MB less than two."),
    Setting("BERTH_WEB_THREADS", PROCESSES, parse=parse_int, default=8, minimum=1,
            read_by=f"`berth run` and {ENTRYPOINT} (`web`)",
            doc="granian's blocking threads per web worker process."),
    Setting("BERTH_SERVICE_USER", PROCESSES, read_by="`berth run`", default="berth", kind="user name",
            doc="When `berth run` runs as root, the auth service and the web app run as this user, "
                "never as root (created as a system user when missing). Only the worker keeps root, "
                "to give each tool a user and a network of its own. It must be able to run Berth's "
                "Python: `make run` builds `.venv` on `/usr/bin/python3` for this reason."),
    Setting("BERTH_WORKER_THREADS", PROCESSES, parse=parse_int, default=4, minimum=1,
            read_by=f"{ENTRYPOINT} (`worker`)",
            doc="Threads of the worker (`huey_consumer -w`): how many launch and stop steps one "
                "worker container runs at a time. `berth run` runs 4."),

    # -- Docker Compose
    Setting("BERTH_IMAGE", COMPOSE, read_by=DOCKER_COMPOSE, default="berth:latest", kind="image",
            doc="Berth's image, built from the Dockerfile by `docker compose up --build`."),
    Setting("BERTH_BASE_IMAGE", COMPOSE, read_by=DOCKER_COMPOSE, default="python:3.11-slim-bookworm",
            kind="image",
            doc="The Python image Berth's image is built on (`deploy/local-images/build.sh` makes "
                "one for an engine that cannot reach a registry)."),
    Setting("BERTH_POSTGRES_IMAGE", COMPOSE, read_by=DOCKER_COMPOSE, default="postgres:15", kind="image",
            doc="PostgreSQL's image."),
    Setting("BERTH_REDIS_IMAGE", COMPOSE, read_by=DOCKER_COMPOSE, default="redis:7", kind="image",
            doc="Redis' image."),
    Setting("BERTH_POSTGRES_PASSWORD", COMPOSE, read_by=DOCKER_COMPOSE, default="berth", kind="secret",
            doc="Password of PostgreSQL's `berth` user, in the database URL Berth's containers get."),
    Setting("BERTH_DOCKER_GID", COMPOSE, read_by=DOCKER_COMPOSE, kind="group id",
            default_doc="required: `stat -c %g /var/run/docker.sock`",
            doc="Group that owns the Docker socket; the worker runs with it, to start and stop tools."),
    Setting("BERTH_DOCKER_SOCKET", COMPOSE, read_by=DOCKER_COMPOSE, default="/var/run/docker.sock",
            kind="file",
            doc="The Docker socket mounted into the worker, and only the worker."),
)

GROUPS = (ADDRESSES, DATA, SIGN_IN, TOOLS, BACKENDS, LIMITS, NGINX, METRICS, PROCESSES, COMPOSE)
# What the reference says before a group's table, where the table alone would not be clear.
GROUP_INTROS = {
    COMPOSE: "For docker-compose.yml: `docker compose` fills these in from the shell it runs in; "
             "Berth's own processes never read them.",
}
_BY_NAME = {setting.name: setting for setting in SETTINGS}
# The deployment label is read before the rest: a new data folder is told from a former one by
# the files that other defaults (the secrets) create in it.
_READING_ORDER = ("BERTH_DATA_DIR", "BERTH_DEPLOYMENT") + tuple(
    setting.name for setting in SETTINGS if setting.name not in ("BERTH_DATA_DIR", "BERTH_DEPLOYMENT"))


class _Reading:
    """The settings of one environment, each parsed on first use, so that a derived default
    (the database under BERTH_DATA_DIR) reads the setting it derives from."""

    def __init__(self, environ):
        self.environ = environ
        self.values = {}

    def __getitem__(self, name):
        if name not in self.values:
            self.values[name] = _BY_NAME[name].read(self.environ, self)
        return self.values[name]


def read_setting(name, environ=os.environ):
    """One setting's value, by its definition: for what reads a few settings without an app
    (deploy/gunicorn.conf.py, the metrics folder)."""
    return _Reading(environ)[name]


def load_settings(environ=os.environ):
    """Return the Flask config keys that BERTH_* variables set."""
    reading = _Reading(environ)
    settings = {_BY_NAME[name].config_key: reading[name] for name in _READING_ORDER if _BY_NAME[name].config_key}
    _check_sign_in(settings)
    _check_tools_domain(settings)
    _check_tls(settings)
    return settings


def sqlite_folder(data_dir):
    """The folder of the SQLite database and queue: a folder of their own, which the auth service
    and the web app may write (SQLite writes its journal beside the database), inside a data
    directory they may not."""
    return os.path.join(data_dir, "database")


def load_settings_or_exit(environ=os.environ):
    """load_settings for a process that serves or works (web, auth, worker, `berth`): a bad
    setting ends it with one line naming the setting, and no traceback."""
    try:
        return load_settings(environ)
    except SettingError as error:
        raise SystemExit(f"Error: {error}") from None


def setting_problems(environ=os.environ):
    """Every setting that cannot be used, as load_settings would name it, and a data folder this
    process cannot write in; [] when all is well. For `berth check`."""
    reading = _Reading(environ)
    problems = []
    for name in _READING_ORDER:
        try:
            reading[name]
        except SettingError as error:  # a setting that others derive from fails again with them
            problems += [str(error)] if str(error) not in problems else []
    if not problems:
        try:
            check_data_dir(reading["BERTH_DATA_DIR"])
            load_settings(environ)  # the settings that must agree with each other
        except SettingError as error:
            problems.append(str(error))
    return problems


def metrics_dir(environ=os.environ):
    """BERTH_METRICS_DIR, or <BERTH_DATA_DIR>/metrics."""
    return read_setting("BERTH_METRICS_DIR", environ)


def _check_tools_domain(settings):
    domain, tools = settings["BERTH_DOMAIN"], settings["BERTH_TOOLS_DOMAIN"]
    if tools and tools != domain and domain.endswith("." + tools):
        raise SettingError(f"BERTH_DOMAIN={domain!r} must not lie under BERTH_TOOLS_DOMAIN={tools!r}: the "
                           "main host would read as a tool's address")


def _check_tls(settings):
    certificate, key = settings["BERTH_TLS_CERTIFICATE"], settings["BERTH_TLS_KEY"]
    if bool(certificate) != bool(key):
        raise SettingError("BERTH_TLS_CERTIFICATE and BERTH_TLS_KEY go together: set both, or neither")
    if certificate and settings["BERTH_SCHEME"] != "https":
        raise SettingError("BERTH_TLS_CERTIFICATE is set, so BERTH_SCHEME must be https: every address "
                           "Berth writes (sign-in, hand-off, cookies) would otherwise say http")
    if certificate and settings["BERTH_HTTP_REDIRECT_PORT"] == settings["BERTH_HTTP_PORT"]:
        raise SettingError(f"BERTH_HTTP_REDIRECT_PORT={settings['BERTH_HTTP_REDIRECT_PORT']} is "
                           "BERTH_HTTP_PORT, where nginx serves HTTPS: pick another port, or 0")


def _check_sign_in(settings):
    """Settings that only make sense together: someone must be able to sign in."""
    if settings["BERTH_OIDC_ISSUER"]:
        if not settings["BERTH_OIDC_CLIENT_ID"]:
            raise SettingError("BERTH_OIDC_ISSUER is set, so BERTH_OIDC_CLIENT_ID is required too")
        if "openid" not in settings["BERTH_OIDC_SCOPES"].split():
            raise SettingError(f"BERTH_OIDC_SCOPES={settings['BERTH_OIDC_SCOPES']!r} must include openid")
        if settings["BERTH_OIDC_ADMIN_GROUP"] and not settings["BERTH_OIDC_GROUPS_CLAIM"]:
            raise SettingError("BERTH_OIDC_ADMIN_GROUP needs BERTH_OIDC_GROUPS_CLAIM: the admin group is "
                               "read from the groups claim")
    elif settings["BERTH_LOCAL_LOGIN"] != "on":
        raise SettingError(f"BERTH_LOCAL_LOGIN={settings['BERTH_LOCAL_LOGIN']} needs single sign-on: "
                           "set BERTH_OIDC_ISSUER, or nobody could sign in")
    idle, interval = settings["BERTH_SESSION_IDLE_LIFETIME"], settings["BERTH_ACTIVITY_INTERVAL"]
    if idle and idle < 2 * interval:
        raise SettingError(f"BERTH_SESSION_IDLE_LIFETIME={idle} must be at least twice "
                           f"BERTH_ACTIVITY_INTERVAL ({interval}): sign-ins are marked as used only "
                           "that often")


# -- generated secrets -----------------------------------------------------------------------

def _persistent_secret(data_dir, filename):
    """A random secret kept in the data directory, for the embedded default only.

    Production sets BERTH_SECRET_KEY and BERTH_PROXY_SECRET, so that replicas share them.
    """
    return _persistent_value(data_dir, filename, lambda: secrets.token_urlsafe(32))


# Files only a data folder that Berth has run from holds (the database, the queue, the secrets).
_FORMER_INSTALLATION_FILES = ("berth.db", "queue.db", "secret_key", "proxy_secret")
FORMER_DEFAULT_DEPLOYMENT = "berth"


def _default_deployment(data_dir):
    """The label of a data folder's tools, kept in it: its tools carry the label they were
    started with, so it never changes once chosen, even if the folder moves."""
    def choose():
        if any((Path(data_dir) / name).exists() for name in _FORMER_INSTALLATION_FILES):
            return FORMER_DEFAULT_DEPLOYMENT  # tools started before the label was per folder
        digest = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()
        return f"berth-{digest[:8]}"

    return _persistent_value(data_dir, "deployment", choose)


def _persistent_value(data_dir, filename, make):
    """The value kept in data_dir/filename, or make()'s, written there first."""
    path = Path(data_dir) / filename
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    check_data_dir(data_dir)
    value = make()
    # Written in full under a private name (mkstemp: mode 0600), then linked into place.
    # link() fails when the name exists, so when two processes race at first start, both end
    # up with the winner's value, and no process ever reads a file that is still empty.
    fd, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{filename}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        try:
            os.link(draft, path)
        except FileExistsError:
            return _read_secret(path)
    finally:
        os.unlink(draft)
    return value


def _read_secret(path):
    try:
        value = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingError(f"{path}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    if not value:
        # An empty proxy secret would let requests that bypass nginx through.
        raise SettingError(f"{path} is empty: delete it and Berth will generate a new one")
    return value


# -- the reference: docs/configuration.md ----------------------------------------------------

REFERENCE_COMMAND = "berth settings-doc > docs/configuration.md"


def _kind(setting):
    """The type column: what a value must look like."""
    choices = ", ".join(f"`{choice}`" for choice in setting.choices or ())
    if setting.kind:
        return f"{setting.kind}: {choices}" if choices else setting.kind
    if setting.parse is parse_int:
        low, high = setting.minimum, setting.maximum
        if low is not None and high is not None:
            return f"whole number, {low}–{high}"
        if low is not None:
            return f"whole number, at least {low}"
        return "whole number"
    if setting.parse is parse_list:
        return f"comma-separated list of {choices}" if choices else "comma-separated list"
    if setting.parse is parse_secret:
        return f"secret, at least {setting.minimum} characters"
    if choices:
        return f"one of {choices}"
    return {parse_boolean: "`true` or `false`", parse_port_range: "port range `low-high`, 1024–65535",
            parse_uid_range: "uid range `low-high`", parse_tool_network: "IPv4 network, /28 or larger",
            parse_networks: "comma-separated CIDRs", parse_url: "http(s) URL",
            parse_path: "folder"}.get(setting.parse, "text")


def _default(setting):
    if setting.default_doc:
        return setting.default_doc
    default = setting.default
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    return f"`{default}`"


def _cell(text):
    return text.replace("|", "\\|")


def reference():
    """docs/configuration.md: the settings, group by group, as Markdown."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from berth/settings.py (SETTINGS) by `{REFERENCE_COMMAND}`: edit the "
        "definition there, not this file. -->",
        "",
        "Every setting is an environment variable, read once when a process starts. A bad value "
        "stops the process with a message naming the variable and the value; empty means unset.",
        "",
        "Most settings are read by every Berth process (auth service, web app, worker and the "
        "`berth` command); the few read by one program only say which. The templates in "
        "`deploy/ecs/` and `deploy/kubernetes/` have placeholders of their own, described in "
        "their READMEs.",
        "",
    ]
    lines += [f"- [{group}](#{group.lower().replace(' ', '-')})" for group in GROUPS]
    for group in GROUPS:
        lines += ["", f"## {group}", ""]
        if group in GROUP_INTROS:
            lines += [GROUP_INTROS[group], ""]
        lines += ["| variable | type | default | meaning |", "|---|---|---|---|"]
        for setting in SETTINGS:
            if setting.group != group:
                continue
            meaning = setting.doc + (f" Read by {setting.read_by} only." if setting.read_by else "")
            lines.append(f"| `{setting.name}` | {_cell(_kind(setting))} | {_cell(_default(setting))} "
                         f"| {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")

"""Settings, read from BERTH_* environment variables through typed helpers.

Every setting is documented next to its default here and in the README's configuration
reference. A bad value stops the process with a message naming the variable, rather than
being guessed at.
"""
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit


class SettingError(ValueError):
    """A BERTH_* variable holds a value that cannot be used."""


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
    if value is None:
        return default
    if choices and value not in choices:
        raise SettingError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def parse_list(name, default, environ=os.environ, choices=None):
    value = _raw(name, environ) or default
    items = [item.strip() for item in value.split(",") if item.strip()]
    for item in items:
        if choices and item not in choices:
            raise SettingError(f"{name}: {item!r} is not one of {', '.join(choices)}")
    return tuple(items)


def _persistent_secret(data_dir, filename):
    """A random secret kept in the data directory, for the embedded default only.

    Production sets BERTH_SECRET_KEY and BERTH_PROXY_SECRET, so that replicas share them.
    """
    path = Path(data_dir) / filename
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
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
    value = path.read_text().strip()
    if not value:
        # An empty proxy secret would let requests that bypass nginx through.
        raise SettingError(f"{path} is empty: delete it and Berth will generate a new secret")
    return value


def load_settings(environ=os.environ):
    """Return the Flask config keys that BERTH_* variables set."""
    data_dir = os.path.abspath(parse_string("BERTH_DATA_DIR", "var", environ))
    scheme = parse_string("BERTH_SCHEME", "http", environ, choices=("http", "https"))
    settings = {
        # Where the SQLite database, the Huey queue file, tool logs and working folders live.
        "BERTH_DATA_DIR": data_dir,
        # Parent domain. The main host is this name; tools live at <slug>-<user>.<domain>.
        "BERTH_DOMAIN": parse_string("BERTH_DOMAIN", "berth.localhost", environ).lower(),
        # Scheme and port that browsers use to reach nginx (the public address).
        "BERTH_SCHEME": scheme,
        "BERTH_HTTP_PORT": parse_int("BERTH_HTTP_PORT", 8080, environ, 1, 65535),
        # Loopback ports of the auth service and the web app behind nginx.
        "BERTH_AUTH_PORT": parse_int("BERTH_AUTH_PORT", 8101, environ, 1, 65535),
        "BERTH_WEB_PORT": parse_int("BERTH_WEB_PORT", 8102, environ, 1, 65535),
        # SQLAlchemy URL. SQLite by default; postgresql+psycopg://... in production.
        "SQLALCHEMY_DATABASE_URI": parse_string(
            "BERTH_DATABASE_URL", f"sqlite:///{data_dir}/berth.db", environ
        ),
        # Huey uses Redis when this is set, and a SQLite file in the data directory otherwise.
        "BERTH_REDIS_URL": parse_string("BERTH_REDIS_URL", None, environ),
        # Signs Flask's own cookies (CSRF). Generated into the data directory when unset.
        "SECRET_KEY": parse_string("BERTH_SECRET_KEY", None, environ)
        or _persistent_secret(data_dir, "secret_key"),
        # nginx sends this on every request to auth and web; anything without it is refused.
        "BERTH_PROXY_SECRET": parse_string("BERTH_PROXY_SECRET", None, environ)
        or _persistent_secret(data_dir, "proxy_secret"),
        # Name of the platform session cookie, scoped to the parent domain.
        "BERTH_SESSION_COOKIE": parse_string("BERTH_SESSION_COOKIE", "berth_session", environ),
        # Absolute lifetime of a sign-in, in seconds (default 12 hours).
        "BERTH_SESSION_LIFETIME": parse_int("BERTH_SESSION_LIFETIME", 12 * 3600, environ, 60),
        # A sign-in unused for this long ends (seconds, default 4 hours; 0: no idle limit).
        "BERTH_SESSION_IDLE_LIFETIME": parse_int("BERTH_SESSION_IDLE_LIFETIME", 4 * 3600, environ, 0),
        # Password sign-in: "on" for every local account, "admins" for administrators only, "off".
        "BERTH_LOCAL_LOGIN": parse_string("BERTH_LOCAL_LOGIN", "on", environ,
                                          choices=("on", "admins", "off")),
        # Single sign-on over OpenID Connect; unset issuer means local accounts only.
        "BERTH_OIDC_ISSUER": parse_url("BERTH_OIDC_ISSUER", None, environ),
        "BERTH_OIDC_CLIENT_ID": parse_string("BERTH_OIDC_CLIENT_ID", None, environ),
        "BERTH_OIDC_CLIENT_SECRET": parse_string("BERTH_OIDC_CLIENT_SECRET", None, environ),
        "BERTH_OIDC_SCOPES": parse_string("BERTH_OIDC_SCOPES", "openid email profile", environ),
        # A claim (ID token or userinfo) listing the user's groups; unset: groups are not synced.
        "BERTH_OIDC_GROUPS_CLAIM": parse_string("BERTH_OIDC_GROUPS_CLAIM", None, environ),
        # The name on the sign-in button.
        "BERTH_OIDC_PROVIDER_NAME": parse_string("BERTH_OIDC_PROVIDER_NAME", "single sign-on", environ),
        # How long to wait for the provider's discovery, token and userinfo answers (seconds).
        "BERTH_OIDC_TIMEOUT": parse_int("BERTH_OIDC_TIMEOUT", 10, environ, 1, 120),
        # The longest lifetime a personal API token may be given, in days.
        "BERTH_TOKEN_MAX_DAYS": parse_int("BERTH_TOKEN_MAX_DAYS", 365, environ, 1, 3650),
        # Loopback ports handed to tools on the process backend.
        "BERTH_PORT_RANGE": parse_port_range("BERTH_PORT_RANGE", "20000-20999", environ),
        # How process-backend tools are kept apart: "namespaces" (each runs as its owner's own
        # uid, in a network namespace of its own; needs root) or "single-user" (as Berth's own
        # user on loopback: safe for one person only, so a second active user cannot launch).
        "BERTH_TOOL_ISOLATION": parse_string("BERTH_TOOL_ISOLATION", "namespaces", environ,
                                             choices=("namespaces", "single-user")),
        # The uids (and gids) tools run as: users count up from the low end, shared tools down
        # from the high end. None of them may be a uid that anything else on the host uses.
        "BERTH_TOOL_UIDS": parse_port_range("BERTH_TOOL_UIDS", "200000-299999", environ,
                                            lowest=1000, highest=2**31 - 1),
        # The IPv4 network that tools' namespaces take /30s from; it must not be in use on the host.
        "BERTH_TOOL_NETWORK": parse_tool_network("BERTH_TOOL_NETWORK", "10.213.0.0/16", environ),
        # The interpreter {python} names in an isolated tool's command: one that tool users can
        # execute (a venv under a root-only folder is not).
        "BERTH_TOOL_PYTHON": parse_string("BERTH_TOOL_PYTHON", "/usr/bin/python3", environ),
        # Where users' homes live (default: homes/ in the data directory).
        "BERTH_HOMES_DIR": parse_string("BERTH_HOMES_DIR", None, environ),
        # A tool's last activity is written at most this often (seconds), not on every request.
        "BERTH_ACTIVITY_INTERVAL": parse_int("BERTH_ACTIVITY_INTERVAL", 60, environ, 1),
        # How long a worker holds a launch before another worker may take it over (seconds).
        "BERTH_LEASE_SECONDS": parse_int("BERTH_LEASE_SECONDS", 30, environ, 2),
        # YAML catalogue loaded by `berth run` at start, if set.
        "BERTH_CATALOGUE": parse_string("BERTH_CATALOGUE", None, environ),
        # Names this installation in the labels of what it starts, so that two Berths on one
        # host (or one engine) never adopt or remove each other's tools.
        "BERTH_DEPLOYMENT": parse_string("BERTH_DEPLOYMENT", "berth", environ),
        # nginx keeps connections to loopback tools alive through one upstream block per port of
        # BERTH_PORT_RANGE. Turn off to render a smaller configuration.
        "BERTH_TOOL_KEEPALIVE": parse_boolean("BERTH_TOOL_KEEPALIVE", True, environ),
        # nginx caches the auth answer for a running tool this many seconds (0: never). This is
        # also how long a signed-out or revoked session can still reach a running tool.
        "BERTH_AUTH_CACHE_SECONDS": parse_int("BERTH_AUTH_CACHE_SECONDS", 0, environ, 0, 60),
        # The spawner backends this installation runs; the reconciler watches each of them.
        "BERTH_BACKENDS": parse_list("BERTH_BACKENDS", "process", environ,
                                     choices=("process", "docker", "ecs")),
        # Docker Engine API address (default: DOCKER_HOST, or the local socket).
        "BERTH_DOCKER_URL": parse_string("BERTH_DOCKER_URL", None, environ),
        # A named Docker network for tools; unset means host networking on allocated ports.
        "BERTH_DOCKER_NETWORK": parse_string("BERTH_DOCKER_NETWORK", None, environ),
        # When to pull a tool's image: never, missing (only if not on the host), always.
        "BERTH_DOCKER_PULL": parse_string("BERTH_DOCKER_PULL", "missing", environ,
                                          choices=("never", "missing", "always")),
        # ECS (Fargate) backend. The cluster tools run in (name or ARN), and the awsvpc network
        # every task gets: subnets and security groups (comma-separated ids), and whether the
        # task's network interface gets a public IP (needed only without a NAT or VPC endpoints
        # to pull images). nginx reaches a task at its private IPv4 address.
        "BERTH_ECS_CLUSTER": parse_string("BERTH_ECS_CLUSTER", None, environ),
        "BERTH_ECS_SUBNETS": parse_list("BERTH_ECS_SUBNETS", "", environ),
        "BERTH_ECS_SECURITY_GROUPS": parse_list("BERTH_ECS_SECURITY_GROUPS", "", environ),
        "BERTH_ECS_ASSIGN_PUBLIC_IP": parse_boolean("BERTH_ECS_ASSIGN_PUBLIC_IP", False, environ),
        # AWS region of the cluster (default: boto3's own lookup, e.g. AWS_REGION).
        "BERTH_ECS_REGION": parse_string("BERTH_ECS_REGION", None, environ),
        # Another ECS API endpoint; only for an emulator such as moto in the tests.
        "BERTH_ECS_ENDPOINT_URL": parse_string("BERTH_ECS_ENDPOINT_URL", None, environ),
        # Throttling, IAM/ECS eventual-consistency errors and no Fargate capacity are retried
        # with exponential backoff from this base (milliseconds), at most this many times per
        # call; then the launch fails with the last answer AWS gave.
        "BERTH_ECS_API_ATTEMPTS": parse_int("BERTH_ECS_API_ATTEMPTS", 8, environ, 1, 30),
        "BERTH_ECS_RETRY_BASE_MS": parse_int("BERTH_ECS_RETRY_BASE_MS", 200, environ, 1, 60000),
        # Most live tools one user may have, and in all; 0 means no limit.
        "BERTH_MAX_TOOLS_PER_USER": parse_int("BERTH_MAX_TOOLS_PER_USER", 5, environ, 0),
        "BERTH_MAX_TOOLS_TOTAL": parse_int("BERTH_MAX_TOOLS_TOTAL", 0, environ, 0),
        # Number of trusted proxies in front of nginx (for X-Forwarded-For and -Proto).
        "BERTH_TRUSTED_HOPS": parse_int("BERTH_TRUSTED_HOPS", 0, environ, 0, 5),
        # Where those proxies are (comma-separated CIDRs). When set, a hop counts as trusted
        # only from these addresses, so that a client reaching nginx directly cannot pose as
        # a proxy. Used to find the client address that IP allowlists check.
        "BERTH_TRUSTED_PROXIES": parse_networks("BERTH_TRUSTED_PROXIES", environ),
        # GET /metrics (Prometheus) answers a scraper that sends `Authorization: Bearer <this>`,
        # or one whose address lies in BERTH_METRICS_NETWORKS (comma-separated CIDRs). With
        # neither set, /metrics answers 404.
        "BERTH_METRICS_TOKEN": parse_secret("BERTH_METRICS_TOKEN", environ),
        "BERTH_METRICS_NETWORKS": parse_networks("BERTH_METRICS_NETWORKS", environ),
        # Where each process writes its counters, for /metrics to sum (prometheus_client's
        # multiprocess mode). Shared by the processes of one machine or container; emptied when
        # the stack starts.
        "BERTH_METRICS_DIR": metrics_dir(environ),
        # The worker (huey_consumer) serves its own GET /metrics on this port, behind the same
        # token or networks; unset: it serves none. Set it in containers, where the worker's
        # counters are in a folder no other process reads (e.g. 9102, host 0.0.0.0).
        "BERTH_WORKER_METRICS_PORT": parse_int("BERTH_WORKER_METRICS_PORT", None, environ, 1, 65535),
        "BERTH_WORKER_METRICS_HOST": parse_string("BERTH_WORKER_METRICS_HOST", "127.0.0.1", environ),
    }
    settings["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    _check_sign_in(settings)
    return settings


def parse_networks(name, environ=os.environ):
    from berth.addresses import AddressError, parse_networks as networks

    try:
        return tuple(networks(list(parse_list(name, "", environ)), field=name))
    except AddressError as error:
        raise SettingError(str(error)) from None


def parse_secret(name, environ=os.environ, minimum=16):
    """An optional shared secret: unset is fine, a short one is refused."""
    value = _raw(name, environ)
    if value is not None and len(value) < minimum:
        raise SettingError(f"{name} must have at least {minimum} characters "
                           "(try: openssl rand -hex 32)")
    return value


def metrics_dir(environ=os.environ):
    """BERTH_METRICS_DIR, or <BERTH_DATA_DIR>/metrics. Read before prometheus_client is imported."""
    data_dir = os.path.abspath(parse_string("BERTH_DATA_DIR", "var", environ))
    return os.path.abspath(parse_string("BERTH_METRICS_DIR", os.path.join(data_dir, "metrics"), environ))


def parse_url(name, default, environ=os.environ):
    value = _raw(name, environ)
    if value is None:
        return default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SettingError(f"{name}={value!r} is not an http(s) URL without query or fragment")
    return value.rstrip("/")


def _check_sign_in(settings):
    """Settings that only make sense together: someone must be able to sign in."""
    if settings["BERTH_OIDC_ISSUER"]:
        if not settings["BERTH_OIDC_CLIENT_ID"]:
            raise SettingError("BERTH_OIDC_ISSUER is set, so BERTH_OIDC_CLIENT_ID is required too")
        if "openid" not in settings["BERTH_OIDC_SCOPES"].split():
            raise SettingError(f"BERTH_OIDC_SCOPES={settings['BERTH_OIDC_SCOPES']!r} must include openid")
    elif settings["BERTH_LOCAL_LOGIN"] != "on":
        raise SettingError(f"BERTH_LOCAL_LOGIN={settings['BERTH_LOCAL_LOGIN']} needs single sign-on: "
                           "set BERTH_OIDC_ISSUER, or nobody could sign in")
    idle, interval = settings["BERTH_SESSION_IDLE_LIFETIME"], settings["BERTH_ACTIVITY_INTERVAL"]
    if idle and idle < 2 * interval:
        raise SettingError(f"BERTH_SESSION_IDLE_LIFETIME={idle} must be at least twice "
                           f"BERTH_ACTIVITY_INTERVAL ({interval}): sign-ins are marked as used only "
                           "that often")

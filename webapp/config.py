"""Settings, read from BERTH_* environment variables through typed helpers.

Every setting is documented next to its default here and in the README's configuration
reference. A bad value stops the process with a message naming the variable, rather than
being guessed at.
"""
import os
import secrets
from pathlib import Path


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


def parse_port_range(name, default, environ=os.environ):
    value = _raw(name, environ) or default
    try:
        low, high = (int(part) for part in value.split("-", 1))
    except ValueError:
        raise SettingError(f"{name}={value!r} is not a range like 20000-20999") from None
    if not (1024 <= low <= high <= 65535):
        raise SettingError(f"{name}={value!r} must lie within 1024-65535, low end first")
    return low, high


def parse_string(name, default, environ=os.environ, choices=None):
    value = _raw(name, environ)
    if value is None:
        return default
    if choices and value not in choices:
        raise SettingError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def _persistent_secret(data_dir, filename):
    """A random secret kept in the data directory, for the embedded default only.

    Production sets BERTH_SECRET_KEY and BERTH_PROXY_SECRET, so that replicas share them.
    """
    path = Path(data_dir) / filename
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        # O_EXCL: when two processes race at first start, both end up with the winner's value.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
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
        # Loopback ports handed to tools on the process backend.
        "BERTH_PORT_RANGE": parse_port_range("BERTH_PORT_RANGE", "20000-20999", environ),
        # A tool's last activity is written at most this often (seconds), not on every request.
        "BERTH_ACTIVITY_INTERVAL": parse_int("BERTH_ACTIVITY_INTERVAL", 60, environ, 1),
        # How long a worker holds a launch before another worker may take it over (seconds).
        "BERTH_LEASE_SECONDS": parse_int("BERTH_LEASE_SECONDS", 30, environ, 2),
        # YAML catalogue loaded by `berth run` at start, if set.
        "BERTH_CATALOGUE": parse_string("BERTH_CATALOGUE", None, environ),
        # Names this installation in the labels of what it starts, so that two Berths on one
        # host (or one engine) never adopt or remove each other's tools.
        "BERTH_DEPLOYMENT": parse_string("BERTH_DEPLOYMENT", "berth", environ),
        # Number of trusted proxies in front of nginx (for X-Forwarded-For and -Proto).
        "BERTH_TRUSTED_HOPS": parse_int("BERTH_TRUSTED_HOPS", 0, environ, 0, 5),
    }
    settings["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    return settings

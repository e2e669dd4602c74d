"""Tool addresses: <slug>-<host_key>.<domain> for a personal tool, <slug>.<domain> for a shared one,
where <domain> is BERTH_TOOLS_DOMAIN when set, else BERTH_DOMAIN (see tools_domain).

The auth service and the web app both read a tool host with the same function, so that
they always agree on which tool and which owner a request is for.
"""
import re
from urllib.parse import urlsplit
from dataclasses import dataclass

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_HOST_KEY = re.compile(r"^[0-9a-f]{8}$")
_PERSONAL_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
# Longer "next" values are refused (see safe_next_url).
MAX_NEXT_URL_LENGTH = 2000


@dataclass(frozen=True)
class ToolHost:
    slug: str
    host_key: str | None  # None: the shared tool of that template

    @property
    def shared(self):
        return self.host_key is None


def slug_problem(slug):
    """Why slug cannot name a template, or None. Shared in the catalogue loader and admin form."""
    if not SLUG_PATTERN.match(slug):
        return "must start with a letter and hold only a-z, 0-9 and single hyphens"
    if _PERSONAL_SUFFIX.search(slug):
        # <slug>.<domain> would then read as someone's personal tool address.
        return "must not end with a hyphen and 8 hexadecimal characters"
    return None


def strip_port(host):
    host = (host or "").strip().lower()
    if host.startswith("["):
        return host
    return host.rsplit(":", 1)[0] if ":" in host else host


def is_main_host(host, domain):
    return strip_port(host) == domain


def parse_tool_host(host, domain):
    """Return the ToolHost for a tool address, or None if the host is not one.

    A label ending in -<8 hex digits> is a personal address; any other slug-shaped label is a
    shared tool's (slugs may not end that way, see slug_problem).
    """
    name = strip_port(host)
    suffix = "." + domain
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    if "." in label:
        return None
    if _PERSONAL_SUFFIX.search(label):
        slug, host_key = label.rsplit("-", 1)
        return ToolHost(slug=slug, host_key=host_key) if SLUG_PATTERN.match(slug) else None
    return ToolHost(slug=label, host_key=None) if SLUG_PATTERN.match(label) else None


def tools_domain(config):
    """The parent domain of tool hosts: BERTH_TOOLS_DOMAIN when set, else BERTH_DOMAIN."""
    return config.get("BERTH_TOOLS_DOMAIN") or config["BERTH_DOMAIN"]


def tool_host(slug, host_key, domain):
    """The address of a tool: personal with the owner's host_key, shared with None."""
    return f"{slug}.{domain}" if host_key is None else f"{slug}-{host_key}.{domain}"


def session_cookie_name(config):
    """The platform session cookie: host-only on the main host, and with HTTPS under the
    __Host- prefix, which a browser accepts only from that very host (never from a tool's)."""
    prefix = "__Host-" if config["BERTH_SCHEME"] == "https" else ""
    return prefix + config["BERTH_SESSION_COOKIE"]


def tool_cookie_name(config):
    """The cookie that signs a browser in on one tool host, set there by the sign-in hand-off."""
    return session_cookie_name(config) + "_tool"


def _unsafe_redirect(value):
    # nginx answers 502 when an upstream's headers outgrow one page (4 KiB by default), so a
    # longer Location would turn a successful sign-in into an error.
    return not value or any(ch in value for ch in "\\\r\n\t\x00") or len(value) > MAX_NEXT_URL_LENGTH


def safe_relative_path(value):
    """value if it is a path on the same host ("/…", never "//…" or a backslash trick), else None."""
    if _unsafe_redirect(value) or not value.startswith("/") or value.startswith("//"):
        return None
    return value


def public_port_suffix(config):
    """`:<port>` as a browser writes it after a host name, or nothing for the scheme's own port."""
    port = config["BERTH_HTTP_PORT"]
    return "" if port == (443 if config["BERTH_SCHEME"] == "https" else 80) else f":{port}"


def public_url(config, host, path="/"):
    """The address a browser uses for a host, with the public scheme and port."""
    return f"{config['BERTH_SCHEME']}://{host}{public_port_suffix(config)}{path}"


def safe_next_url(config, value):
    """Where to send the browser after login: the main host or one of its tool hosts, else home.

    Relative paths must start with a single slash; absolute URLs must use the public scheme
    and port and name the main host or a well-formed tool host. Everything else (other hosts,
    protocol-relative URLs, backslash tricks, javascript: and friends) falls back to home.
    """

    domain = config["BERTH_DOMAIN"]
    home = public_url(config, domain)
    if _unsafe_redirect(value):
        return home
    if safe_relative_path(value):
        return public_url(config, domain, value)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return home
    if parts.scheme != config["BERTH_SCHEME"] or "@" in parts.netloc:  # any userinfo, even empty
        return home
    default_port = 443 if parts.scheme == "https" else 80
    if (port or default_port) != config["BERTH_HTTP_PORT"]:
        return home
    host = (parts.hostname or "").lower()
    if host != domain and parse_tool_host(host, tools_domain(config)) is None:
        return home
    return value

"""Tool addresses: <slug>--<address name>.<domain> for a personal tool, <slug>.<domain> for a
shared one, where <domain> is BERTH_TOOLS_DOMAIN when set, else BERTH_DOMAIN (see tools_domain).
The address name is the owner's readable part (User.address_name, from address_name_base and
address_name_candidates).
The older personal form, <slug>-<host_key>.<domain>, is still read (a legacy address): see
docs/decisions/0022-readable-addresses.md.

The auth service and the web app both read a tool host with the same function, so that
they always agree on which tool and which owner a request is for.
"""
import re
import unicodedata
from urllib.parse import urlsplit
from dataclasses import dataclass

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_SLUG_LENGTH = 40  # ToolTemplate.slug's column
_PERSONAL_SUFFIX = re.compile(r"-[0-9a-f]{8}$")
# Between a personal tool's slug and its owner's address name. Neither a slug nor an address name
# holds a double hyphen, so the first one in a label is where the two meet, and no shared tool's
# slug or legacy <slug>-<host_key> label holds one at all.
PERSONAL_SEPARATOR = "--"
ADDRESS_NAME_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# The longest slug, the separator and the name fill one DNS label (63 characters) at most.
MAX_LABEL_LENGTH = 63
MAX_ADDRESS_NAME_LENGTH = MAX_LABEL_LENGTH - MAX_SLUG_LENGTH - len(PERSONAL_SEPARATOR)
# Longer "next" values are refused (see safe_next_url).
MAX_NEXT_URL_LENGTH = 2000


@dataclass(frozen=True)
class ToolHost:
    """A parsed tool address. A personal one names its owner by address name, or (a legacy
    address) by host key; a shared one by neither."""

    slug: str
    host_key: str | None = None
    address_name: str | None = None

    @property
    def shared(self):
        return self.host_key is None and self.address_name is None

    @property
    def legacy(self):
        return self.host_key is not None

    @property
    def kind(self):
        """Which form was parsed: "personal", "legacy" (personal, the older form) or "shared"."""
        return "legacy" if self.legacy else "shared" if self.shared else "personal"


def slug_problem(slug):
    """Why slug cannot name a template, or None. Shared in the catalogue loader and admin form."""
    if not SLUG_PATTERN.match(slug):
        return "must start with a letter and hold only a-z, 0-9 and single hyphens"
    if _PERSONAL_SUFFIX.search(slug):
        # <slug>.<domain> would then read as someone's personal tool address.
        return "must not end with a hyphen and 8 hexadecimal characters"
    if len(slug) > MAX_SLUG_LENGTH:
        return f"must be at most {MAX_SLUG_LENGTH} characters long"
    if slug == "xn":
        # xn--<name> would read as an internationalised (punycode) name to browsers and DNS tools.
        return "must not be xn"
    return None


def address_name_base(email, name=""):
    """The readable part of a user's tool addresses, before any suffix that makes it unique:
    the email's local part (without a +tag), else the name, reduced to a-z, 0-9 and single
    hyphens (accents dropped, other scripts left out), at most MAX_ADDRESS_NAME_LENGTH
    characters; "user" when nothing is left."""
    local = (email or "").split("@", 1)[0].split("+", 1)[0]
    for text in (local, name or ""):
        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
        base = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
        base = base[:MAX_ADDRESS_NAME_LENGTH].rstrip("-")
        if base:
            return base
    return "user"


def address_name_candidates(base):
    """base, then base-2, base-3, … (base shortened so that each fits): in the order tried."""
    yield base
    number = 2
    while True:
        suffix = f"-{number}"
        yield base[:MAX_ADDRESS_NAME_LENGTH - len(suffix)].rstrip("-") + suffix
        number += 1


def address_name_problem(name):
    """Why name cannot be an address name, or None (address_name_base makes only good ones)."""
    if not ADDRESS_NAME_PATTERN.match(name or ""):
        return "must hold only a-z, 0-9 and single hyphens, and neither start nor end with a hyphen"
    if len(name) > MAX_ADDRESS_NAME_LENGTH:
        return f"must be at most {MAX_ADDRESS_NAME_LENGTH} characters long"
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

    A label with a double hyphen is a personal address, <slug>--<address name>; else one ending
    in -<8 hex digits> is a legacy personal address, <slug>-<host_key>; any other slug-shaped
    label is a shared tool's (slugs hold no double hyphen and may not end in -<8 hex digits>,
    see slug_problem). The double hyphen is looked for first, so a name that happens to end
    in -<8 hex digits> never reads as a host key.
    """
    name = strip_port(host)
    suffix = "." + domain
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    if "." in label or len(label) > MAX_LABEL_LENGTH:
        return None
    if PERSONAL_SEPARATOR in label:
        slug, address_name = label.split(PERSONAL_SEPARATOR, 1)
        if SLUG_PATTERN.match(slug) and address_name_problem(address_name) is None:
            return ToolHost(slug=slug, address_name=address_name)
        return None
    if _PERSONAL_SUFFIX.search(label):
        slug, host_key = label.rsplit("-", 1)
        return ToolHost(slug=slug, host_key=host_key) if SLUG_PATTERN.match(slug) else None
    return ToolHost(slug=label, host_key=None) if SLUG_PATTERN.match(label) else None


def tools_domain(config):
    """The parent domain of tool hosts: BERTH_TOOLS_DOMAIN when set, else BERTH_DOMAIN."""
    return config.get("BERTH_TOOLS_DOMAIN") or config["BERTH_DOMAIN"]


def tool_host(slug, address_name, domain):
    """The address of a tool: personal with the owner's address name, shared with None."""
    if address_name is None:
        return f"{slug}.{domain}"
    prefix, suffix = personal_host_parts(slug, domain)
    return prefix + address_name + suffix


def user_tool_host(config, template, user):
    """The address at which user opens template's tool: their own, or the shared one."""
    return tool_host(template.slug, None if template.shared else user.address_name, tools_domain(config))


def personal_host_parts(slug, domain):
    """What comes before and after the owner's address name in a personal tool's address (the
    auth check builds the address around the name it reads from the database)."""
    return f"{slug}{PERSONAL_SEPARATOR}", f".{domain}"


def legacy_tool_host(slug, host_key, domain):
    """The older address of a personal tool, with the owner's host key: still served."""
    return f"{slug}-{host_key}.{domain}"


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

"""Render nginx's configuration from the templates in nginx/ (see `berth nginx-conf`)."""
import os
import re
from datetime import datetime, timezone

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from berth.hosts import public_port_suffix, session_cookie_name, tool_cookie_name, tools_domain
from berth.settings import SettingError
from berth.tool_network import tool_address_of_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "nginx")
STATIC_DIR = os.path.join(ROOT, "webapp", "static")
AUTH_TIMEOUT_MARGIN = 3  # seconds nginx waits for the auth service beyond the statement timeout


def tool_upstreams(config):
    """{port: "address:port"} for the ports of BERTH_PORT_RANGE that get a keepalive upstream
    block each (berth.conf.j2), or {} where none are rendered; see tool_upstream_address."""
    if _keepalive_mode(config) is None:
        return {}
    low, high = config["BERTH_PORT_RANGE"]
    return {port: tool_upstream_address(config, port) for port in range(low, high + 1)}


def tool_upstream_address(config, port):
    """The "address:port" that port's keepalive block leads to, or None where it has none.
    Blocks are rendered where tools listen on the ports of BERTH_PORT_RANGE and
    BERTH_TOOL_KEEPALIVE is on:

    - isolated process tools: at the address of their port's slot of BERTH_TOOL_NETWORK
      (berth/tool_network.py), each in its own network namespace;
    - single-user process tools, and docker tools with host networking: on loopback.

    Elsewhere (a docker tool's own network, ECS) tools have addresses no port tells."""
    mode = _keepalive_mode(config)
    low, high = config["BERTH_PORT_RANGE"]
    if mode is None or not low <= port <= high:
        return None
    if mode == "isolated":  # a docker tool on the host's network then goes without keepalive
        return f"{tool_address_of_port(config, port)}:{port}"
    return f"127.0.0.1:{port}"


def _keepalive_mode(config):
    backends = config["BERTH_BACKENDS"]
    if not config["BERTH_TOOL_KEEPALIVE"]:
        return None
    if "process" in backends and config["BERTH_TOOL_ISOLATION"] == "namespaces":
        return "isolated"
    if (("process" in backends and config["BERTH_TOOL_ISOLATION"] == "single-user")
            or ("docker" in backends and config.get("BERTH_DOCKER_NETWORK") == "host")):
        return "loopback"
    return None


def tuning(config, standalone):
    """The operator's nginx settings (the nginx group of berth/settings.py), for the templates.
    Unset, the access log of a standalone nginx.conf is under its prefix; included in an
    operator's own http block, Berth's servers keep that block's access_log."""
    access_log_format = config["BERTH_NGINX_ACCESS_LOG_FORMAT"] or (
        "berth_json" if config["BERTH_LOG_FORMAT"] == "json" else "berth")
    return {
        "client_max_body_size": config["BERTH_NGINX_CLIENT_MAX_BODY_SIZE"],
        "proxy_connect_timeout": config["BERTH_NGINX_PROXY_CONNECT_TIMEOUT"],
        "proxy_read_timeout": config["BERTH_NGINX_PROXY_READ_TIMEOUT"],
        "proxy_send_timeout": config["BERTH_NGINX_PROXY_SEND_TIMEOUT"],
        "proxy_buffer_size": config["BERTH_NGINX_PROXY_BUFFER_SIZE"],
        "proxy_buffers": config["BERTH_NGINX_PROXY_BUFFERS"],
        "proxy_busy_buffers_size": _busy_buffers_size(config),
        "resolver": config["BERTH_NGINX_RESOLVER"],
        "access_log": config["BERTH_NGINX_ACCESS_LOG"] or ("logs/access.log" if standalone else None),
        "access_log_format": access_log_format,
        "include_dir": config["BERTH_NGINX_INCLUDE_DIR"],
    }


DEFAULT_PROXY_BUFFERS = "8 4k"  # nginx's own on this platform (one memory page each)


def _busy_buffers_size(config):
    """proxy_busy_buffers_size for the buffer settings, or None when neither is set. nginx wants it
    at least the head buffer and one body buffer, and less than all body buffers but one: with a
    large head buffer, the body buffers must grow too, which is said here rather than by nginx."""
    head, buffers = config["BERTH_NGINX_PROXY_BUFFER_SIZE"], config["BERTH_NGINX_PROXY_BUFFERS"]
    if not head and not buffers:
        return None
    count, size = (buffers or DEFAULT_PROXY_BUFFERS).split()
    busy = max(_bytes(head or "4k"), _bytes(size))
    if busy > (int(count) - 1) * _bytes(size):
        raise SettingError(f"BERTH_NGINX_PROXY_BUFFERS={buffers or DEFAULT_PROXY_BUFFERS!r} is too small "
                           f"for BERTH_NGINX_PROXY_BUFFER_SIZE={head!r}: all buffers but one must hold "
                           "at least the head buffer")
    return f"{busy // 1024}k" if busy % 1024 == 0 else str(busy)


def _bytes(size):
    """An nginx size in bytes."""
    factor = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}.get(size[-1].lower(), 1)
    return int(size.rstrip("kKmMgG")) * factor


def render_nginx(config, *, listen=None, auth_servers=None, web_servers=None, standalone=False,
                 prefix=None, worker_processes="auto", cache_dir=None):
    """The http-level configuration, or with standalone=True a complete nginx.conf under prefix."""
    environment = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)
    domain = config["BERTH_DOMAIN"]
    if not re.fullmatch(r"[a-z0-9.-]+", domain):
        raise SettingError(f"BERTH_DOMAIN={domain!r} is not a plain host name")
    context = {
        "domain": domain,
        "tools_domain": tools_domain(config),
        "tools_domain_regex": re.escape(tools_domain(config)),
        "listen": listen or str(config["BERTH_HTTP_PORT"]),
        "auth_servers": auth_servers or [f"127.0.0.1:{config['BERTH_AUTH_PORT']}"],
        "web_servers": web_servers or [f"127.0.0.1:{config['BERTH_WEB_PORT']}"],
        # Every name a Berth cookie has: with or without __Host-, the session's, a tool host's, a launch pass.
        "berth_cookies": "(?:__Host-)?" + re.escape(config["BERTH_SESSION_COOKIE"]) + "(?:_tool|_launch)?",
        "session_cookie": re.escape(session_cookie_name(config)),
        "tool_cookie": re.escape(tool_cookie_name(config)),
        "proxy_secret": config["BERTH_PROXY_SECRET"],
        "static_dir": STATIC_DIR,
        "tool_upstreams": tool_upstreams(config),
        "tuning": tuning(config, standalone),
        "rendered_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "auth_cache_seconds": config["BERTH_AUTH_CACHE_SECONDS"],
        # The auth service answers within a statement timeout (503 past it); a little more for it.
        "auth_timeout": config["BERTH_DATABASE_STATEMENT_TIMEOUT"] + AUTH_TIMEOUT_MARGIN,
        "cache_dir": cache_dir or os.path.join(prefix or config["BERTH_DATA_DIR"], "auth-cache"),
        **_door(config),
        **_tls(config, listen or str(config["BERTH_HTTP_PORT"])),
        "public_port_suffix": public_port_suffix(config),  # BERTH_SCHEME is https whenever nginx serves TLS
    }

    def snippet(name):
        """A snippet inlined where it is used; its header comment stays in the source file."""
        lines = environment.get_template(f"snippets/{name}.conf.j2").render(
            snippet=snippet, **context).rstrip("\n").splitlines()
        while lines and lines[0].startswith("#"):
            lines.pop(0)
        return "\n".join(lines)

    berth_conf = environment.get_template("berth.conf.j2").render(snippet=snippet, **context)
    if not standalone:
        return berth_conf
    return environment.get_template("nginx.conf.j2").render(
        berth_conf=berth_conf,
        prefix=prefix,
        mime_types=_mime_types(),
        worker_processes=worker_processes,
    )


def _door(config):
    """The per-address limits, and the address they count by: the one berth/addresses.py finds."""
    hops = config["BERTH_TRUSTED_HOPS"]
    return {
        "trusted_hops": hops,
        "trusted_proxies": [str(network) for network in config["BERTH_TRUSTED_PROXIES"]],
        "client_key": f"$berth_client_hop{hops}" if hops else "$binary_remote_addr",
        "door_rate": config["BERTH_DOOR_RATE"],
        "door_burst": config["BERTH_DOOR_BURST"],
        "door_connections": config["BERTH_DOOR_CONNECTIONS"],
        "door_exempt": [str(network) for network in config["BERTH_DOOR_EXEMPT"]],
        "client_address": f"$berth_client_hop{hops}" if hops else "$remote_addr",
    }


def _tls(config, listen):
    """HTTPS on the listen address when BERTH_TLS_CERTIFICATE is set, plain HTTP redirected."""
    certificate, key = config["BERTH_TLS_CERTIFICATE"], config["BERTH_TLS_KEY"]
    for name, path in (("BERTH_TLS_CERTIFICATE", certificate), ("BERTH_TLS_KEY", key)):
        if path and not os.access(path, os.R_OK):
            raise SettingError(f"{name}={path!r} is not a readable file")
    redirect_port = config["BERTH_HTTP_REDIRECT_PORT"]
    host, colon, port = listen.rpartition(":")
    redirect_listen = f"{host}:{redirect_port}" if colon and port.isdigit() else str(redirect_port)
    return {
        "tls": bool(certificate),
        "tls_certificate": certificate,
        "tls_key": key,
        "redirect_listen": redirect_listen if redirect_port else None,
        "hsts_seconds": config["BERTH_HSTS_SECONDS"],
    }


def prepare_prefix(prefix, workers_as=None):
    """Create the folders a standalone nginx writes to.

    With workers_as (nginx started as root, its workers as that user), the workers may pass
    through the prefix and its folder to their temporary folders, which nginx itself hands to
    them; nothing else in the prefix is theirs (its configuration holds the proxy secret)."""
    for sub in ("logs", "tmp/client_body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        os.makedirs(os.path.join(prefix, sub), exist_ok=True)
        os.chmod(os.path.join(prefix, sub), 0o700)  # request and response bodies are nobody else's
    if workers_as:
        for folder in (os.path.dirname(os.path.abspath(prefix)), prefix, os.path.join(prefix, "tmp")):
            os.chmod(folder, 0o711)
        os.chmod(os.path.join(prefix, "logs"), 0o700)


def _mime_types():
    for candidate in ("/etc/nginx/mime.types", "/usr/local/nginx/conf/mime.types"):
        if os.path.exists(candidate):
            return candidate
    return os.path.join(TEMPLATES, "mime.types")

"""nginx's configuration as operators shape it: every nginx setting changes the rendered file,
and every combination of them is one that `nginx -t` accepts.

Each configuration is rendered as `berth run` and the image render it (standalone, under a prefix)
and checked by the real nginx binary.
"""
import shutil
import subprocess

import pytest

from berth.nginx_conf import prepare_prefix, render_nginx
from berth.settings import SettingError, load_settings

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

BASE = {"BERTH_PROXY_SECRET": "s" * 32, "BERTH_SECRET_KEY": "k" * 32}


def settings(tmp_path, **env):
    return load_settings({"BERTH_DATA_DIR": str(tmp_path / "data"), **BASE, **env})


def render(tmp_path, standalone=True, **env):
    prefix = tmp_path / "nginx"
    prepare_prefix(prefix)
    return render_nginx(settings(tmp_path, **env), standalone=standalone, prefix=str(prefix))


def nginx_t(tmp_path, text):
    """nginx -t on text, as root starts it (workers as root here: no user to switch to)."""
    prefix = tmp_path / "nginx"
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    checked = subprocess.run([NGINX, "-t", "-q", "-p", str(prefix), "-c", str(conf), "-e",
                              str(prefix / "logs" / "error.log"), "-g", "user root root;"],
                             capture_output=True, text=True, timeout=60)
    return checked.returncode, checked.stderr


@pytest.fixture
def include_dir(tmp_path):
    """An operator's own snippets: an http-level map and log format, a server-level header."""
    folder = tmp_path / "include"
    (folder / "http.d").mkdir(parents=True)
    (folder / "server.d").mkdir()
    (folder / "http.d" / "ops.conf").write_text(
        "log_format ops '$remote_addr $request_id $berth_user_id';\n"
        "map $http_x_team $ops_team { default none; ~.+ $http_x_team; }\n")
    (folder / "server.d" / "headers.conf").write_text('add_header X-Served-By "berth-ops" always;\n')
    return folder


KNOBS = {
    "BERTH_NGINX_CLIENT_MAX_BODY_SIZE": ("0", "10m", "512k"),
    "BERTH_NGINX_PROXY_READ_TIMEOUT": ("1h", "300s", "1h30m"),
    "BERTH_NGINX_PROXY_CONNECT_TIMEOUT": ("60s", "5s"),
    "BERTH_NGINX_PROXY_BUFFER_SIZE": (None, "8k", "64k"),
    "BERTH_NGINX_PROXY_BUFFERS": (None, "16 16k", "32 32k"),
    "BERTH_NGINX_RESOLVER": (None, "127.0.0.1 valid=10s ipv6=off", "127.0.0.53:53"),
    "BERTH_NGINX_ACCESS_LOG": (None, "off", "logs/berth.log"),
    "BERTH_LOG_FORMAT": ("text", "json"),
    "BERTH_TOOL_ISOLATION": ("namespaces", "single-user"),
    "BERTH_AUTH_CACHE_SECONDS": ("0", "5"),
    "BERTH_NGINX_INCLUDE_DIR": (None, "include"),
}


def combinations(count=24):
    """count combinations of the knobs' values: every value of every knob appears, in varying
    company (a walk that steps each knob at its own pace), plus the all-defaults one."""
    names = list(KNOBS)
    for index in range(count):
        yield {name: KNOBS[name][(index * (position + 1) + index // 3) % len(KNOBS[name])]
               for position, name in enumerate(names)}


@pytest.mark.parametrize("knobs", list(combinations()), ids=lambda knobs: "-".join(
    str(value).split()[0].replace("/", "_") for value in knobs.values()))
def test_every_combination_of_knobs_passes_nginx_t(tmp_path, include_dir, knobs):
    env = {name: (str(tmp_path / value) if name == "BERTH_NGINX_INCLUDE_DIR" else value)
           for name, value in knobs.items() if value is not None}
    try:
        text = render(tmp_path, **env)
    except SettingError as error:
        # The only combination refused before nginx sees it: a head buffer that the body buffers
        # cannot hold, said by naming both settings.
        assert "BERTH_NGINX_PROXY_BUFFERS" in str(error) and "BERTH_NGINX_PROXY_BUFFER_SIZE" in str(error)
        return
    code, errors = nginx_t(tmp_path, text)
    assert code == 0, errors


def test_each_knob_changes_the_rendered_configuration(tmp_path, include_dir):
    text = render(tmp_path, BERTH_NGINX_CLIENT_MAX_BODY_SIZE="25m", BERTH_NGINX_PROXY_READ_TIMEOUT="10m",
                  BERTH_NGINX_PROXY_SEND_TIMEOUT="20m", BERTH_NGINX_PROXY_CONNECT_TIMEOUT="7s",
                  BERTH_NGINX_PROXY_BUFFER_SIZE="32k", BERTH_NGINX_PROXY_BUFFERS="16 32k",
                  BERTH_NGINX_RESOLVER="10.96.0.10 valid=10s", BERTH_NGINX_ACCESS_LOG="/var/log/berth.log",
                  BERTH_NGINX_ACCESS_LOG_FORMAT="ops", BERTH_NGINX_INCLUDE_DIR=str(include_dir))
    for line in ("client_max_body_size 25m;", "proxy_read_timeout 10m;", "proxy_send_timeout 20m;",
                 "proxy_connect_timeout 7s;", "proxy_buffer_size 32k;", "proxy_buffers 16 32k;",
                 "proxy_busy_buffers_size 32k;", "resolver 10.96.0.10 valid=10s;",
                 "access_log /var/log/berth.log ops;", f"include {include_dir}/http.d/*.conf;",
                 f"include {include_dir}/server.d/*.conf;"):
        assert line in text, line
    # In both of Berth's servers (main host, tool hosts), and the catch-all logs too.
    assert text.count(f"include {include_dir}/server.d/*.conf;") == 2
    assert text.count("access_log /var/log/berth.log ops;") == 3


def test_defaults_keep_what_was_hard_coded(tmp_path):
    text = render(tmp_path)
    for line in ("client_max_body_size 0;", "proxy_read_timeout 1h;", "proxy_send_timeout 1h;",
                 "access_log logs/access.log berth;"):
        assert line in text, line
    for directive in ("resolver ", "as nginx needs", "/http.d/", "/server.d/"):
        assert directive not in text, directive
    # Tools stream through 64 KiB buffers, unless the operator sets buffers of their own.
    assert "proxy_buffers 8 64k;" in text
    assert "proxy_buffers 8 64k;" not in render(tmp_path, BERTH_NGINX_PROXY_BUFFERS="16 8k")
    assert "access_log logs/access.log berth_json;" in render(tmp_path, BERTH_LOG_FORMAT="json")


def test_an_included_configuration_keeps_the_operators_access_log(tmp_path):
    assert "access_log" not in render(tmp_path, standalone=False)
    assert "access_log off;" in render(tmp_path, standalone=False, BERTH_NGINX_ACCESS_LOG="off")


def _tool_blocks(text):
    return [line.strip() for line in text.splitlines() if line.strip().startswith("upstream berth_tool_")]


def test_a_block_per_port_only_where_a_tools_address_follows_from_its_port(tmp_path):
    # The default: process tools in namespaces, each at its port's /30 of BERTH_TOOL_NETWORK.
    isolated = render(tmp_path, BERTH_PORT_RANGE="20000-20009")
    blocks = _tool_blocks(isolated)
    assert len(blocks) == 10
    assert blocks[0].startswith("upstream berth_tool_20000 { server 10.213.56.130:20000 ")  # 20000 % 16384 = slot 3616
    # They close the file, after every server: what an operator reads first is Berth's own,
    # about 800 lines (the servers, the door's limits and TLS).
    assert isolated.index("upstream berth_tool_") > isolated.rindex("server {")
    assert len(isolated[:isolated.index("upstream berth_tool_")].splitlines()) < 900
    single_user = render(tmp_path, BERTH_TOOL_ISOLATION="single-user", BERTH_PORT_RANGE="20000-20009")
    assert _tool_blocks(single_user)[0].startswith("upstream berth_tool_20000 { server 127.0.0.1:20000 ")
    assert len(_tool_blocks(single_user)) == 10
    assert _tool_blocks(render(tmp_path, BERTH_TOOL_KEEPALIVE="false")) == []
    assert _tool_blocks(render(tmp_path, BERTH_BACKENDS="docker")) == []  # a network of its own each
    host_network = render(tmp_path, BERTH_BACKENDS="docker", BERTH_DOCKER_NETWORK="host", BERTH_PORT_RANGE="20000-20009")
    assert _tool_blocks(host_network)[0].startswith("upstream berth_tool_20000 { server 127.0.0.1:20000 ")


def test_a_directive_an_operator_sets_twice_is_named_by_nginx_t(tmp_path, include_dir):
    (include_dir / "server.d" / "twice.conf").write_text("proxy_read_timeout 5m;\n")
    code, errors = nginx_t(tmp_path, render(tmp_path, BERTH_NGINX_INCLUDE_DIR=str(include_dir)))
    assert code != 0
    assert '"proxy_read_timeout" directive is duplicate' in errors
    assert "twice.conf" in errors


@pytest.mark.parametrize("name, value, message", [
    ("BERTH_NGINX_CLIENT_MAX_BODY_SIZE", "10 MB", "is not an nginx size"),
    ("BERTH_NGINX_PROXY_READ_TIMEOUT", "an hour", "is not an nginx time"),
    ("BERTH_NGINX_PROXY_BUFFERS", "16k", "is not a number and a size"),
    ("BERTH_NGINX_RESOLVER", "10.0.0.2; include /etc/passwd", "is not a resolver"),
    ("BERTH_NGINX_RESOLVER", "valid=10s", "is not a resolver"),
    ("BERTH_NGINX_ACCESS_LOG", "/var/log/a.log; evil", "is not a file"),
    ("BERTH_NGINX_ACCESS_LOG_FORMAT", "berth json", "is not an nginx name"),
])
def test_a_bad_knob_is_refused_naming_it(tmp_path, name, value, message):
    with pytest.raises(SettingError) as refused:
        settings(tmp_path, **{name: value})
    assert str(refused.value).startswith(f"{name}=") and message in str(refused.value)


def test_buffers_too_small_for_the_head_buffer_are_refused_naming_both(tmp_path):
    with pytest.raises(SettingError, match="BERTH_NGINX_PROXY_BUFFERS='8 4k' is too small for "
                                           "BERTH_NGINX_PROXY_BUFFER_SIZE='64k'"):
        render(tmp_path, BERTH_NGINX_PROXY_BUFFER_SIZE="64k")


@pytest.mark.parametrize("hops", ["0", "1"])
def test_addresses_exempt_from_the_door_are_left_out_of_its_count(tmp_path, hops):
    text = render(tmp_path, BERTH_DOOR_EXEMPT="10.0.0.5/32,192.168.0.0/24", BERTH_TRUSTED_HOPS=hops)
    code, errors = nginx_t(tmp_path, text)
    assert code == 0, errors
    assert "limit_req_zone $berth_door_key " in text and "10.0.0.5/32 1;" in text
    assert "limit_req_zone $berth_door_key " not in render(tmp_path)  # none: every address counts

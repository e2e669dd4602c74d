"""nginx counts a client for its per-address limits by the same address as berth/addresses.py:
a client cannot pass for many by writing X-Forwarded-For, nor escape its limits through a
proxy that is not trusted.

The rendered configuration runs in a real nginx, with one probe server added that answers the
address nginx worked out (the key of the limits), for each connection and header in the table.
"""
import subprocess

import pytest
import requests

from berth.addresses import client_address, parse_networks
from berth.nginx_conf import prepare_prefix, render_nginx
from berth.settings import load_settings
from deploy.local import nginx_binary
from tests.integration.test_access import _FromAddress
from tests.services import free_port, stop_process, wait_for_port

CASES = [(source, forwarded)
         for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3")
         for forwarded in (None, "", "1.2.3.4", "9.9.9.9, 1.2.3.4", "9.9.9.9, 127.0.0.3",
                           "a, 9.9.9.9, 127.0.0.3 , ", "not-an-address", "2001:db8::1, 127.0.0.2")]


@pytest.mark.parametrize("hops, proxies", [(1, ""), (1, "127.0.0.2/32"), (2, "127.0.0.2/32,127.0.0.3/32"),
                                           (2, "")])
def test_nginx_counts_clients_by_the_address_berth_sees(tmp_path, hops, proxies):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_TRUSTED_HOPS": str(hops),
                              "BERTH_TRUSTED_PROXIES": proxies})
    prefix, probe = tmp_path / "nginx", free_port()
    prepare_prefix(prefix)
    text = render_nginx({**settings, "BERTH_PROXY_SECRET": "x" * 32}, standalone=True, prefix=str(prefix),
                        listen=f"127.0.0.1:{free_port()}", worker_processes=1)
    key = f"$berth_client_hop{hops}"
    probe_server = f'server {{ listen 127.0.0.1:{probe}; location / {{ return 200 "{key}"; }} }}\n}}\n'
    (prefix / "nginx.conf").write_text(text.rstrip().removesuffix("}") + probe_server)
    nginx = subprocess.Popen([nginx_binary(), "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                              "-e", f"{prefix}/logs/error.log", "-g", "daemon off; user root root;"],
                             stderr=subprocess.DEVNULL)
    try:
        wait_for_port(probe, process=nginx, what="nginx")
        networks = parse_networks([net for net in proxies.split(",") if net])
        for source, forwarded in CASES:
            with requests.Session() as session:
                session.mount("http://", _FromAddress(source))
                headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
                seen = session.get(f"http://127.0.0.1:{probe}/", headers=headers, timeout=10).text
            expected = client_address(source, forwarded, hops, networks)
            if expected is not None:  # an unparsable entry: Berth sees no address; nginx counts the text
                assert seen == str(expected), (source, forwarded)
    finally:
        stop_process(nginx)

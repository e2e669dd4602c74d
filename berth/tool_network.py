"""Where an isolated process tool is reached: the addresses of BERTH_TOOL_NETWORK's /30s.

Slot n of the network is its n-th /30: the host's end of the tool's veth pair is its first
address, the tool's end its second (berth/backends/sandbox.py). A tool is given the slot of its
port (the port modulo the number of slots) when that slot is free, so that its address follows
from its port. nginx can then keep connections to it alive through the upstream block rendered
for that port (berth/nginx_conf.py), as for tools on loopback ports; without keepalive, every
request would open a new connection to the tool, and a busy tool would run the host out of
source ports (docs/decisions/0024-keepalive-to-isolated-tools.md). A slot taken by something
else (a link left by another deployment) is given up for the next free one: that tool works
the same, without keepalive.
"""
import functools
import ipaddress


@functools.lru_cache(maxsize=16)
def _network(text):
    return ipaddress.ip_network(text)


def slot_count(config):
    return _network(config["BERTH_TOOL_NETWORK"]).num_addresses // 4


def slot_addresses(config, slot):
    """(host's end, tool's end, prefix length) of slot."""
    base = _network(config["BERTH_TOOL_NETWORK"]).network_address + slot * 4
    return str(base + 1), str(base + 2), 30


def slot_of_port(config, port):
    return port % slot_count(config)


def tool_address_of_port(config, port):
    """The address of the tool on port when it holds its port's slot."""
    return _tool_end_of_port(config["BERTH_TOOL_NETWORK"], port)


@functools.lru_cache(maxsize=4096)
def _tool_end_of_port(network, port):
    # Kept: the auth check asks for every request to a running tool, and the answer never changes.
    config = {"BERTH_TOOL_NETWORK": network}
    return slot_addresses(config, slot_of_port(config, port))[1]

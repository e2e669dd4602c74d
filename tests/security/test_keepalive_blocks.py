"""The keepalive block of a port leads to one address (docs/decisions/0024-keepalive-to-isolated-tools.md):
the auth service names it only for a tool recorded at exactly that address. A tool anywhere else,
on the same port number (another backend, a slot taken by someone else), is sent to its own
address, never through the block to whatever holds the port's slot."""
import pytest

from auth_service.check import nginx_upstream
from berth.tool_network import tool_address_of_port

CONFIG = {"BERTH_BACKENDS": ["process", "docker"], "BERTH_TOOL_ISOLATION": "namespaces",
          "BERTH_DOCKER_NETWORK": "host", "BERTH_TOOL_KEEPALIVE": True,
          "BERTH_PORT_RANGE": (20000, 20999), "BERTH_TOOL_NETWORK": "10.213.0.0/16"}


def test_a_tool_at_its_ports_address_is_reached_through_the_block():
    assert nginx_upstream(CONFIG, f"{tool_address_of_port(CONFIG, 20001)}:20001") == "berth_tool_20001"


@pytest.mark.parametrize("address", [
    "127.0.0.1:20001",        # a docker tool on the host's network, on the same port number
    "10.213.0.6:20001",       # an isolated tool that took the next free slot
    "10.213.56.138:20001",    # the slot of port 20002
    "172.18.0.2:20001",       # a docker tool on a network of its own
])
def test_a_tool_anywhere_else_is_reached_at_its_own_address(address):
    assert nginx_upstream(CONFIG, address) == address


def test_ports_outside_the_range_and_keepalive_off_get_no_block():
    outside = f"{tool_address_of_port(CONFIG, 21000)}:21000"
    assert nginx_upstream(CONFIG, outside) == outside
    own = f"{tool_address_of_port(CONFIG, 20001)}:20001"
    assert nginx_upstream({**CONFIG, "BERTH_TOOL_KEEPALIVE": False}, own) == own

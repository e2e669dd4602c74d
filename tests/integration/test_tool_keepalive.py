"""nginx keeps its connections to tools alive (docs/decisions/0005-tool-keepalive.md,
0024-keepalive-to-isolated-tools.md). An isolated tool is given its port's /30 of
BERTH_TOOL_NETWORK, so that the upstream block rendered for its port leads to it: requests one
after another reach it over one connection, not a new connection each (which would, on a busy
tool, run the host out of source ports)."""
from berth.tool_network import slot_addresses, slot_of_port
from tests.integration.test_launch import _host


def test_an_isolated_tool_is_at_its_ports_address_and_reached_over_kept_connections(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    row = stack.instances(_host(stack, "echo", alice))[-1]
    address, port = row["upstream"].rsplit(":", 1)
    host_end, tool_end, _ = slot_addresses(stack.config, slot_of_port(stack.config, int(port)))
    assert address == tool_end

    peers = set()
    for _ in range(20):
        answer = browser.get(stack.tool_url("echo", alice, "/headers"), timeout=10)
        assert answer.status_code == 200
        peers.add(answer.json()["peer"])
    # One client connection is served by one nginx worker, which keeps one connection to the
    # tool: without keepalive there would be twenty.
    assert len(peers) == 1, peers
    assert next(iter(peers)).split(":")[0] == host_end  # nginx, through the tool's own link

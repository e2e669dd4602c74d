"""Readable tool addresses cannot be turned against anyone: no user gets a name that is another
user's address, a shared tool's, or the older <slug>-<host key> form, whatever their email;
and another user's name in an address still meets the access rules, at either form, for a
browser as for an API token (docs/decisions/0022-readable-addresses.md)."""
import itertools

import requests

from berth.hosts import legacy_tool_host, parse_tool_host, tool_host
from tests.integration.test_tokens import make_token

DOMAIN = "berth.localhost"
SLUGS = ("echo", "echo-api", "board")


def _navigate(stack, browser, host, path="/"):
    return stack.navigate(browser, f"http://{host}:{stack.port}{path}")


def _reason(answer):
    return answer.text if "text/html" in answer.headers.get("Content-Type", "") else answer.json().get("error", "")


def test_no_email_gets_a_name_that_is_anyone_elses_address(stack, alice):
    # Emails chosen to collide: alice's host key, a double hyphen, a shared tool's slug, a slug
    # with a host key, and one name in other cases and scripts.
    emails = [f"{alice['host_key']}@example.org", "x--y@example.org", "x-y@example.net", "board@example.org",
              f"echo-{alice['host_key']}@example.org", "Carol@example.org", "carol@example.net",
              "ｃａｒｏｌ@example.com", "CAROL+tools@example.com", "--@example.org", "李雷@example.org"]
    users = [alice] + [stack.create_user(email=email) for email in emails]
    names = [user["address_name"] for user in users]
    assert len(set(names)) == len(names), names
    assert all(name and "--" not in name for name in names)
    hosts = {}
    for user, slug in itertools.product(users, SLUGS):
        current, legacy = tool_host(slug, user["address_name"], DOMAIN), legacy_tool_host(slug, user["host_key"], DOMAIN)
        # Each address reads back as this user's, and as nobody else's.
        assert parse_tool_host(current, DOMAIN).address_name == user["address_name"]
        assert parse_tool_host(legacy, DOMAIN).host_key == user["host_key"]
        for host in (current, legacy):
            assert hosts.setdefault(host, user["id"]) == user["id"], host
    # No personal address is a shared tool's.
    assert all(not parse_tool_host(host, DOMAIN).shared for host in hosts)
    assert f"board.{DOMAIN}" not in hosts


def test_a_name_made_of_another_users_host_key_opens_only_its_own_tool(stack, alice):
    mallory = stack.create_user(email=f"{alice['host_key']}@example.org")
    assert mallory["address_name"] == alice["host_key"]
    as_mallory = stack.login(mallory)
    stack.open_tool(as_mallory, "echo", mallory)
    own = stack.instances(tool_host("echo", alice["host_key"], DOMAIN))
    assert [row["owner_id"] for row in own] == [mallory["id"]]
    # Alice's older address stays Alice's: refused to mallory, and never sent on to mallory's.
    refused = _navigate(stack, as_mallory, stack.legacy_tool_host("echo", alice))
    assert refused.status_code == 403 and "belongs to another user" in refused.text
    assert "Location" not in refused.headers
    # Alice opens her own tool at her older address, not mallory's.
    as_alice = stack.login(alice)
    moved = _navigate(stack, as_alice, stack.legacy_tool_host("echo", alice))
    assert moved.status_code == 302 and moved.headers["Location"] == stack.tool_url("echo", alice)
    # And mallory's readable address is mallory's: refused to alice.
    theirs = _navigate(stack, as_alice, stack.tool_host("echo", mallory))
    assert theirs.status_code == 403 and "belongs to another user" in theirs.text


def test_another_users_name_in_the_address_is_refused_at_both_forms(stack, alice, bob):
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
        stack.open_tool(browser, "echo-api", alice)
    as_bob = stack.login(bob)
    with stack.login(bob) as browser:
        bobs_token = make_token(stack, browser)
    for host in (stack.tool_host("echo", alice), stack.legacy_tool_host("echo", alice)):
        answer = _navigate(stack, as_bob, host, "/deep/link")
        assert answer.status_code == 403 and "belongs to another user" in answer.text
        assert "Location" not in answer.headers  # the older address tells bob nothing of alice's name
        fetched = as_bob.get(f"http://{host}:{stack.port}/headers", timeout=10, allow_redirects=False,
                             headers={"Accept": "application/json"})
        assert fetched.status_code == 403
    for host in (stack.tool_host("echo-api", alice), stack.legacy_tool_host("echo-api", alice)):
        by_token = requests.get(f"http://{host}:{stack.port}/headers", timeout=10, allow_redirects=False,
                                headers={"Authorization": f"Bearer {bobs_token}", "Accept": "text/html"})
        assert by_token.status_code == 403 and "belongs to another user" in _reason(by_token)


def test_a_host_key_or_a_made_up_name_in_the_readable_form_finds_no_one(stack, alice):
    browser = stack.login(alice)
    for name in (alice["host_key"], "nobody-here", alice["address_name"] + "-2"):
        answer = _navigate(stack, browser, tool_host("echo", name, DOMAIN))
        assert answer.status_code == 404, (name, answer.status_code)
    # Nothing was started for anyone at those addresses.
    assert [row["host"] for row in stack.instances() if row["owner_id"] == alice["id"]] == []

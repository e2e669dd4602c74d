"""The live state of tools is told only to who may open them: the catalogue's state endpoint
answers for the signed-in user's own tools and those shared with them, and nothing in the
request can name another user's; a tool host's status and progress pages refuse a user who may
not open that tool. A grantee never learns why the owner's tool failed."""
import pytest

from tests.integration.test_access import _revoke, _share
from tests.integration.test_launch import _host, _launch_until

pytestmark = pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)


def _state(stack, browser, **params):
    answer = browser.get(f"{stack.base_url}/catalogue/state", params=params,
                         headers={"Accept": "application/json"}, timeout=10)
    assert answer.status_code == 200
    return answer.json()["cards"]


def test_a_user_never_sees_the_state_of_another_users_tools(stack, alice, bob):
    as_alice = stack.login(alice)
    stack.open_tool(as_alice, "echo", alice)
    _launch_until(stack, as_alice, "broken", alice, ("FAILED",))
    alice_echo = _host(stack, "echo", alice)

    as_bob = stack.login(bob)
    # Whatever bob adds to the request, the answer is about bob's own tools.
    for params in ({}, {"user": alice["id"]}, {"host": alice_echo}, {"user_id": alice["id"], "slug": "echo"}):
        cards = _state(stack, as_bob, **params)
        text = repr(cards)
        assert alice["host_key"] not in text and "exited with code 3" not in text
        # His own tools have never run (the templates shared by everyone may, from elsewhere).
        shared = {f"tool:{row['slug']}" for row in stack.query("SELECT slug FROM tool_templates WHERE shared")}
        assert {card["state"] for card in cards if card["key"] not in shared} == {None}

    # The tool host's own status and progress pages refuse him too (he signs in there first).
    stack.hand_off(as_bob, "echo", alice)
    for path in ("/__berth/status", "/__berth/progress?next=/"):
        answer = as_bob.get(stack.tool_url("echo", alice, path),
                            headers={"Accept": "application/json", "X-Berth-No-Launch": "1"},
                            allow_redirects=False, timeout=10)
        assert answer.status_code == 403, path
        assert "RUNNING" not in answer.text


def test_a_grantee_sees_the_state_while_shared_but_not_the_failure_reason_nor_after_revoking(stack, alice, bob):
    as_alice = stack.login(alice)
    _launch_until(stack, as_alice, "broken", alice, ("FAILED",))
    assert _share(stack, as_alice, "broken", "user", bob["email"]).status_code == 302
    url = stack.tool_url("broken", alice)

    as_bob = stack.login(bob)
    [shared] = [card for card in _state(stack, as_bob) if card["key"] == f"shared:{url}"]
    assert shared["label"] == "Not running" and shared["error"] is None
    assert "exited with code 3" not in shared["html"] + shared["signature"]
    assert "config missing" not in shared["html"]

    [grant] = stack.query("SELECT id FROM tool_grants WHERE host = :host", host=_host(stack, "broken", alice))
    assert _revoke(stack, as_alice, "broken", grant["id"]).status_code == 302
    assert not [card for card in _state(stack, as_bob) if card["key"].startswith("shared:")]


def test_the_state_endpoint_needs_a_session(stack):
    import requests

    answer = requests.get(f"{stack.base_url}/catalogue/state", headers={"Accept": "application/json"},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 401
    assert "cards" not in answer.text

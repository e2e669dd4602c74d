"""A shared tool belongs to everyone allowed it: the user who happened to open it first cannot
see it as their own instance, nor stop it for everyone; its files are its own."""
import json
import os

import time

from tests.integration.test_access import _shared_url
from tests.integration.test_api import api  # noqa: F401 - a fixture


def _open_board(stack, user):
    """Open the shared tool "board" as user, as a browser does; its running instance's row."""
    browser = stack.login(user)
    browser.get(_shared_url(stack, "board"), headers={"Sec-Fetch-Mode": "navigate"}, timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = browser.get(_shared_url(stack, "board", "/__berth/status"),
                             headers={"X-Berth-No-Launch": "1", "Accept": "application/json"}, timeout=10).json()
        if status["state"] == "RUNNING":
            return [row for row in stack.instances() if row["host"].startswith("board.")
                    and row["state"] == "RUNNING"][0]
        time.sleep(0.1)
    raise AssertionError("the shared tool did not start")


def test_the_first_to_open_a_shared_tool_cannot_stop_it_for_everyone(stack, alice, bob, api):
    row = _open_board(stack, alice)

    as_alice = api(alice)
    mine = as_alice.get(f"{stack.base_url}/api/instances", timeout=10).json()["instances"]
    assert row["id"] not in [instance["id"] for instance in mine]
    stop = as_alice.post(f"{stack.base_url}/api/instances/{row['id']}/stop", timeout=10)
    assert stop.status_code == 404
    assert stack.query("SELECT state FROM tool_instances WHERE id = :id", id=row["id"])[0]["state"] == "RUNNING"
    # Bob, who uses it too, still has it.
    assert _open_board(stack, bob)["id"] == row["id"]


def test_a_shared_tool_runs_as_a_user_of_its_own_with_a_home_of_its_own(stack, alice):
    row = _open_board(stack, alice)
    state = row["backend_state"] if isinstance(row["backend_state"], dict) else json.loads(row["backend_state"])
    tool_uid = os.stat(f"/proc/{state['pid']}").st_uid
    alice_echo = stack.open_tool(stack.login(alice), "echo", alice)
    assert alice_echo.status_code == 200
    homes = stack.data_dir / "homes"
    assert (homes / "shared-board").stat().st_uid == tool_uid
    assert (homes / alice["host_key"]).stat().st_uid != tool_uid

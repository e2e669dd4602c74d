"""One home per user that outlives their tools: on the process backend a folder, on the docker
backend a named volume, each the user's own (0700, their tool uid) and shared by all their tools."""
import json
import os

from tests.actions import stop_instance
from tests.integration.test_launch import _host, _wait_state


def _running(stack, slug, user):
    row = stack.instances(_host(stack, slug, user))[-1]
    state = row["backend_state"]
    return row, (state if isinstance(state, dict) else json.loads(state))


def _stop(stack, browser, row, host):
    stop_instance(browser, stack.base_url, row["id"])
    _wait_state(stack, host, ("STOPPED",))


def _in_container(stack, row, command):
    """Run command in the tool's container as the tool's own user; its output."""
    with stack.docker() as client:
        container = client.containers.get(f"berth-{stack.env['BERTH_DEPLOYMENT']}-{row['id']}")
        user = container.attrs["Config"]["User"]
        code, output = container.exec_run(["sh", "-c", command], user=user)
        return code, output.decode()


def test_files_in_a_docker_tools_home_outlive_the_container(stack, alice):
    browser = stack.login(alice)
    host = _host(stack, "echo-docker", alice)
    stack.open_tool(browser, "echo-docker", alice, timeout=60)
    row, _ = _running(stack, "echo-docker", alice)
    code, output = _in_container(stack, row, "cd && pwd && stat -c '%a %u' . && echo kept > notes.txt")
    assert code == 0, output
    path, mode_and_owner = output.split()[:1] + [" ".join(output.split()[1:3])]
    assert path == "/home/berth" and mode_and_owner.startswith("700 ")
    _stop(stack, browser, row, host)

    stack.open_tool(browser, "echo-docker", alice, timeout=60)
    again, _ = _running(stack, "echo-docker", alice)
    assert again["id"] != row["id"]
    assert _in_container(stack, again, "cat /home/berth/notes.txt") == (0, "kept\n")


def test_each_user_has_a_docker_home_of_their_own(stack, alice, bob):
    for user in (alice, bob):
        stack.open_tool(stack.login(user), "echo-docker", user, timeout=60)
    alice_row, _ = _running(stack, "echo-docker", alice)
    bob_row, _ = _running(stack, "echo-docker", bob)
    _in_container(stack, alice_row, "echo private > /home/berth/alice.txt")
    assert _in_container(stack, bob_row, "cat /home/berth/alice.txt")[0] != 0
    with stack.docker() as client:
        names = {volume.name for volume in client.volumes.list(
            filters={"label": f"berth.deployment={stack.env['BERTH_DEPLOYMENT']}"})}
    deployment = stack.env["BERTH_DEPLOYMENT"]
    assert {f"berth-{deployment}-home-{alice['host_key']}", f"berth-{deployment}-home-{bob['host_key']}"} <= names


def test_a_users_process_tools_share_one_home_that_outlives_them(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    row, state = _running(stack, "echo", alice)
    home = stack.data_dir / "homes" / alice["host_key"]
    assert os.stat(f"/proc/{state['pid']}/cwd").st_ino == home.stat().st_ino
    (home / "notes.txt").write_text("kept")
    _stop(stack, browser, row, _host(stack, "echo", alice))
    stack.open_tool(browser, "echo-api", alice)
    _, other = _running(stack, "echo-api", alice)
    assert os.readlink(f"/proc/{other['pid']}/cwd") == str(home)
    assert (home / "notes.txt").read_text() == "kept"

"""One home per user that outlives their tools: on the process backend a folder, on the docker
backend a named volume, each the user's own (0700, their tool uid) and shared by all their tools;
and team folders, which a group's members' tools share."""
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.actions import stop_instance
from tests.integration.test_launch import _host, _wait_state
from tests.integration.test_lifecycle import normal_worker_afterwards, restart_worker  # noqa: F401 - a fixture


def _running(stack, slug, user):
    row = stack.instances(_host(stack, slug, user))[-1]
    state = row["backend_state"]
    return row, (state if isinstance(state, dict) else json.loads(state))


def _stop(stack, browser, row, host):
    stop_instance(browser, stack.base_url, row["id"])
    _wait_state(stack, host, ("STOPPED",))
    stack.until_stopped_tool_is_let_go(browser, host)  # then reopened at once


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


# -- through the tool itself: write, stop, cull, and a launch by another worker ----------------

def _put(browser, stack, slug, user, path, text):
    return browser.put(stack.tool_url(slug, user, "/files"), params={"path": path}, data=text.encode(), timeout=10)


def _read(browser, stack, slug, user, path):
    answer = browser.get(stack.tool_url(slug, user, "/files"), params={"path": path}, timeout=10)
    return answer.status_code, answer.text


def _cull(stack, row):
    """Date the tool's last activity two days back and run `berth cull`; wait until it is STOPPED."""
    stack.query("UPDATE tool_instances SET last_activity_at = :at WHERE id = :id",
                at=datetime.now(timezone.utc) - timedelta(days=2), id=row["id"])
    result = stack.berth("cull")
    assert result.returncode == 0, result.stderr
    _wait_state(stack, row["host"], ("STOPPED",), timeout=30)


@pytest.mark.parametrize("slug", ["echo", "echo-docker"])
def test_a_file_written_in_a_tool_survives_a_stop_an_idle_cull_and_a_launch_by_another_worker(
        stack, alice, slug, normal_worker_afterwards):
    browser = stack.login(alice)
    host = _host(stack, slug, alice)
    stack.open_tool(browser, slug, alice, timeout=60)
    assert _put(browser, stack, slug, alice, "notes.txt", "kept through it all").status_code == 201
    first, _ = _running(stack, slug, alice)

    _stop(stack, browser, first, host)
    stack.open_tool(browser, slug, alice, timeout=60)
    assert _read(browser, stack, slug, alice, "notes.txt") == (200, "kept through it all")
    second, _ = _running(stack, slug, alice)

    _cull(stack, second)
    worker = stack.processes.processes["worker"].pid
    restart_worker(stack)  # the next launch is another worker's
    assert stack.processes.processes["worker"].pid != worker
    stack.open_tool(browser, slug, alice, timeout=60)
    third, _ = _running(stack, slug, alice)

    assert len({first["id"], second["id"], third["id"]}) == 3
    assert _read(browser, stack, slug, alice, "notes.txt") == (200, "kept through it all")


# -- team folders ------------------------------------------------------------------------------

def make_team(stack, *users, folder=True):
    """A group with its team folder on (or off), whose members are users: its id, name, folder, gid."""
    from berth.extensions import db
    from berth.models import Group, Membership

    with stack.app.app_context():
        group = Group(name=f"Team {os.urandom(3).hex()}", team_folder=folder)
        db.session.add(group)
        db.session.flush()
        db.session.add_all(Membership(group_id=group.id, user_id=user["id"]) for user in users)
        db.session.commit()
        team = {"id": group.id, "name": group.name, "folder": f"{group.name.lower().replace(' ', '-')}-{group.id}",
                "gid": stack.config["BERTH_TEAM_GIDS"][0] + group.id}
        db.session.remove()
    return team


def test_team_members_process_tools_share_the_team_folder_and_edit_each_others_files(stack, alice, bob):
    team = make_team(stack, alice, bob)
    folder = Path(stack.config["BERTH_TEAMS_DIR"]) / team["folder"]
    browsers = {}
    for user in (alice, bob):
        browsers[user["id"]] = stack.login(user)
        stack.open_tool(browsers[user["id"]], "echo", user)
    plan = str(folder / "plan.txt")

    assert _put(browsers[alice["id"]], stack, "echo", alice, plan, "alice's draft").status_code == 201
    assert _read(browsers[bob["id"]], stack, "echo", bob, plan) == (200, "alice's draft")
    assert _put(browsers[bob["id"]], stack, "echo", bob, plan, "bob's edit").status_code == 201
    listing = json.dumps({"entries": ["plan.txt"]})
    assert _read(browsers[alice["id"]], stack, "echo", alice, str(folder)) == (200, listing)

    info, written = folder.stat(), (folder / "plan.txt").stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (0, team["gid"], 0o2770)
    assert (written.st_gid, written.st_mode & 0o777) == (team["gid"], 0o660)  # the team's, and its to edit
    _, state = _running(stack, "echo", alice)
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{state['pid']}/environ").read_text().split("\0") if "=" in item)
    assert environ["BERTH_TEAM_FOLDERS"] == str(folder)


def test_team_members_docker_tools_mount_the_team_volume_with_the_teams_gid(stack, alice, bob):
    team = make_team(stack, alice, bob)
    plan = f"/home/teams/{team['folder']}/plan.txt"
    browsers = {}
    for user in (alice, bob):
        browsers[user["id"]] = stack.login(user)
        stack.open_tool(browsers[user["id"]], "echo-docker", user, timeout=60)

    assert _put(browsers[alice["id"]], stack, "echo-docker", alice, plan, "alice's draft").status_code == 201
    assert _read(browsers[bob["id"]], stack, "echo-docker", bob, plan) == (200, "alice's draft")
    assert _put(browsers[bob["id"]], stack, "echo-docker", bob, plan + ".bob", "bob's note").status_code == 201

    row, _ = _running(stack, "echo-docker", bob)
    code, output = _in_container(stack, row, f"stat -c '%u %g %a' /home/teams/{team['folder']} {plan}; id -G")
    assert code == 0, output
    folder_line, file_line, groups = output.splitlines()
    assert folder_line == f"0 {team['gid']} 2770"
    assert file_line.split()[1] == str(team["gid"])  # setgid: what a member makes stays the team's
    assert str(team["gid"]) in groups.split()
    with stack.docker() as client:
        volume = client.volumes.get(f"berth-{stack.env['BERTH_DEPLOYMENT']}-team-{team['folder']}")
        assert volume.attrs["Labels"]["berth.team"] == team["folder"]


# -- templates without a home ---------------------------------------------------------------

def test_a_process_tool_without_a_home_works_in_a_scratch_folder_that_goes_when_it_stops(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)  # alice's home exists, with a file in it
    home = stack.data_dir / "homes" / alice["host_key"]
    (home / "secret.txt").write_text("mine")
    stack.open_tool(browser, "scratch", alice)
    row, state = _running(stack, "scratch", alice)
    scratch = stack.data_dir / "scratch" / f"instance-{row['id']}"
    assert os.readlink(f"/proc/{state['pid']}/cwd") == str(scratch)
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    # Through the tool itself: its user's home is not where it works, and not its HOME.
    assert _put(browser, stack, "scratch", alice, "note.txt", "scratch").status_code == 201
    assert (scratch / "note.txt").read_text() == "scratch"
    _stop(stack, browser, row, _host(stack, "scratch", alice))
    assert not scratch.exists()
    assert (home / "secret.txt").read_text() == "mine"


def test_a_docker_tool_without_a_home_mounts_none_of_its_users_files(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "scratch-docker", alice, timeout=60)
    row, _ = _running(stack, "scratch-docker", alice)
    with stack.docker() as client:
        mounts = client.api.inspect_container(f"berth-{stack.env['BERTH_DEPLOYMENT']}-{row['id']}")["Mounts"]
    assert [mount for mount in mounts if mount.get("Type") == "volume"] == []
    code, output = _in_container(stack, row, "cd && pwd && echo x > here.txt && cat here.txt")
    assert (code, output.split()) == (0, ["/home/berth", "x"])

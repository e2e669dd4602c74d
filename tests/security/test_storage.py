"""Homes and team folders, attacked from inside a tool: user A's tool can neither read nor list
user B's home, nor read, list or write a team folder that A is not in, on the process backend
and in Docker; and a member removed from a team loses its folder at their next launch.

The hostile tool (hostile_tool.py) runs as an ordinary user's tool and reports, for each
attempt, "ok" or the error it met.
"""
from pathlib import Path

from tests.integration.test_homes import _put, _running, _stop, make_team
from tests.integration.test_launch import _host
from tests.security.test_tool_isolation import hostile_catalogue  # noqa: F401 - a fixture


def _attack(stack, browser, slug, user, plan):
    answer = browser.post(stack.tool_url(slug, user, "/attack"), json=plan, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _breaches(report, *kinds):
    return {kind: {target: result for target, result in report[kind].items() if result == "ok"} for kind in kinds}


def test_a_process_tool_reaches_neither_another_users_home_nor_a_team_folder_of_others(
        stack, alice, bob, hostile_catalogue):
    theirs, ours = make_team(stack, bob), make_team(stack, alice)
    teams_dir = Path(stack.config["BERTH_TEAMS_DIR"])
    victim = stack.login(bob)
    stack.open_tool(victim, "echo", bob)
    bob_home = stack.data_dir / "homes" / bob["host_key"]
    their_folder = teams_dir / theirs["folder"]
    assert _put(victim, stack, "echo", bob, "diary.txt", "bob's alone").status_code == 201
    assert _put(victim, stack, "echo", bob, str(their_folder / "plan.txt"), "the team's alone").status_code == 201

    attacker = stack.login(alice)
    stack.open_tool(attacker, "hostile", alice)
    report = _attack(stack, attacker, "hostile", alice, {
        "read": [str(bob_home / "diary.txt"), str(their_folder / "plan.txt")],
        "list": [str(bob_home), str(stack.data_dir / "homes"), str(their_folder), str(teams_dir)],
        "write": [str(bob_home / "planted.txt"), str(their_folder / "plan.txt"), str(their_folder / "planted.txt"),
                  str(teams_dir / "planted")],
    })

    assert _breaches(report, "read", "list", "write") == {"read": {}, "list": {}, "write": {}}
    assert sorted(report["groups"]) in ([ours["gid"]], sorted([ours["gid"], report["gid"]]))
    assert theirs["gid"] not in report["groups"]
    # Its own team's folder, by contrast, it reads and writes: the attempts above failed for want of access.
    own = _attack(stack, attacker, "hostile", alice, {"list": [str(teams_dir / ours["folder"])],
                                                      "write": [str(teams_dir / ours["folder"] / "ours.txt")]})
    assert list(own["list"].values()) == list(own["write"].values()) == ["ok"]


def test_a_member_removed_from_a_team_loses_its_folder_at_their_next_launch(stack, alice, hostile_catalogue):
    team = make_team(stack, alice)
    folder = str(Path(stack.config["BERTH_TEAMS_DIR"]) / team["folder"])
    browser = stack.login(alice)
    stack.open_tool(browser, "hostile", alice)
    assert list(_attack(stack, browser, "hostile", alice, {"list": [folder]})["list"].values()) == ["ok"]

    stack.query("DELETE FROM memberships WHERE group_id = :group AND user_id = :user",
                group=team["id"], user=alice["id"])
    row, _ = _running(stack, "hostile", alice)
    _stop(stack, browser, row, _host(stack, "hostile", alice))
    stack.open_tool(browser, "hostile", alice)

    report = _attack(stack, browser, "hostile", alice, {"list": [folder], "write": [f"{folder}/still.txt"]})
    assert _breaches(report, "list", "write") == {"list": {}, "write": {}}
    assert team["gid"] not in report["groups"]


def test_a_container_sees_no_other_users_home_and_no_team_folder_of_others(stack, alice, bob, hostile_catalogue):
    theirs, ours = make_team(stack, bob), make_team(stack, alice)
    victim = stack.login(bob)
    stack.open_tool(victim, "echo-docker", bob, timeout=60)
    plan = f"/home/teams/{theirs['folder']}/plan.txt"
    assert _put(victim, stack, "echo-docker", bob, plan, "ours").status_code == 201

    attacker = stack.login(alice)
    stack.open_tool(attacker, "hostile-docker", alice, timeout=60)
    report = _attack(stack, attacker, "hostile-docker", alice, {"read": [f"/home/teams/{theirs['folder']}/plan.txt"]})

    assert report["read"][f"/home/teams/{theirs['folder']}/plan.txt"] != "ok"
    assert theirs["gid"] not in report["groups"] and ours["gid"] in report["groups"]
    listed = _attack(stack, attacker, "hostile-docker", alice, {"entries": ["/home/teams", "/home/berth"]})
    assert listed["entries"]["/home/teams"] == [ours["folder"]]  # no other team's volume is in the container
    assert listed["entries"]["/home/berth"] == []  # alice's own home, empty: none of bob's files

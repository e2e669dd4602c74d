"""A hostile tool, launched by an ordinary user, tries every way out of its box. Each one fails.

The tool (hostile_tool.py) runs on the process backend like any tool. Asked through nginx, it
tries to read Berth's secrets, its database, logs and another user's home; to read Berth's
processes' environments and signal them; to connect to every internal port on every address
of the host and to another user's tool; and to hoard the ports the platform hands to tools.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import images

HOSTILE_TOOL = Path(__file__).with_name("hostile_tool.py")


@pytest.fixture(scope="module")
def hostile_catalogue(berth_stack):
    """A template whose command is the hostile tool, in a folder that every user may read."""
    folder = Path(tempfile.mkdtemp(prefix="berth-hostile-"))
    folder.chmod(0o755)
    shutil.copy(HOSTILE_TOOL, folder / "hostile_tool.py")
    (folder / "hostile_tool.py").chmod(0o644)
    with berth_stack.docker() as client:
        image = images.build_hostile(client)
    catalogue = folder / "catalogue.yml"
    catalogue.write_text(
        "tools:\n"
        "  - slug: hostile\n"
        "    name: Hostile\n"
        "    description: Tries every way out of its box.\n"
        f'    command: ["{{python}}", "{folder}/hostile_tool.py", "--host", "{{ip}}", "--port", "{{port}}"]\n'
        "    spawn_timeout: 30\n"
        "  - slug: hostile-docker\n"
        "    name: Hostile in Docker\n"
        "    description: Tries every way out of its container.\n"
        "    backend: docker\n"
        f"    image: {image}\n"
        '    command: ["python3", "/opt/hostile_tool.py", "--host", "{ip}", "--port", "{port}"]\n'
        "    spawn_timeout: 60\n")
    loaded = berth_stack.berth("catalogue", "load", str(catalogue))
    assert loaded.returncode == 0, loaded.stderr
    yield str(catalogue)
    shutil.rmtree(folder)


def _host_addresses():
    listed = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True)
    return sorted({line.split()[3].split("/")[0] for line in listed.stdout.splitlines()})


def _berth_pids(stack):
    return [process.pid for process in stack.processes.processes.values() if process.poll() is None]


def _instance(stack, slug, user):
    host = stack.tool_url(slug, user).split("//")[1].split(":")[0]
    row = stack.instances(host)[-1]
    state = row["backend_state"]
    return row, (state if isinstance(state, dict) else json.loads(state))


def test_a_hostile_tool_reaches_nothing_of_berth_or_of_other_users(stack, alice, bob, hostile_catalogue):
    victim = stack.login(bob)
    stack.open_tool(victim, "echo", bob)
    victim_row, victim_state = _instance(stack, "echo", bob)
    homes = stack.data_dir / "homes"
    secret_note = homes / bob["host_key"] / "notes.txt"
    secret_note.write_text("bob's private notes")

    attacker = stack.login(alice)
    stack.open_tool(attacker, "hostile", alice)

    ports = [int(stack.env[name]) for name in ("BERTH_HTTP_PORT", "BERTH_AUTH_PORT", "BERTH_WEB_PORT")]
    for url in (stack.env.get("BERTH_DATABASE_URL", ""), stack.env.get("BERTH_REDIS_URL", "")):
        if "@" in url or "://" in url:
            port = url.rsplit(":", 1)[-1].split("/")[0]
            if port.isdigit():
                ports.append(int(port))
    targets = [f"{address}:{port}" for address in _host_addresses() for port in ports]
    targets.append(victim_row["upstream"])
    low, high = (int(part) for part in stack.env["BERTH_PORT_RANGE"].split("-"))
    berth_pids = _berth_pids(stack) + [victim_state["pid"]]
    plan = {
        "read": [str(stack.data_dir / name) for name in ("secret_key", "proxy_secret", "database/berth.db",
                                                         "database/queue.db", "admin_password")]
                + [str(secret_note), str(stack.data_dir / "logs" / f"instance-{victim_row['id']}.err"),
                   str(stack.data_dir / "nginx" / "nginx.conf")],  # it holds the proxy secret
        "list": [str(stack.data_dir), str(homes), str(homes / bob["host_key"]), str(stack.data_dir / "logs"), str(stack.data_dir / "database"),
                 str(stack.data_dir / "nginx"), str(stack.data_dir / "nginx" / "tmp" / "proxy")],
        "environ": berth_pids,
        "signal": berth_pids,
        "connect": targets,
        "hoard": high - low + 1,
        "hoard_range": [low, high],
    }
    answer = attacker.post(stack.tool_url("hostile", alice, "/attack"), json=plan, timeout=60)
    assert answer.status_code == 200, answer.text
    report = answer.json()

    assert report["uid"] not in (0, os.getuid())
    assert report["groups"] in ([], [report["gid"]])
    assert int(report["capabilities"], 16) == 0
    for kind in ("read", "list", "environ", "signal", "connect"):
        breaches = {target: result for target, result in report[kind].items() if result == "ok"}
        assert not breaches, f"the hostile tool could {kind}: {breaches}"

    # It bound every port of the range but its own, in its own namespace only: the next
    # launch still gets a port and starts.
    assert report["hoarded"] >= high - low
    third = stack.create_user()
    stack.open_tool(stack.login(third), "echo", third)


def test_tools_of_two_users_run_as_different_unprivileged_users(stack, alice, bob):
    uids = []
    for user in (alice, bob):
        stack.open_tool(stack.login(user), "echo", user)
        _, state = _instance(stack, "echo", user)
        uids.append(os.stat(f"/proc/{state['pid']}").st_uid)
    assert 0 not in uids and os.getuid() not in uids
    assert uids[0] != uids[1]


def test_a_users_home_is_theirs_alone(stack, alice):
    stack.open_tool(stack.login(alice), "echo", alice)
    _, state = _instance(stack, "echo", alice)
    home = stack.data_dir / "homes" / alice["host_key"]
    info = home.stat()
    assert info.st_mode & 0o777 == 0o700
    assert info.st_uid == os.stat(f"/proc/{state['pid']}").st_uid
    assert stack.data_dir.stat().st_mode & 0o077 in (0o011, 0o001, 0o010, 0)


def test_stopping_a_tool_removes_its_namespace_and_everything_in_it(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    row, state = _instance(stack, "echo", alice)
    namespace = state["namespace"]
    assert namespace in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    stack.query("UPDATE tool_instances SET state = 'STOPPING' WHERE id = :id", id=row["id"])
    with stack.app.app_context():
        from berth.launch.state_machine import stop_instance

        assert stop_instance(row["id"]) == "stopped"
    deadline = time.monotonic() + 10
    while namespace in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, f"{namespace} is still there"
        time.sleep(0.1)


def test_a_launch_puts_back_a_firewall_rule_that_went_missing(stack, alice):
    """The worker skips its dozen and a half rule checks while the filter table is as it last
    found it complete (sandbox.install_firewall): a table that changed is checked in full again."""
    rule = ["BERTH-TOOLS-IN", "-j", "DROP"]
    stack.open_tool(stack.login(alice), "echo", alice)  # the worker has found the table complete
    subprocess.run(["iptables", "-w", "-D", *rule], check=True)
    try:
        third = stack.create_user()
        stack.open_tool(stack.login(third), "echo", third)
        assert subprocess.run(["iptables", "-w", "-C", *rule]).returncode == 0, "the rule is still missing"
    finally:
        if subprocess.run(["iptables", "-w", "-C", *rule]).returncode != 0:
            subprocess.run(["iptables", "-w", "-A", *rule], check=True)


def test_a_hostile_container_reaches_no_other_tool_and_no_internal_port(stack, alice, bob, hostile_catalogue):
    victim = stack.login(bob)
    stack.open_tool(victim, "echo-docker", bob)
    victim_row, _ = _instance(stack, "echo-docker", bob)
    stack.open_tool(victim, "echo", bob)
    process_victim, _ = _instance(stack, "echo", bob)

    attacker = stack.login(alice)
    stack.open_tool(attacker, "hostile-docker", alice, timeout=60)
    attacker_row, _ = _instance(stack, "hostile-docker", alice)
    with stack.docker() as client:  # the host's address on the tool's own bridge network
        network = client.networks.get(f"berth-{stack.env['BERTH_DEPLOYMENT']}-{attacker_row['id']}")
        gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    ports = [int(stack.env[name]) for name in ("BERTH_HTTP_PORT", "BERTH_AUTH_PORT", "BERTH_WEB_PORT")]
    targets = [f"{address}:{port}" for address in [gateway, *_host_addresses()] for port in ports]
    targets += [victim_row["upstream"], process_victim["upstream"]]
    answer = attacker.post(stack.tool_url("hostile-docker", alice, "/attack"),
                           json={"connect": targets, "read": ["/proc/1/environ"]}, timeout=60)
    assert answer.status_code == 200, answer.text
    report = answer.json()

    assert report["uid"] != 0
    assert int(report["capabilities"], 16) == 0
    breaches = {target: result for target, result in report["connect"].items() if result == "ok"}
    assert not breaches, f"the hostile container could connect to: {breaches}"


@pytest.mark.parametrize("internal", ["/__berth_auth", "/__berth/static/berth.css", "/auth/check"])
def test_a_tools_answer_cannot_send_nginx_to_an_internal_location(stack, alice, hostile_catalogue, internal):
    browser = stack.login(alice)
    stack.open_tool(browser, "hostile", alice)
    answer = browser.get(stack.tool_url("hostile", alice, f"/accel?{internal}"), timeout=10)
    assert answer.status_code == 200
    assert answer.content == b""  # the tool's own empty answer, not the internal location's


def test_single_user_mode_says_so_and_refuses_a_second_users_launch(tmp_path):
    """BERTH_TOOL_ISOLATION=single-user: the catalogue says so, and with two active users a
    launch is refused with the reason instead of running tools as Berth's own user."""
    from types import SimpleNamespace

    from berth.backends.base import LaunchFailed
    from berth.backends.process import refuse_second_user
    from berth.extensions import db
    from berth.models import User
    from webapp import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/single.db", "TESTING": True,
                      "BERTH_TOOL_ISOLATION": "single-user", "WTF_CSRF_ENABLED": False})
    with app.app_context():
        db.create_all()
        first = User(email="one@example.org", name="one")
        db.session.add(first)
        db.session.commit()
        refuse_second_user(SimpleNamespace(owner_id=first.id))  # one person: allowed
        db.session.add(User(email="two@example.org", name="two"))
        db.session.commit()
        with pytest.raises(LaunchFailed, match="single-user mode"):
            refuse_second_user(SimpleNamespace(owner_id=first.id))
    page = app.test_client().get("/", base_url=f"http://{app.config['BERTH_DOMAIN']}", headers={"X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"],
                                               "X-Berth-User-Id": "1"})
    assert "Single-user mode" in page.get_data(as_text=True)

"""Berth's own processes hold no more privilege than they need: nginx's workers, which handle
every request, never run as root, and nothing they or a tool can reach holds Berth's secrets."""
import os
import pwd
import stat
from pathlib import Path

import pytest

from tests.services import stat_fields


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(stat_fields(entry)[1]) == pid:
                found.append(int(entry))
        except OSError:
            continue
    return found


def _uid(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Uid:"):
                return int(line.split()[1])  # the real uid; effective and saved follow it
    raise AssertionError(f"no Uid line for {pid}")


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx keeps the user that starts it when not root")
def test_nginx_workers_run_as_the_nginx_user_not_root(stack):
    master = stack.processes.processes["nginx"].pid
    workers = _children(master)
    assert workers, "nginx has no worker processes"
    expected = pwd.getpwnam(stack.env.get("BERTH_NGINX_USER") or "www-data").pw_uid
    assert {_uid(pid) for pid in workers} == {expected} and expected != 0


def test_nginx_configuration_with_the_proxy_secret_is_readable_by_its_owner_only(stack):
    prefix = stack.processes.data_dir / "nginx"
    mode = stat.S_IMODE(os.stat(prefix / "nginx.conf").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(prefix / "logs").st_mode) == 0o700
    # The prefix can be passed through (its workers reach their temporary folders), not listed.
    assert stat.S_IMODE(os.stat(prefix).st_mode) & 0o077 in (0, 0o011)


def _process_tree(pid):
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += _children(current)
    return tree


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run Berth's services as another user")
@pytest.mark.parametrize("role", ["auth", "web"])
def test_auth_service_and_web_app_run_as_the_service_user_not_root(stack, role):
    """They answer every request, so a flaw in them must not hand out root: every process of
    theirs (granian's workers too) runs as BERTH_SERVICE_USER, with no other group."""
    account = pwd.getpwnam(stack.env.get("BERTH_SERVICE_USER") or "berth")
    tree = _process_tree(stack.processes.processes[role].pid)
    assert len(tree) > 1, f"{role} has no worker processes"
    assert {_uid(pid) for pid in tree} == {account.pw_uid} and account.pw_uid != 0
    for pid in tree:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        assert fields["Groups"].split() in ([], [str(account.pw_gid)]), f"{role} {pid} keeps groups"
        assert int(fields["CapEff"], 16) == 0, f"{role} {pid} keeps capabilities"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run Berth's services as another user")
def test_the_service_user_cannot_read_what_only_root_needs(stack):
    """The secrets files, the admin password and nginx's configuration (with the proxy secret)
    stay root's; the service user gets the secrets it needs from its environment only."""
    account = pwd.getpwnam(stack.env.get("BERTH_SERVICE_USER") or "berth")
    data_dir = stack.processes.data_dir
    for path in [data_dir / "secret_key", data_dir / "proxy_secret", data_dir / "nginx" / "nginx.conf"]:
        if path.exists():
            info = os.stat(path)
            assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600, path
    # And for real: as that user, reading them fails.
    import subprocess
    import sys

    probe = ("import sys\nfor path in sys.argv[1:]:\n    try:\n        open(path).read()\n"
             "        print('READ', path)\n    except OSError:\n        pass\n")
    paths = [str(data_dir / name) for name in ("secret_key", "proxy_secret", "admin_password")]
    paths.append(str(data_dir / "nginx" / "nginx.conf"))
    result = subprocess.run([sys.executable, "-c", probe, *paths], user=account.pw_uid, group=account.pw_gid,
                            extra_groups=[], capture_output=True, text=True, cwd="/")
    assert "READ" not in result.stdout, result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run Berth's services as another user")
def test_the_service_user_owns_the_database_and_counters_and_nothing_else(stack):
    """What the auth service and the web app write (the SQLite database and queue, the metrics
    files) is theirs and closed to others; nothing else in the data directory is theirs."""
    account = pwd.getpwnam(stack.env.get("BERTH_SERVICE_USER") or "berth")
    data_dir = stack.processes.data_dir
    theirs = {data_dir / "database", data_dir / "metrics"}
    for folder, dirs, files in os.walk(data_dir):
        dirs[:] = [name for name in dirs if name != "homes"]  # tools' own
        for path in [Path(folder) / name for name in dirs + files]:
            info = os.lstat(path)
            if info.st_uid == account.pw_uid:
                assert theirs & ({path} | set(path.parents)), f"{path} belongs to the service user"
                assert stat.S_IMODE(info.st_mode) & 0o007 == 0, f"{path} is open to others"
    if stack.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        info = os.stat(data_dir / "database")
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (account.pw_uid, 0o700)
        for name in ("berth.db", "queue.db"):
            assert os.stat(data_dir / "database" / name).st_uid == account.pw_uid, name


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run Berth's services as another user")
def test_the_service_user_cannot_enter_a_users_home(stack, alice):
    """The web app shows what homes hold only as the worker measured them (berth/homes.py): it
    may not read them itself."""
    import subprocess
    import sys

    account = pwd.getpwnam(stack.env.get("BERTH_SERVICE_USER") or "berth")
    with stack.login(alice) as browser:
        stack.open_tool(browser, "echo", alice)
    home = Path(stack.config["BERTH_HOMES_DIR"]) / alice["host_key"]
    assert home.is_dir()
    result = subprocess.run([sys.executable, "-c", "import os, sys; os.listdir(sys.argv[1])", str(home)],
                            user=account.pw_uid, group=account.pw_gid, extra_groups=[],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode != 0 and "PermissionError" in result.stderr

"""Berth's own processes hold no more privilege than they need: nginx's workers, which handle
every request, never run as root, and nothing they or a tool can reach holds Berth's secrets."""
import os
import pwd
import stat

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

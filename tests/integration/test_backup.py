"""The backup recipe of docs/operations.md (Homes and backups), carried out on the process backend:
the homes, archived with tar --numeric-owner and restored, come back with their owners and modes."""
import os
import shutil
import subprocess

from tests.integration.test_homes import _running, _stop
from tests.integration.test_launch import _host


def _tar(*args):
    subprocess.run(["tar", "--numeric-owner", *args], check=True, capture_output=True)


def test_homes_backed_up_wiped_and_restored_come_back_with_owner_and_mode(stack, alice, tmp_path):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    row, _ = _running(stack, "echo", alice)
    homes = stack.data_dir / "homes"
    home = homes / alice["host_key"]
    uid = home.stat().st_uid
    subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c",
                    f"cd {home} && echo kept > notes.txt && chmod 640 notes.txt"], check=True)
    _stop(stack, browser, row, _host(stack, "echo", alice))
    archive = tmp_path / "homes.tar.gz"

    _tar("-cpzf", str(archive), "-C", str(stack.data_dir), "homes")
    shutil.rmtree(homes)
    _tar("-xpzf", str(archive), "-C", str(stack.data_dir))

    notes = os.stat(home / "notes.txt")
    assert (notes.st_uid, notes.st_gid, notes.st_mode & 0o777) == (uid, uid, 0o640)
    restored = os.stat(home)
    assert (restored.st_uid, restored.st_mode & 0o777) == (uid, 0o700)
    stack.open_tool(browser, "echo", alice)  # the user's next tool works in the restored home
    _, state = _running(stack, "echo", alice)
    assert os.stat(f"/proc/{state['pid']}/cwd").st_ino == restored.st_ino
    assert (home / "notes.txt").read_text() == "kept\n"

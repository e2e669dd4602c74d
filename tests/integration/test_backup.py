"""The backup recipe of docs/operations.md (Homes and backups), carried out for real: the database
(pg_dump and pg_restore on PostgreSQL, sqlite3 .backup and .restore on SQLite), the homes and the
team folders (tar --numeric-owner) are backed up, wiped and restored by the documented commands,
and the user signs in again and finds their files through their tool, with owners and modes kept."""
import os
import shutil
import subprocess

from tests.integration.test_homes import _put, _read, _running, _stop, make_team
from tests.integration.test_launch import _host


def _run(*argv):
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"


def _postgres_url(stack):
    """BERTH_DATABASE_URL without "+psycopg", as the PostgreSQL tools take it; None on SQLite."""
    url = stack.env.get("BERTH_DATABASE_URL")
    return url.replace("postgresql+psycopg://", "postgresql://", 1) if url else None


def _sqlite_file(stack):
    """The SQLite database's file, wherever the data directory keeps it."""
    return stack.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")


def _ownership(*paths):
    return [(info.st_uid, info.st_gid, info.st_mode & 0o7777) for info in map(os.stat, paths)]


def _disconnect(stack):
    from berth.extensions import db

    with stack.app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_backup_a_wipe_and_a_restore_by_the_documented_commands_bring_the_account_and_its_files_back(
        stack, tmp_path):
    carol = stack.create_user()
    team = make_team(stack, carol)
    browser = stack.login(carol)
    stack.open_tool(browser, "echo", carol)
    folder = f"{stack.config['BERTH_TEAMS_DIR']}/{team['folder']}"
    assert _put(browser, stack, "echo", carol, "notes.txt", "kept").status_code == 201
    assert _put(browser, stack, "echo", carol, f"{folder}/plan.txt", "the team's").status_code == 201
    row, _ = _running(stack, "echo", carol)
    _stop(stack, browser, row, _host(stack, "echo", carol))
    data, home = stack.data_dir, stack.data_dir / "homes" / carol["host_key"]
    kept = [home, home / "notes.txt", folder, f"{folder}/plan.txt"]
    owners = _ownership(*kept)
    postgres = _postgres_url(stack)

    # Back up (docs/operations.md), Berth running.
    if postgres:
        _run("pg_dump", "--format=custom", f"--file={tmp_path}/berth.dump", postgres)
    else:
        _run("sqlite3", _sqlite_file(stack), f".backup {tmp_path}/berth.db.backup")
    _run("tar", "--numeric-owner", "-cpzf", f"{tmp_path}/homes.tar.gz", "-C", str(data), "homes", "teams")

    # The disaster: Berth stopped, its database emptied, the homes and team folders gone.
    stack.processes.stop_all()
    _disconnect(stack)
    if postgres:
        _run("psql", "--quiet", postgres, "-c", "DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    else:
        os.remove(_sqlite_file(stack))
    shutil.rmtree(data / "homes")
    shutil.rmtree(data / "teams")

    # Restore (docs/operations.md), Berth stopped; then start it.
    if postgres:
        _run("pg_restore", "--clean", "--if-exists", f"--dbname={postgres}", f"{tmp_path}/berth.dump")
    else:
        _run("sqlite3", _sqlite_file(stack), f".restore {tmp_path}/berth.db.backup")
        _run("chown", f"--reference={os.path.dirname(_sqlite_file(stack))}", _sqlite_file(stack))
    _run("tar", "--numeric-owner", "-xpzf", f"{tmp_path}/homes.tar.gz", "-C", str(data))
    stack.start()

    again = stack.login(carol)  # the account is back: the password signs in
    stack.open_tool(again, "echo", carol)
    assert _read(again, stack, "echo", carol, "notes.txt") == (200, "kept")
    assert _read(again, stack, "echo", carol, f"{folder}/plan.txt") == (200, "the team's")
    assert _ownership(*kept) == owners

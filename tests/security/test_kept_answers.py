"""The auth check's kept answer rows (docs/decisions/0025-answers-kept-while-the-database-is-unchanged.md).

On SQLite the check keeps a cookie's answer row for as long as the database is unchanged, and
reads the query again after any commit, from any process. These are the attacks on that: a
session revoked, a membership taken away, a tool stopped, each by another process, must count
at the very next check, and time (expiry, idleness) must count with no write at all. The
auth service runs in process on a SQLite file; the "other process" is a real one.
"""
import subprocess
import sys
from datetime import timedelta

import pytest

import auth_service
from auth_service import check as check_module
from auth_service.check import AuthCheck
from berth.extensions import db
from berth.hosts import tool_cookie_name
from berth.models import (Group, Membership, Session, ToolInstance, ToolSignIn, ToolTemplate, User, hash_token,
                          utcnow)
from berth.settings import load_settings

SESSION_TOKEN = "session-token-of-ada"
TOOL_TOKEN = "tool-token-of-ada"
UPSTREAM = "127.0.0.1:20001"


def _write_from_another_process(path, sql):
    """One statement, committed by a process of its own (as the web app or the worker would)."""
    subprocess.run([sys.executable, "-c", "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n"
                    "c.execute(sys.argv[2])\nc.commit()", str(path), sql], check=True, timeout=30)


@pytest.fixture
def berth_auth(tmp_path):
    """An auth service on a SQLite file; Ada signed in on her echo tool's host, which runs."""
    path = tmp_path / "berth.db"
    config = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_DATABASE_URL": f"sqlite:///{path}"})
    config["TESTING"] = True
    app = auth_service.create_app(config)
    with app.app_context():
        db.create_all()
        ada = User(email="ada@example.org", name="Ada")
        group = Group(name="analysts")
        template = ToolTemplate(slug="echo", name="Echo", command=["true"], groups=[group])
        db.session.add_all([ada, group, template])
        db.session.flush()
        db.session.add(Membership(group_id=group.id, user_id=ada.id))
        session = Session(token_hash=hash_token(SESSION_TOKEN), user_id=ada.id,
                          expires_at=utcnow() + timedelta(days=1))
        db.session.add(session)
        db.session.flush()
        host = f"echo--{ada.address_name}.{config['BERTH_DOMAIN']}"
        db.session.add(ToolSignIn(session_id=session.id, host=host, code_hash=hash_token("code"),
                                  code_expires_at=utcnow(), token_hash=hash_token(TOOL_TOKEN)))
        db.session.add(ToolInstance(template_id=template.id, owner_id=ada.id, host=host, state="RUNNING",
                                    backend="process", upstream=UPSTREAM, port=20001))
        db.session.commit()
        ids = {"session": session.id, "user": ada.id, "group": group.id}
    check = app.wsgi_app
    while not isinstance(check, AuthCheck):
        check = check.app
    reads = []
    read = check.database.row
    check.database.row = lambda sql, params: reads.append(sql) or read(sql, params)
    client = app.test_client(use_cookies=False)  # the Cookie header below, as nginx passes it
    headers = {"X-Berth-Proxy-Secret": config["BERTH_PROXY_SECRET"], "X-Original-Host": f"{host}:8080",
               "X-Original-URI": "/", "Cookie": f"{tool_cookie_name(config)}={TOOL_TOKEN}"}

    def ask():
        answer = client.get("/auth/check", headers=headers)
        return answer.status_code, answer.headers.get("X-Berth-Upstream"), answer.headers.get("X-Berth-Page")

    def groups_sent():
        return client.get("/auth/check", headers=headers).headers.get("X-Berth-User-Groups")

    yield {"ask": ask, "reads": reads, "path": path, "ids": ids, "app": app, "groups_sent": groups_sent}
    with app.app_context():
        db.engine.dispose()


def _kept(berth_auth):
    """Ask until the row is kept. The first answer records the tool's activity, a write of the
    check's own connection, after which the row is read once more."""
    assert berth_auth["ask"]() == (200, UPSTREAM, None)
    assert berth_auth["ask"]() == (200, UPSTREAM, None)
    reads = len(berth_auth["reads"])
    assert berth_auth["ask"]() == (200, UPSTREAM, None)
    assert len(berth_auth["reads"]) == reads  # kept: else this file tests nothing


def test_an_unchanged_database_answers_from_the_kept_row(berth_auth):
    _kept(berth_auth)
    assert len(berth_auth["reads"]) == 2


def test_a_session_revoked_by_another_process_counts_at_the_next_check(berth_auth):
    _kept(berth_auth)
    _write_from_another_process(berth_auth["path"],
                                f"UPDATE sessions SET revoked_at = '2020-01-01 00:00:00.000000' "
                                f"WHERE id = {berth_auth['ids']['session']}")
    assert berth_auth["ask"]()[0] == 401


def test_a_membership_taken_away_counts_at_the_next_check(berth_auth):
    _kept(berth_auth)
    _write_from_another_process(berth_auth["path"], f"DELETE FROM memberships WHERE user_id = {berth_auth['ids']['user']}")
    assert berth_auth["ask"]()[0] == 403


def test_a_user_deactivated_counts_at_the_next_check(berth_auth):
    _kept(berth_auth)
    _write_from_another_process(berth_auth["path"], f"UPDATE users SET is_active = 0 WHERE id = {berth_auth['ids']['user']}")
    assert berth_auth["ask"]()[0] == 401


def test_a_tool_stopped_by_another_process_is_not_reached_after(berth_auth):
    _kept(berth_auth)
    _write_from_another_process(berth_auth["path"], "UPDATE tool_instances SET state = 'STOPPED'")
    status, upstream, page = berth_auth["ask"]()
    assert upstream != UPSTREAM and page == "start"


def test_a_change_by_another_connection_of_the_same_process_counts(berth_auth):
    _kept(berth_auth)
    with berth_auth["app"].app_context():
        db.session.execute(db.update(Session).values(revoked_at=utcnow()))
        db.session.commit()
    assert berth_auth["ask"]()[0] == 401


@pytest.fixture
def clock(monkeypatch):
    """The auth check's clock, moved on by hand: no production lifetime is shortened."""
    ahead = []

    def now():
        return utcnow() + sum(ahead, timedelta())

    monkeypatch.setattr(check_module, "utcnow", now)
    return ahead


def test_a_session_that_expires_meanwhile_is_refused_without_any_write(berth_auth, clock):
    _kept(berth_auth)
    reads = len(berth_auth["reads"])
    clock.append(timedelta(days=1, seconds=1))  # the session was made to last a day
    assert berth_auth["ask"]()[0] == 401
    assert len(berth_auth["reads"]) == reads  # the kept row was refused on its own expiry


def test_a_session_idle_too_long_meanwhile_is_refused_without_any_write(berth_auth, clock):
    _kept(berth_auth)
    reads = len(berth_auth["reads"])
    idle = berth_auth["app"].config["BERTH_SESSION_IDLE_LIFETIME"]
    assert idle and idle < 24 * 3600  # idle comes before the day-long expiry
    clock.append(timedelta(seconds=idle + 1))
    assert berth_auth["ask"]()[0] == 401
    assert len(berth_auth["reads"]) == reads


def test_the_checks_own_write_is_read_back(berth_auth, clock):
    """The session's last use, written by the check itself, which SQLite's data version does not
    count: a kept row would hold the old time, and the session would seem idle too long."""
    _kept(berth_auth)
    activity = berth_auth["app"].config["BERTH_ACTIVITY_INTERVAL"]
    idle = berth_auth["app"].config["BERTH_SESSION_IDLE_LIFETIME"]
    clock.append(timedelta(seconds=activity + 1))
    assert berth_auth["ask"]()[0] == 200  # marks the session as seen now: a write of its own
    clock.append(timedelta(seconds=idle - activity // 2))  # idle since the kept row's time
    assert berth_auth["ask"]()[0] == 200  # but not since the write


def test_the_groups_a_tool_is_told_follow_a_membership_added_by_another_process(berth_auth):
    """A tool that asks for identity headers is told the user's groups: kept with the rows, and
    read again after any change."""
    _write_from_another_process(berth_auth["path"], "UPDATE tool_templates SET identity_headers = 1")
    _kept(berth_auth)
    assert berth_auth["groups_sent"]() == "analysts"
    _write_from_another_process(berth_auth["path"], "INSERT INTO groups (name, created_at, team_folder) "
                                                    "VALUES ('reviewers', '2026-01-01 00:00:00.000000', 0)")
    _write_from_another_process(berth_auth["path"], f"INSERT INTO memberships (group_id, user_id, source, created_at) "
                                                    f"SELECT id, {berth_auth['ids']['user']}, 'local', "
                                                    f"'2026-01-01 00:00:00.000000' FROM groups WHERE name = 'reviewers'")
    assert berth_auth["groups_sent"]() == "analysts,reviewers"

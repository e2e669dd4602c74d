"""Migration 0013 on SQLite and PostgreSQL: every user gets an address name (the oldest account
keeps the plain one), and personal tools' instances and grants move to the readable address and
back again on downgrade; shared tools' stay where they are."""
import os

import flask_migrate
import pytest
from sqlalchemy import text

from berth.extensions import db
from berth.models import Grant, State, ToolInstance, ToolTemplate, User
from webapp import create_app


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/berth.db"
    return request.getfixturevalue("postgres").create_database(f"migration_{os.urandom(4).hex()}")


def _rows(statement):
    return [tuple(row) for row in db.session.execute(text(statement)).all()]


def test_address_names_and_hosts_move_with_the_migration(database_url):
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True})
    with app.app_context():
        flask_migrate.upgrade()
        ada, twin, other = (User(email="ada@example.org"), User(email="Ada@example.net", name="Ada"),
                            User(email="grace@example.org"))
        echo = ToolTemplate(slug="echo", name="Echo", command=["echo"])
        board = ToolTemplate(slug="board", name="Board", command=["echo"], shared=True)
        db.session.add_all([ada, twin, other, echo, board])
        db.session.flush()
        current = {user.id: f"echo--{user.address_name}.berth.localhost" for user in (ada, twin)}
        legacy = {user.id: f"echo-{user.host_key}.berth.localhost" for user in (ada, twin)}
        db.session.add_all([
            ToolInstance(template=echo, owner=ada, host=current[ada.id], state=State.RUNNING, backend="process"),
            ToolInstance(template=echo, owner=twin, host=current[twin.id], state=State.STOPPED, backend="process"),
            ToolInstance(template=board, owner=other, host="board.berth.localhost", state=State.RUNNING,
                         backend="process"),
            Grant(host=current[ada.id], template=echo, owner=ada, user=other),
        ])
        db.session.commit()
        assert (ada.address_name, twin.address_name, other.address_name) == ("ada", "ada-2", "grace")
        ada, twin, other = ada.id, twin.id, other.id
        db.session.close()  # the migration's ALTER TABLE must not wait for this session's locks
        hosts = "SELECT owner_id, host FROM tool_instances ORDER BY id"

        flask_migrate.downgrade(revision="0012")
        assert _rows(hosts) == [(ada, legacy[ada]), (twin, legacy[twin]), (other, "board.berth.localhost")]
        assert _rows("SELECT host FROM tool_grants") == [(legacy[ada],)]
        db.session.close()

        flask_migrate.upgrade()
        assert _rows("SELECT email, address_name FROM users ORDER BY id") == [
            ("ada@example.org", "ada"), ("Ada@example.net", "ada-2"), ("grace@example.org", "grace")]
        assert _rows(hosts) == [(ada, current[ada]), (twin, current[twin]), (other, "board.berth.localhost")]
        assert _rows("SELECT host FROM tool_grants") == [(current[ada],)]
        db.session.remove()
        db.engine.dispose()

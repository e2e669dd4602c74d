"""The guarantees the schema itself gives (berth/models.py, migrations/), on SQLite.

Each test runs twice: on the schema the migrations build (what production runs) and on the
one the models declare, so the two cannot drift apart unnoticed.
"""
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from webapp import create_app
from berth.extensions import db
from berth.models import Event, State, ToolInstance, ToolTemplate, User

BERTH = os.path.join(os.path.dirname(sys.executable), "berth")


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    """An empty database per schema, built once; each test gets its own copy."""
    data_dir = tmp_path_factory.mktemp("schemas")
    env = {**os.environ, "BERTH_DATA_DIR": str(data_dir),
           "BERTH_DATABASE_URL": f"sqlite:///{data_dir}/migrations.db"}
    done = subprocess.run([BERTH, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{data_dir}/models.db"})
    with app.app_context():
        db.create_all()
        db.engine.dispose()
    return data_dir


@pytest.fixture(params=["migrations", "models"])
def app(request, tmp_path, schemas):
    shutil.copy(schemas / f"{request.param}.db", tmp_path / "t.db")
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/t.db", "TESTING": True})
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def owner(app):
    user = User(email="ada@example.org", name="Ada")
    db.session.add(user)
    db.session.commit()
    return user


@pytest.fixture
def template(app):
    template = ToolTemplate(slug="echo", name="Echo", command=["echo"])
    db.session.add(template)
    db.session.commit()
    return template


@pytest.fixture
def make_instance(owner, template):
    def make(state=State.QUEUED, host="echo-0a1b2c3d.berth.localhost", port=None, commit=True):
        instance = ToolInstance(template_id=template.id, owner_id=owner.id, host=host, state=state,
                                backend="process", port=port)
        db.session.add(instance)
        if commit:
            db.session.commit()
        return instance
    return make


def live_instances(host="echo-0a1b2c3d.berth.localhost"):
    return db.session.execute(
        select(ToolInstance).where(ToolInstance.host == host, ToolInstance.state.in_(State.LIVE))
    ).scalars().all()


# -- one live instance per host ---------------------------------------------------------

def test_a_second_queued_instance_for_the_same_host_is_refused(make_instance):
    make_instance(State.QUEUED)
    with pytest.raises(IntegrityError):
        make_instance(State.QUEUED)
    db.session.rollback()
    assert len(live_instances()) == 1


@pytest.mark.parametrize("existing", State.LIVE)
def test_no_new_launch_beside_an_instance_in_any_live_state(make_instance, existing):
    make_instance(existing)
    with pytest.raises(IntegrityError):
        make_instance(State.QUEUED)
    db.session.rollback()
    assert [i.state for i in live_instances()] == [existing]


def test_stopped_and_failed_instances_coexist_with_a_live_one(make_instance):
    for state in (State.STOPPED, State.STOPPED, State.FAILED, State.FAILED):
        make_instance(state)
    make_instance(State.RUNNING)
    assert db.session.execute(select(ToolInstance.state).order_by(ToolInstance.id)).scalars().all() == [
        "STOPPED", "STOPPED", "FAILED", "FAILED", "RUNNING"]


def test_other_hosts_each_have_their_own_live_instance(make_instance):
    make_instance(State.RUNNING, host="echo-0a1b2c3d.berth.localhost")
    make_instance(State.RUNNING, host="echo-11111111.berth.localhost")
    make_instance(State.QUEUED, host="lab-0a1b2c3d.berth.localhost")
    assert len(db.session.execute(select(ToolInstance)).scalars().all()) == 3


def test_a_new_launch_is_allowed_once_the_live_instance_has_ended(make_instance):
    first = make_instance(State.RUNNING)
    first.state = State.STOPPED
    db.session.commit()
    second = make_instance(State.QUEUED)
    assert [i.id for i in live_instances()] == [second.id]


def test_an_ended_instance_cannot_come_back_to_life_beside_a_live_one(make_instance):
    old = make_instance(State.FAILED)
    make_instance(State.QUEUED)
    with pytest.raises(IntegrityError):
        db.session.execute(update(ToolInstance).where(ToolInstance.id == old.id).values(state=State.SPAWNING))
    db.session.rollback()
    assert len(live_instances()) == 1


def test_racing_start_pages_create_one_instance(app, owner, template):
    # Two replicas each insert a QUEUED row for the same host; the second insert loses.
    insert = text("INSERT INTO tool_instances (template_id, owner_id, host, state, step, backend, "
                  "backend_state, error_shown, created_at) VALUES (:t, :o, :h, 'QUEUED', '', 'process', "
                  "'{}', 0, '2024-01-01 00:00:00')")
    params = {"t": template.id, "o": owner.id, "h": "echo-0a1b2c3d.berth.localhost"}
    with db.engine.connect() as first, db.engine.connect() as second:
        first.execute(insert, params)
        first.commit()
        with pytest.raises(IntegrityError):
            second.execute(insert, params)
        second.rollback()
    assert len(live_instances()) == 1


# -- one live instance per port ---------------------------------------------------------

def test_two_live_instances_never_share_a_port(make_instance):
    make_instance(State.RUNNING, host="a-0a1b2c3d.berth.localhost", port=20001)
    with pytest.raises(IntegrityError):
        make_instance(State.SPAWNING, host="b-0a1b2c3d.berth.localhost", port=20001)
    db.session.rollback()


def _states_and_ports():
    return [tuple(row) for row in
            db.session.execute(select(ToolInstance.state, ToolInstance.port).order_by(ToolInstance.id))]


def test_an_ended_instance_frees_its_port(make_instance):
    make_instance(State.STOPPED, host="a-0a1b2c3d.berth.localhost", port=20001)
    make_instance(State.FAILED, host="b-0a1b2c3d.berth.localhost", port=20001)
    make_instance(State.RUNNING, host="c-0a1b2c3d.berth.localhost", port=20001)
    make_instance(State.QUEUED, host="d-0a1b2c3d.berth.localhost", port=20002)
    assert _states_and_ports() == [("STOPPED", 20001), ("FAILED", 20001), ("RUNNING", 20001), ("QUEUED", 20002)]


def test_live_instances_without_a_port_do_not_collide(make_instance):
    make_instance(State.QUEUED, host="a-0a1b2c3d.berth.localhost", port=None)
    make_instance(State.QUEUED, host="b-0a1b2c3d.berth.localhost", port=None)
    make_instance(State.SPAWNING, host="c-0a1b2c3d.berth.localhost", port=None)
    assert _states_and_ports() == [("QUEUED", None), ("QUEUED", None), ("SPAWNING", None)]


# -- UTCDateTime ------------------------------------------------------------------------

def test_timestamps_come_back_timezone_aware_in_utc(app, owner):
    paris = timezone(timedelta(hours=2))
    moment = datetime(2024, 6, 1, 14, 30, 15, 123456, tzinfo=paris)
    event = Event(kind="test", created_at=moment)
    db.session.add(event)
    db.session.commit()
    db.session.expire_all()
    loaded = db.session.get(Event, event.id)
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert loaded.created_at == moment
    assert loaded.created_at == datetime(2024, 6, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


def test_timestamps_are_stored_in_utc(app):
    moment = datetime(2024, 6, 1, 14, 30, tzinfo=timezone(timedelta(hours=-5)))
    db.session.add(Event(kind="test", created_at=moment))
    db.session.commit()
    [raw] = db.session.execute(text("SELECT created_at FROM events")).scalars().all()
    assert raw.startswith("2024-06-01 19:30:00")


def test_default_timestamps_are_aware_and_recent(app, owner):
    db.session.expire_all()
    loaded = db.session.get(User, owner.id)
    assert loaded.created_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - loaded.created_at) < timedelta(minutes=1)


def test_naive_timestamps_are_read_as_utc(app):
    db.session.add(Event(kind="test", created_at=datetime(2024, 1, 2, 3, 4, 5)))
    db.session.commit()
    db.session.expire_all()
    loaded = db.session.execute(select(Event)).scalar_one()
    assert loaded.created_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_missing_timestamps_stay_missing(make_instance):
    instance = make_instance(State.QUEUED)
    db.session.expire_all()
    assert db.session.get(ToolInstance, instance.id).ended_at is None


def test_timestamps_compare_correctly_across_zones_in_queries(app):
    base = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
    for minutes in (0, 10, 20):
        db.session.add(Event(kind=f"at{minutes}", created_at=base + timedelta(minutes=minutes)))
    db.session.commit()
    # 14:05 in UTC+2 is 12:05 UTC: only the first event is older.
    cutoff = datetime(2024, 6, 1, 14, 5, tzinfo=timezone(timedelta(hours=2)))
    older = db.session.execute(select(Event.kind).where(Event.created_at < cutoff)).scalars().all()
    assert older == ["at0"]


def test_sqlite_keeps_a_write_ahead_log(app):
    """Readers and the worker's writes do not wait for one another (berth/database.py)."""
    assert db.session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    with open(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"), "rb") as database:
        header = database.read(20)
    assert header[18:20] == b"\x02\x02"  # the file itself says so, for every process that opens it

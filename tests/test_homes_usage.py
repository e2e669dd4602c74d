"""What users' homes and team folders on the process backend hold, as the worker measures it and
the admin pages show it (berth/homes.py)."""
import itertools
import os
from pathlib import Path

import pytest

from berth import homes
from berth.extensions import db
from berth.homes import Usage, home_usage, measure_folder
from berth.launch.upkeep import measure_storage
from berth.models import StorageUsage, User
from tests.apps import migrated_app


@pytest.fixture(autouse=True)
def forget_measures():
    homes.forget()
    yield
    homes.forget()


def _write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


def _blocks(*paths):
    return sum(os.lstat(path).st_blocks * 512 for path in paths)


def test_a_home_is_measured_like_du_counting_each_hard_linked_file_once(tmp_path):
    home = tmp_path / "ada1"
    _write(home / "notes.txt", 10_000)
    _write(home / "deep" / "er" / "data.bin", 100_000)
    os.link(home / "deep" / "er" / "data.bin", home / "same-data.bin")
    os.symlink("/usr", home / "elsewhere")  # a link is counted, never followed

    [usage] = home_usage(tmp_path, ["ada1"]).values()

    expected = _blocks(home, home / "notes.txt", home / "deep", home / "deep" / "er",
                       home / "deep" / "er" / "data.bin", home / "elsewhere")
    assert usage == Usage(expected, complete=True)
    assert usage.size_bytes >= 110_000


def test_a_home_that_does_not_exist_has_no_measure(tmp_path):
    assert home_usage(tmp_path, ["nobody"]) == {"nobody": None}


def test_a_walk_cut_short_by_the_budget_is_a_lower_bound_and_later_homes_wait(tmp_path):
    for number in range(600):
        _write(tmp_path / "big" / f"file-{number}", 1)
    _write(tmp_path / "small" / "one", 1)
    ticks = itertools.count()

    found = home_usage(tmp_path, ["big", "small"], budget=1, clock=lambda: next(ticks) // 2)

    assert found["big"].complete is False and found["big"].size_bytes > 0
    assert found["small"] is None  # the budget was spent: measured on a later view


def test_a_measure_is_remembered_for_the_next_views(tmp_path):
    _write(tmp_path / "ada1" / "a", 5000)
    first = home_usage(tmp_path, ["ada1"])
    _write(tmp_path / "ada1" / "b", 50_000)

    assert home_usage(tmp_path, ["ada1"]) == first


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BERTH_DATABASE_URL", f"sqlite:///{tmp_path}/berth.db")
    monkeypatch.setenv("BERTH_BACKENDS", "process")
    with migrated_app() as app:
        yield app


def _users_page(app, admin):
    page = app.test_client().get("/admin/users", headers={
        "Host": app.config["BERTH_DOMAIN"], "X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"],
        "X-Berth-User-Id": str(admin.id)})
    assert page.status_code == 200
    return page.get_data(as_text=True)


def test_admins_see_each_users_home_usage_on_the_users_page(app):
    admin = User(email="root@example.org", name="Root", is_admin=True)
    ada = User(email="ada@example.org", name="Ada")
    db.session.add_all([admin, ada])
    db.session.commit()
    _write(Path(app.config["BERTH_HOMES_DIR"]) / ada.host_key / "thesis.tex", 3 * 1024 * 1024)
    assert measure_storage() == 1  # the worker's round: it alone may read people's files

    page = _users_page(app, admin)

    assert '<th scope="col" class="num">Home</th>' in page
    ada_row = page[page.index(f'data-user="{ada.id}"'):]
    assert "3.0 MiB" in ada_row[:ada_row.index("</tr>")]
    admin_row = page[page.index(f'data-user="{admin.id}"'):]
    assert "—" in admin_row[:admin_row.index("</tr>")]  # no home yet: never launched a tool


def test_the_users_page_has_no_home_column_without_the_process_backend(app, monkeypatch):
    monkeypatch.setitem(app.config, "BERTH_BACKENDS", ("docker",))
    admin = User(email="root@example.org", name="Root", is_admin=True)
    db.session.add(admin)
    db.session.commit()

    assert ">Home</th>" not in _users_page(app, admin)


def test_the_worker_records_every_home_and_team_folder_and_forgets_those_that_are_gone(app):
    homes_dir, teams_dir = Path(app.config["BERTH_HOMES_DIR"]), Path(app.config["BERTH_TEAMS_DIR"])
    _write(homes_dir / "ada1" / "notes.txt", 50_000)
    _write(teams_dir / "analysts-3" / "plan.txt", 20_000)
    os.symlink("/usr", homes_dir / "planted")  # not a home: never measured, never followed
    assert set(measure_folder(homes_dir, budget=5)) == {"ada1"}

    assert measure_storage() == 2
    rows = {(row.kind, row.name): row for row in db.session.query(StorageUsage)}
    assert set(rows) == {("home", "ada1"), ("team", "analysts-3")}
    assert rows[("team", "analysts-3")].size_bytes >= 20_000 and rows[("team", "analysts-3")].complete

    (teams_dir / "analysts-3" / "plan.txt").unlink()
    (teams_dir / "analysts-3").rmdir()
    assert measure_storage() == 1
    db.session.expire_all()
    assert [(row.kind, row.name) for row in db.session.query(StorageUsage)] == [("home", "ada1")]

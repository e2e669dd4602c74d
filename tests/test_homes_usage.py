"""What users' homes on the process backend hold, as the admin users page shows it (berth/homes.py)."""
import itertools
import os
from pathlib import Path

import pytest

from berth.extensions import db
from berth.homes import Usage, home_usage, measure, record_usage
from berth.models import User
from tests.apps import migrated_app


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

    usage = measure(home)

    expected = _blocks(home, home / "notes.txt", home / "deep", home / "deep" / "er",
                       home / "deep" / "er" / "data.bin", home / "elsewhere")
    assert usage == Usage(expected, complete=True)
    assert usage.size_bytes >= 110_000


def test_a_home_that_does_not_exist_or_is_a_link_has_no_measure(tmp_path):
    os.symlink("/usr", tmp_path / "planted")
    assert measure(tmp_path / "nobody") is None
    assert measure(tmp_path / "planted") is None


def test_a_walk_cut_short_by_the_budget_is_a_lower_bound(tmp_path):
    for number in range(600):
        _write(tmp_path / "big" / f"file-{number}", 1)
    ticks = itertools.count()

    usage = measure(tmp_path / "big", budget=1, clock=lambda: next(ticks) // 2)

    assert usage.complete is False and usage.size_bytes > 0


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

    assert "3.0 MiB" not in _users_page(app, admin)  # the worker has not measured it yet
    assert record_usage([app.config["BERTH_HOMES_DIR"]]) == 1
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


def test_the_worker_records_each_folder_and_forgets_one_that_is_gone(app):
    homes = Path(app.config["BERTH_HOMES_DIR"])
    _write(homes / "ada1" / "a", 50_000)
    _write(homes / "bob2" / "b", 5_000)
    os.symlink("/usr", homes / "planted")  # never followed, never recorded

    assert record_usage([homes, homes.parent / "no-such-root"]) == 2
    found = home_usage(homes, ["ada1", "bob2", "planted", "carol3"])
    assert found["ada1"].complete and found["ada1"].size_bytes >= 50_000
    assert found["bob2"].size_bytes < found["ada1"].size_bytes
    assert found["planted"] is None and found["carol3"] is None

    (homes / "bob2" / "b").unlink()
    (homes / "bob2").rmdir()
    record_usage([homes])
    assert home_usage(homes, ["bob2"]) == {"bob2": None}
    assert home_usage(homes, ["ada1"])["ada1"] == found["ada1"]

"""The admin pages through nginx: administrators only, CSRF on every form, and every change audited
with its values before and after (webapp/admin/)."""
import csv
import io
import json
import os
import random
import re
import string
import time
from datetime import datetime, timezone

import pytest
import requests

from tests.actions import form_token
from tests.integration.test_homes import _put, _running, make_team
from tests.integration.test_launch import _host, _wait_state

def _slug(prefix):
    return f"{prefix}-{''.join(random.choices(string.ascii_lowercase, k=6))}"


@pytest.fixture
def admin(stack):
    person = stack.create_user(is_admin=True)
    browser = stack.login(person)
    person["browser"] = browser
    person["csrf"] = form_token(browser, f"{stack.base_url}/admin/groups")
    yield person
    browser.close()


def _post(stack, person, path, **data):
    return person["browser"].post(f"{stack.base_url}{path}", data={"csrf_token": person["csrf"], **data},
                                  timeout=10, allow_redirects=False)


def _get(stack, person, path, **params):
    return person["browser"].get(f"{stack.base_url}{path}", params=params, timeout=10)


def _status(browser, url):
    return browser.get(url, headers={"Accept": "application/json"}, allow_redirects=False, timeout=10).status_code


def _template_form(slug, **fields):
    form = {"slug": slug, "name": slug.replace("-", " ").title(), "description": "Made on the admin pages",
            "backend": "process", "command": "{python}\n-m\nberth_tools.echo\n--port\n{port}", "image": "",
            "port": "", "env": "", "health_path": "/headers", "spawn_timeout": "20", "idle_timeout": "3600",
            "sizes": "", "groups": "", "ip_allowlist": "", "enabled": "y"}
    form.update(fields)
    return {key: value for key, value in form.items() if value is not None}


def _events(stack, kind, **where):
    clauses = "".join(f" AND {column} = :{column}" for column in where)
    rows = stack.query(f"SELECT * FROM events WHERE kind = :kind{clauses} ORDER BY id", kind=kind, **where)
    return [{**row, "data": row["data"] if isinstance(row["data"], dict) else json.loads(row["data"])}
            for row in rows]


def _catalogue_slugs(stack, browser):
    page = browser.get(f"{stack.base_url}/", timeout=10)
    assert page.status_code == 200
    return set(re.findall(r'data-slug="([^"]+)"', page.text))


def _field_error(page, field):
    """The error shown inside a field's own box on the template form, or None."""
    box = re.search(rf'<div class="field[^"]*" data-field="{field}">(.*?)</div>', page, re.S)
    assert box, f"no field {field} on the page"
    error = re.search(r'class="field-error"[^>]*>([^<]*)<', box.group(1))
    return error.group(1) if error else None


def test_non_administrators_get_403_on_every_admin_page_and_form(stack, alice, bob):
    browser = stack.login(alice)
    csrf = form_token(browser, f"{stack.base_url}/account")
    home = browser.get(f"{stack.base_url}/", timeout=10).text
    assert 'admin/">Admin</a>' not in home
    pages = ["/admin/", "/admin/users", f"/admin/users/{bob['id']}", "/admin/groups", "/admin/templates",
             "/admin/templates/new", "/admin/users/new", "/admin/instances", "/admin/usage", "/admin/usage.csv",
             "/admin/audit", "/admin/audit.csv", f"/admin/users/{bob['id']}/home/delete"]
    for path in pages:
        answer = browser.get(f"{stack.base_url}{path}", timeout=10)
        assert answer.status_code == 403, path
        assert "administrators" in answer.text
    posts = [f"/admin/users/{bob['id']}/flags", f"/admin/users/{alice['id']}/flags",
             f"/admin/users/{bob['id']}/groups", "/admin/groups", "/admin/templates/new",
             "/admin/templates/1", "/admin/templates/1/enabled", "/admin/instances/1/stop", "/admin/users/new",
             f"/admin/users/{bob['id']}/home/delete", "/admin/groups/1/team-folder"]
    for path in posts:
        answer = browser.post(f"{stack.base_url}{path}", timeout=10, allow_redirects=False,
                              data={"csrf_token": csrf, "is_admin": "1", "is_active": "0", "name": "x",
                                    "email": "made-by-a-user@example.org", "password": "correct horse battery",
                                    "confirm": bob["email"], "enabled": "1"})
        assert answer.status_code == 403, path
    [row] = stack.query("SELECT is_admin, is_active FROM users WHERE id = :id", id=alice["id"])
    assert (bool(row["is_admin"]), bool(row["is_active"])) == (False, True)
    assert not stack.query("SELECT id FROM groups WHERE name = 'x'")
    assert not stack.query("SELECT id FROM users WHERE email = 'made-by-a-user@example.org'")
    # Signed out, nginx answers 401 (a browser is sent to sign in).
    with requests.Session() as stranger:
        assert _status(stranger, f"{stack.base_url}/admin/users") == 401
    browser.close()


def test_a_post_without_the_csrf_token_is_refused(stack, admin, alice):
    answer = admin["browser"].post(f"{stack.base_url}/admin/users/{alice['id']}/flags", data={"is_admin": "1"},
                                   timeout=10)
    assert answer.status_code == 400
    [row] = stack.query("SELECT is_admin FROM users WHERE id = :id", id=alice["id"])
    assert not row["is_admin"]


def test_users_can_be_searched(stack, admin, alice, bob):
    page = _get(stack, admin, "/admin/users", q=alice["email"][:12].upper())
    assert page.status_code == 200
    assert f'data-user="{alice["id"]}"' in page.text
    assert f'data-user="{bob["id"]}"' not in page.text
    assert 'aria-current="page"' in page.text and ">Admin</a>" in page.text


def test_deactivating_a_user_signs_them_out_at_once_and_is_audited(stack, admin, alice):
    victim = stack.login(alice)
    assert _status(victim, f"{stack.base_url}/") == 200
    answer = _post(stack, admin, f"/admin/users/{alice['id']}/flags", is_active="0")
    assert answer.status_code == 303
    page = admin["browser"].get(stack.base_url + answer.headers["Location"], timeout=10)
    assert "deactivated (and signed out everywhere)" in page.text
    assert "Activate</button>" in page.text
    # Their session is refused on its next request: signed out, and sent to sign in again.
    assert _status(victim, f"{stack.base_url}/") == 401
    again = victim.get(f"{stack.base_url}/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=10)
    assert again.status_code == 302 and "/auth/login" in again.headers["Location"]
    assert not stack.query("SELECT id FROM sessions WHERE user_id = :id AND revoked_at IS NULL", id=alice["id"])
    [event] = _events(stack, "user.deactivate", user_id=alice["id"])
    assert event["actor"] == f"admin:{admin['id']}"
    assert event["data"]["before"] == {"is_active": True} and event["data"]["after"] == {"is_active": False}
    # An administrator cannot lock themself out.
    _post(stack, admin, f"/admin/users/{admin['id']}/flags", is_active="0")
    assert _status(admin["browser"], f"{stack.base_url}/admin/users") == 200
    victim.close()


def test_making_a_user_an_administrator_opens_the_admin_pages_to_them(stack, admin, alice):
    browser = stack.login(alice)
    assert browser.get(f"{stack.base_url}/admin/users", timeout=10).status_code == 403
    assert _post(stack, admin, f"/admin/users/{alice['id']}/flags", is_admin="1").status_code == 303
    page = browser.get(f"{stack.base_url}/admin/users", timeout=10)
    assert page.status_code == 200 and "<h1>Users</h1>" in page.text
    assert 'admin/">Admin</a>' in browser.get(f"{stack.base_url}/", timeout=10).text
    [event] = _events(stack, "user.admin", user_id=alice["id"])
    assert event["actor"] == f"admin:{admin['id']}" and event["data"]["after"] == {"is_admin": True}
    browser.close()


def test_groups_decide_who_sees_a_template_in_the_catalogue(stack, admin, alice):
    team = _slug("team")
    created = _post(stack, admin, "/admin/groups", name=team)
    assert created.status_code == 303
    [group] = stack.query("SELECT id FROM groups WHERE name = :name", name=team)
    assert _post(stack, admin, "/admin/groups", name=team).status_code == 400  # taken
    slug = _slug("restricted")
    assert _post(stack, admin, "/admin/templates/new", **_template_form(slug, groups=team)).status_code == 303
    browser = stack.login(alice)
    assert slug not in _catalogue_slugs(stack, browser)

    # Add alice to the group on her user page: the template appears; take her out: it goes.
    assert _post(stack, admin, f"/admin/users/{alice['id']}/groups", group=str(group["id"])).status_code == 303
    assert slug in _catalogue_slugs(stack, browser)
    assert team in _get(stack, admin, f"/admin/groups/{group['id']}").text
    [event] = _events(stack, "user.groups", user_id=alice["id"])
    assert event["actor"] == f"admin:{admin['id']}"
    assert event["data"]["before"] == {"groups": []} and event["data"]["after"] == {"groups": [team]}
    assert _post(stack, admin, f"/admin/groups/{group['id']}/members/{alice['id']}/remove").status_code == 303
    assert slug not in _catalogue_slugs(stack, browser)

    # A membership from single sign-on is shown, read-only, and an admin's save leaves it alone.
    stack.query("INSERT INTO memberships (group_id, user_id, source, created_at) "
                "VALUES (:g, :u, 'oidc', CURRENT_TIMESTAMP)", g=group["id"], u=alice["id"])
    page = _get(stack, admin, f"/admin/users/{alice['id']}").text
    assert re.search(r'<input type="checkbox" checked disabled[^>]*> ' + team, page)
    _post(stack, admin, f"/admin/users/{alice['id']}/groups")  # no group ticked
    assert stack.query("SELECT source FROM memberships WHERE user_id = :u", u=alice["id"]) == [{"source": "oidc"}]
    assert slug in _catalogue_slugs(stack, browser)

    # A group a template is limited to cannot be deleted (the template would open to everyone).
    refused = _post(stack, admin, f"/admin/groups/{group['id']}/delete")
    assert "Remove the group from them first" in admin["browser"].get(
        stack.base_url + refused.headers["Location"], timeout=10).text
    assert stack.query("SELECT id FROM groups WHERE id = :id", id=group["id"])
    spare = _slug("spare")
    _post(stack, admin, "/admin/groups", name=spare)
    [other] = stack.query("SELECT id FROM groups WHERE name = :name", name=spare)
    assert _post(stack, admin, f"/admin/groups/{other['id']}/delete").status_code == 303
    assert not stack.query("SELECT id FROM groups WHERE id = :id", id=other["id"])
    [deleted] = _events(stack, "group.delete")[-1:]
    assert deleted["data"]["before"]["name"] == spare and deleted["actor"] == f"admin:{admin['id']}"
    browser.close()


def test_the_template_form_shows_each_error_next_to_its_field_and_writes_nothing(stack, admin):
    before = stack.query("SELECT count(*) AS n FROM tool_templates")[0]["n"]
    events = len(_events(stack, "template.create"))
    answer = _post(stack, admin, "/admin/templates/new", **_template_form(
        "Bad Slug", spawn_timeout="soon", ip_allowlist="10.0.0.0/8\n10.0.0.1/8", env="NO_EQUALS_SIGN",
        sizes="small 0.5 1024\nlarge two 2048", health_path="status", backend="kubernetes"))
    assert answer.status_code == 400
    page = answer.text
    assert "Nothing was saved." in page
    assert "slug must start with a letter" in _field_error(page, "slug")
    assert _field_error(page, "spawn_timeout") == "spawn_timeout must be a whole number"
    assert "ip_allowlist[2] &#39;10.0.0.1/8&#39; is not a CIDR" in _field_error(page, "ip_allowlist")
    assert "did you mean 10.0.0.0/8" in _field_error(page, "ip_allowlist")
    assert _field_error(page, "env") == "env line 1 must read NAME=value"
    assert "sizes[2].cpu must be a number" in _field_error(page, "sizes")
    assert _field_error(page, "health_path") == "health_path must start with /"
    assert _field_error(page, "backend") == "backend must be one of: process, docker, ecs"
    assert _field_error(page, "name") is None and _field_error(page, "command") is None
    assert 'aria-invalid="true"' in page and 'value="Bad Slug"' in page  # what was typed stays
    assert stack.query("SELECT count(*) AS n FROM tool_templates")[0]["n"] == before
    assert len(_events(stack, "template.create")) == events
    # A slug that names another template already is an error on the slug.
    taken = _post(stack, admin, "/admin/templates/new", **_template_form("echo"))
    assert taken.status_code == 400 and "names another template already" in _field_error(taken.text, "slug")


def test_a_template_is_created_edited_and_disabled_from_the_admin_pages(stack, admin, alice):
    slug = _slug("made")
    answer = _post(stack, admin, "/admin/templates/new", **_template_form(
        slug, env="GREETING=hello there\nN=3", sizes="small 0.5 256\nlarge 1 512",
        ip_allowlist="127.0.0.0/8\n::1", command='["{python}", "-m", "berth_tools.echo", "--port", "{port}"]'))
    assert answer.status_code == 303, answer.text
    [row] = stack.query("SELECT * FROM tool_templates WHERE slug = :slug", slug=slug)
    loads = lambda value: value if isinstance(value, (list, dict)) else json.loads(value)  # noqa: E731
    assert loads(row["env"]) == {"GREETING": "hello there", "N": "3"}
    assert loads(row["sizes"]) == [{"name": "small", "cpu": 0.5, "memory_mb": 256},
                                   {"name": "large", "cpu": 1, "memory_mb": 512}]
    assert loads(row["ip_allowlist"]) == ["127.0.0.0/8", "::1/128"]
    assert loads(row["command"])[-1] == "{port}"
    browser = stack.login(alice)
    assert slug in _catalogue_slugs(stack, browser)

    # The edit form shows the values as text, and saving a change records it before and after.
    form = _get(stack, admin, f"/admin/templates/{row['id']}").text
    assert "GREETING=hello there" in form and "small 0.5 256" in form and 'readonly' in form
    edited = _post(stack, admin, f"/admin/templates/{row['id']}", **_template_form(
        "ignored-slug", name="Renamed tool", env="GREETING=hello there\nN=3", sizes="small 0.5 256\nlarge 1 512",
        ip_allowlist="127.0.0.0/8\n::1/128", command="{python}\n-m\nberth_tools.echo\n--port\n{port}"))
    assert edited.status_code == 303, edited.text
    assert "name changed" in admin["browser"].get(stack.base_url + edited.headers["Location"], timeout=10).text
    assert "Renamed tool" in browser.get(f"{stack.base_url}/", timeout=10).text
    [update] = _events(stack, "template.update")[-1:]
    assert update["actor"] == f"admin:{admin['id']}"
    assert update["data"]["before"] == {"name": row["name"]} and update["data"]["after"] == {"name": "Renamed tool"}
    assert stack.query("SELECT slug FROM tool_templates WHERE id = :id", id=row["id"]) == [{"slug": slug}]

    # Disabled, it leaves the catalogue; enabled, it is back.
    assert _post(stack, admin, f"/admin/templates/{row['id']}/enabled", enabled="0").status_code == 303
    assert slug not in _catalogue_slugs(stack, browser)
    [disable] = _events(stack, "template.disable")[-1:]
    assert disable["data"] == {**disable["data"], "before": {"enabled": True}, "after": {"enabled": False}}
    assert 'aria-label="Enable Renamed tool"' in _get(stack, admin, "/admin/templates").text
    _post(stack, admin, f"/admin/templates/{row['id']}/enabled", enabled="1")
    assert slug in _catalogue_slugs(stack, browser)
    browser.close()


def test_an_administrator_stops_another_users_tool_and_sees_its_timeline(stack, admin, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    host = _host(stack, "echo", alice)
    [instance] = [row for row in stack.instances(host) if row["state"] == "RUNNING"]
    listing = _get(stack, admin, "/admin/instances", state="RUNNING", user=alice["email"], template="echo")
    assert listing.status_code == 200
    assert re.findall(r'data-instance="(\d+)"', listing.text) == [str(instance["id"])]
    assert f'action="/admin/instances/{instance["id"]}/stop"' in listing.text
    assert 'data-instance=' not in _get(stack, admin, "/admin/instances", state="FAILED", user=alice["email"]).text

    assert _post(stack, admin, f"/admin/instances/{instance['id']}/stop").status_code == 303
    assert _wait_state(stack, host, ("STOPPED",))["id"] == instance["id"]
    [stop] = _events(stack, "instance.stop", instance_id=instance["id"])
    assert stop["actor"] == f"admin:{admin['id']}" and stop["user_id"] == alice["id"]
    timeline = _get(stack, admin, f"/admin/instances/{instance['id']}").text
    kinds = re.findall(r'<li data-kind="([^"]+)"', timeline)
    assert kinds[-1] == "instance.stop" or "instance.stop" in kinds
    assert f"admin:{admin['id']}" in timeline and "Stopped" in timeline
    browser.close()


def _add_instance(stack, template_slug, owner, created, running, ended, state="STOPPED"):
    with stack.app.app_context():
        from berth.extensions import db
        from berth.models import ToolInstance, ToolTemplate

        template = db.session.execute(db.select(ToolTemplate).where(ToolTemplate.slug == template_slug)).scalar_one()
        db.session.add(ToolInstance(template_id=template.id, owner_id=owner["id"], host=f"usage-{owner['id']}",
                                    state=state, backend="process", created_at=created, running_at=running,
                                    ended_at=ended))
        db.session.commit()


def _utc(*parts):
    return datetime(*parts, tzinfo=timezone.utc)


def test_the_usage_report_counts_launches_and_run_time_in_the_period(stack, admin, alice, bob):
    slug = _slug("usage")
    assert _post(stack, admin, "/admin/templates/new", **_template_form(slug)).status_code == 303
    # In January 2020: two hours; one hour of a run that goes on into February; half an hour of a run
    # launched in December (not a January launch); a launch that failed before running.
    _add_instance(stack, slug, alice, _utc(2020, 1, 10, 9, 59), _utc(2020, 1, 10, 10), _utc(2020, 1, 10, 12))
    _add_instance(stack, slug, alice, _utc(2020, 1, 31, 23), _utc(2020, 1, 31, 23), _utc(2020, 2, 1, 1))
    _add_instance(stack, slug, bob, _utc(2019, 12, 31, 23), _utc(2019, 12, 31, 23, 30), _utc(2020, 1, 1, 0, 30))
    _add_instance(stack, slug, bob, _utc(2020, 1, 5), None, _utc(2020, 1, 5, 0, 1), state="FAILED")
    _add_instance(stack, slug, bob, _utc(2020, 3, 1), _utc(2020, 3, 1), _utc(2020, 3, 2))  # outside

    period = {"start": "2020-01-01", "end": "2020-01-31"}
    page = _get(stack, admin, "/admin/usage", **period)
    assert page.status_code == 200 and alice["email"] in page.text and "3 h 00 min" in page.text
    answer = _get(stack, admin, "/admin/usage.csv", by="user", **period)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/csv")
    assert answer.headers["Content-Disposition"] == \
        'attachment; filename="berth-usage-by-user-2020-01-01-2020-01-31.csv"'
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["user", "launches", "run_seconds", "run_hours"]
    assert sorted(rows[1:]) == sorted([[alice["email"], "2", "10800", "3.00"], [bob["email"], "1", "1800", "0.50"]])
    by_template = list(csv.reader(io.StringIO(_get(stack, admin, "/admin/usage.csv", by="template", **period).text)))
    assert [row for row in by_template if slug in row[0]] == [[f"{slug.replace('-', ' ').title()} ({slug})",
                                                               "3", "12600", "3.50"]]
    assert _get(stack, admin, "/admin/usage", start="2020-02-30").status_code == 400


def test_the_audit_log_filters_and_exports_admin_changes_with_before_and_after(stack, admin):
    target = stack.create_user(email=f"=cmd-{random.randint(0, 10**6)}@example.org")
    _post(stack, admin, f"/admin/users/{target['id']}/flags", is_admin="1")
    page = _get(stack, admin, "/admin/audit", actor=f"admin:{admin['id']}", kind="user")
    assert page.status_code == 200
    assert "is_admin" in page.text and '<span class="after">true</span>' in page.text
    assert _get(stack, admin, "/admin/audit", user="nobody@example.org").status_code == 400

    answer = _get(stack, admin, "/admin/audit.csv", actor=f"admin:{admin['id']}", kind="user.admin")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/csv")
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="berth-audit-')
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    [row] = [row for row in rows if row["user_id"] == str(target["id"])]
    assert row["kind"] == "user.admin" and row["actor"] == f"admin:{admin['id']}"
    assert json.loads(row["before"]) == {"is_admin": False} and json.loads(row["after"]) == {"is_admin": True}
    assert row["user_email"] == "'" + target["email"]  # a spreadsheet shows it as text, never a formula
    assert all(row["kind"] == "user.admin" for row in rows)


def test_csv_cells_that_look_like_formulas_are_quoted():
    from webapp.admin.reports import csv_cell

    assert [csv_cell(value) for value in ["=1+1", "+1", "-2", "@SUM(A1)", "plain", 3, None]] == \
        ["'=1+1", "'+1", "'-2", "'@SUM(A1)", "plain", 3, ""]


def _can_sign_in(stack, email, password):
    from tests.actions import sign_in

    with requests.Session() as browser:
        return sign_in(browser, stack.base_url, email, password).status_code == 302


def test_an_administrator_adds_a_user_with_a_password_groups_and_the_admin_flag(stack, admin):
    team = _slug("team")
    assert _post(stack, admin, "/admin/groups", name=team).status_code == 303
    [group] = stack.query("SELECT id FROM groups WHERE name = :name", name=team)
    email = f"{_slug('new')}@example.org"
    answer = _post(stack, admin, "/admin/users/new", email=email.upper(), name="Grace Hopper",
                   password="a long enough one", is_admin="y", group=str(group["id"]))
    assert answer.status_code == 303
    [person] = stack.query("SELECT id, name, is_admin, is_active FROM users WHERE email = :email", email=email)
    assert answer.headers["Location"].endswith(f"/admin/users/{person['id']}")
    assert person["name"] == "Grace Hopper" and person["is_admin"] and person["is_active"]
    assert stack.query("SELECT source FROM memberships WHERE user_id = :id AND group_id = :group",
                       id=person["id"], group=group["id"]) == [{"source": "local"}]
    [created] = _events(stack, "user.create", user_id=person["id"])
    assert created["actor"] == f"admin:{admin['id']}" and created["data"]["after"]["is_admin"] is True
    assert _can_sign_in(stack, email, "a long enough one")


def test_a_user_added_without_a_password_gets_a_temporary_one_shown_once(stack, admin):
    email = f"{_slug('temp')}@example.org"
    answer = _post(stack, admin, "/admin/users/new", email=email, name="")
    assert answer.status_code == 201 and answer.headers["Cache-Control"] == "no-store"
    temporary = re.search(r'id="temporary-password"[^>]*value="([^"]+)"', answer.text).group(1)
    assert len(temporary) >= 16 and "berth_csrf" not in answer.headers.get("Set-Cookie", "")
    assert _can_sign_in(stack, email, temporary)
    [person] = stack.query("SELECT name FROM users WHERE email = :email", email=email)
    assert person["name"] == email.split("@")[0]
    assert temporary not in json.dumps(_events(stack, "user.create"), default=str)
    assert temporary not in _get(stack, admin, "/admin/users", q=email).text


@pytest.mark.parametrize("fields, message", [
    ({"email": ""}, "Give the new user&#39;s email address."),
    ({"email": "not-an-address"}, "&#39;not-an-address&#39; is not an email address."),
    ({"email": "x@example.org", "password": "short"}, "The password must have at least 8 characters."),
])
def test_add_user_says_what_is_wrong_in_plain_words_and_saves_nothing(stack, admin, fields, message):
    before = stack.query("SELECT count(*) AS n FROM users")[0]["n"]
    answer = _post(stack, admin, "/admin/users/new", **{"name": "Someone", **fields})
    assert answer.status_code == 400
    assert "Nothing was saved." in answer.text and message in answer.text
    assert stack.query("SELECT count(*) AS n FROM users")[0]["n"] == before


def test_add_user_refuses_an_email_that_is_taken_whatever_its_case(stack, admin, alice):
    answer = _post(stack, admin, "/admin/users/new", email=alice["email"].upper(), password="long enough pw")
    assert answer.status_code == 400 and f"There is a user with the email {alice['email']} already." in answer.text


def test_the_audit_log_names_people_by_email_and_folds_launch_steps_into_their_launch(stack, admin, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    browser.close()
    [instance] = stack.instances(_host(stack, "echo", alice))
    steps = stack.query("SELECT id, kind, message FROM events WHERE instance_id = :id AND kind IN "
                        "('spawn.started', 'spawn.step', 'spawn.running') ORDER BY id", id=instance["id"])
    assert {step["kind"] for step in steps} == {"spawn.started", "spawn.step", "spawn.running"}

    page = _get(stack, admin, "/admin/audit", user=alice["email"]).text
    assert f">{alice['email']}</a>" in page and f"user:{alice['id']}" not in page  # the actor, by email
    assert 'data-event="%d"' % steps[0]["id"] not in page  # folded ...
    assert f"{len(steps)} launch step" in page and steps[0]["message"] in page  # ... into the launch
    listed = _get(stack, admin, "/admin/audit", kind="spawn", user=alice["email"]).text
    assert 'data-event="%d"' % steps[0]["id"] in listed

    by_email = _get(stack, admin, "/admin/audit", actor=alice["email"]).text
    assert 'data-event="%d"' % _events(stack, "instance.launch", instance_id=instance["id"])[0]["id"] in by_email
    unknown = _get(stack, admin, "/admin/audit", actor="nobody@example.org")
    assert unknown.status_code == 400 and "There is no user with the email" in unknown.text


def test_failed_instances_show_their_reason_and_destructive_actions_ask_first(stack, admin, alice):
    browser = stack.login(alice)
    with pytest.raises(RuntimeError, match="did not start"):
        stack.open_tool(browser, "broken", alice)
    browser.close()
    [failed] = stack.instances(_host(stack, "broken", alice))
    page = _get(stack, admin, "/admin/instances", user=alice["email"]).text
    row = re.search(rf'<tr data-instance="{failed["id"]}" class="failed">(.*?)</tr>', page, re.S).group(1)
    assert 'badge-failed' in row and 'class="failed-reason"' in row

    user_page = _get(stack, admin, f"/admin/users/{alice['id']}").text
    assert re.search(r'<details class="confirm">\s*<summary[^>]*>Deactivate</summary>', user_page)
    assert "Yes, deactivate" in user_page


def test_the_group_page_suggests_the_users_who_are_not_members_yet(stack, admin, alice, bob):
    team = _slug("team")
    assert _post(stack, admin, "/admin/groups", name=team).status_code == 303
    [group] = stack.query("SELECT id FROM groups WHERE name = :name", name=team)
    assert _post(stack, admin, f"/admin/groups/{group['id']}/members", email=alice["email"]).status_code == 303
    page = _get(stack, admin, f"/admin/groups/{group['id']}").text
    suggestions = re.search(r'<datalist id="user-emails">(.*?)</datalist>', page, re.S).group(1)
    assert f'value="{bob["email"]}"' in suggestions and alice["email"] not in suggestions


# -- storage ----------------------------------------------------------------------------------

def test_a_team_folder_is_turned_on_and_off_on_the_group_page_with_its_usage_shown_and_audited(stack, admin, alice):
    team = make_team(stack, alice, folder=False)
    page = _get(stack, admin, f"/admin/groups/{team['id']}")
    assert "Turn the team folder on" in page.text

    answer = _post(stack, admin, f"/admin/groups/{team['id']}/team-folder", enabled="1")
    assert answer.status_code == 303
    page = admin["browser"].get(stack.base_url + answer.headers["Location"], timeout=10)
    assert "turned on: members get it at their next launch" in page.text and "Turn the team folder off" in page.text
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    folder = f"{stack.config['BERTH_TEAMS_DIR']}/{team['folder']}"
    assert _put(browser, stack, "echo", alice, f"{folder}/data.bin", "x" * 200_000).status_code == 201
    # The worker measures (it alone may read the folder): a view that finds the measures old asks
    # for a round, and a later view shows it.
    deadline, shown = time.monotonic() + 90, None
    while not (shown and int(shown.group(1)) >= 200_000):
        assert time.monotonic() < deadline, "the team folder's usage was never shown"
        time.sleep(0.5)
        listing = _get(stack, admin, "/admin/groups")
        shown = re.search(rf'<tr data-group="{team["id"]}">.*?data-folder-bytes="(\d+)"', listing.text, re.S)
    [on] = _events(stack, "group.team_folder")[-1:]
    assert on["actor"] == f"admin:{admin['id']}" and on["data"]["after"] == {"team_folder": True}

    _post(stack, admin, f"/admin/groups/{team['id']}/team-folder", enabled="0")
    [off] = _events(stack, "group.team_folder")[-1:]
    assert off["data"] == {**off["data"], "before": {"team_folder": True}, "after": {"team_folder": False}}
    assert (stack.data_dir / "teams" / team["folder"] / "data.bin").exists()  # turning it off deletes nothing


def _wait_event(stack, kind, user_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _events(stack, kind, user_id=user_id)
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {kind} event for user {user_id}")


def test_a_users_home_is_deleted_after_a_confirmation_never_while_a_tool_of_theirs_runs_and_is_audited(
        stack, admin, alice, bob):
    browser = stack.login(alice)
    for slug in ("echo", "echo-docker"):
        stack.open_tool(browser, slug, alice, timeout=60)
        assert _put(browser, stack, slug, alice, "notes.txt", "alice's").status_code == 201
    stack.open_tool(stack.login(bob), "echo", bob)
    home = stack.data_dir / "homes" / alice["host_key"]
    os.symlink(stack.data_dir / "homes" / bob["host_key"], home / "bobs")  # a link a tool might plant
    volume = f"berth-{stack.env['BERTH_DEPLOYMENT']}-home-{alice['host_key']}"
    path = f"/admin/users/{alice['id']}/home/delete"
    page = _get(stack, admin, path)
    assert page.status_code == 200 and f"Type {alice['email']} to confirm" in page.text
    assert "2 tools running or starting" in page.text

    refused = _post(stack, admin, path, confirm=alice["email"])
    assert refused.status_code == 409
    assert "a home in use is never deleted. Stop them first" in refused.text
    unconfirmed = _post(stack, admin, path, confirm="someone@else")
    assert unconfirmed.status_code == 400 and "cannot be brought back but from a backup" in unconfirmed.text
    assert (home / "notes.txt").exists()

    for slug in ("echo", "echo-docker"):
        row, _ = _running(stack, slug, alice)
        stack.stop_instance(row["id"])
    answer = _post(stack, admin, path, confirm=alice["email"])
    assert answer.status_code == 303
    done = _wait_event(stack, "home.delete", alice["id"])

    assert done["actor"] == f"admin:{admin['id']}"
    assert sorted(done["data"]["removed"]) == sorted([str(home), f"docker volume {volume}"])
    assert not home.exists()
    assert (stack.data_dir / "homes" / bob["host_key"]).is_dir()  # the planted link was not followed
    with stack.docker() as client:
        assert not client.volumes.list(filters={"name": volume})
    assert _events(stack, "home.delete.request", user_id=alice["id"])
    # The account stays: the next tool starts in a new, empty home.
    stack.open_tool(browser, "echo", alice)
    gone = browser.get(stack.tool_url("echo", alice, "/files"), params={"path": "notes.txt"}, timeout=10)
    assert gone.status_code == 404

"""An ordinary user learns no group's name but their own: the sharing page suggests only the
user's groups (an administrator's suggests them all), and sharing with a group the user is not in
is answered exactly as sharing with one that does not exist, on the page and through the API."""
import os
import re

import pytest

from tests.actions import post_form
from tests.integration.test_tokens import make_token


def _group_with(stack, name, user):
    with stack.app.app_context():
        from berth.extensions import db
        from berth.models import Group, Membership

        group = Group(name=name)
        db.session.add(group)
        db.session.flush()
        db.session.add(Membership(user_id=user["id"], group_id=group.id))
        db.session.commit()


def test_the_sharing_page_suggests_only_the_users_own_groups(stack, alice, bob):
    secret, mine = f"secret-{os.urandom(3).hex()}", f"mine-{os.urandom(3).hex()}"
    _group_with(stack, secret, bob)
    _group_with(stack, mine, alice)
    page = stack.login(alice).get(f"{stack.base_url}/sharing/echo", timeout=10)
    assert page.status_code == 200
    assert mine in page.text and secret not in page.text

    admin = stack.create_user(is_admin=True)
    everything = stack.login(admin).get(f"{stack.base_url}/sharing/echo", timeout=10).text
    assert secret in everything and mine in everything


@pytest.mark.parametrize("door", ["sharing page", "api"])
def test_probing_for_group_names_by_sharing_learns_nothing(stack, alice, bob, door):
    theirs, missing = f"theirs-{os.urandom(3).hex()}", f"missing-{os.urandom(3).hex()}"
    _group_with(stack, theirs, bob)
    browser = stack.login(alice)
    answers = {}
    for name in (theirs, missing):
        if door == "api":
            token = make_token(stack, browser, scope="launch")
            answer = stack.login(alice).post(f"{stack.base_url}/api/tools/echo/grants", json={"group": name},
                                             headers={"Authorization": f"Bearer {token}"}, timeout=10)
            answers[name] = (answer.status_code, answer.json()["error"].replace(name, "<name>"))
        else:
            answer = post_form(browser, f"{stack.base_url}/sharing/echo", {"kind": "group", "name": name},
                               allow_redirects=False)
            text = answer.text.replace(name, "<name>").split("<main", 1)[-1]
            # The form's CSRF token carries the second it was made in: not part of the answer's meaning.
            answers[name] = (answer.status_code, re.sub(r'(name="csrf_token" type="hidden" value=")[^"]*', r"\1", text))
    assert answers[theirs] == answers[missing]
    assert answers[theirs][0] == 404
    assert stack.query("SELECT id FROM tool_grants WHERE owner_id = :u", u=alice["id"]) == []

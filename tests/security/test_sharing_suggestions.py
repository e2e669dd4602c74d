"""The sharing form's suggestions name only people and groups the owner can see already: those
who share a group with them, and their own groups. Nobody can list the accounts of strangers
or the names of other groups through it; an administrator, who sees them on the admin pages,
is offered them all."""
import os

import pytest

from tests.integration.test_access import _group, _share

pytestmark = pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)


def _sharing_page(stack, user):
    page = stack.login(user).get(f"{stack.base_url}/sharing/echo", timeout=10)
    assert page.status_code == 200
    return page.text


def test_suggestions_are_the_people_who_share_a_group_and_ones_own_groups(stack):
    owner, colleague, stranger, inactive = (stack.create_user() for _ in range(4))
    admin = stack.create_user(is_admin=True)
    tag = os.urandom(3).hex()
    _group(stack, f"team-{tag}", owner, colleague, inactive)
    _group(stack, f"secret-{tag}", stranger)
    stack.query("UPDATE users SET is_active = false WHERE id = :id", id=inactive["id"])

    page = _sharing_page(stack, owner)
    assert f'<option value="{colleague["email"]}">' in page
    assert f'<option value="team-{tag}">' in page
    assert stranger["email"] not in page and f"secret-{tag}" not in page
    assert inactive["email"] not in page
    assert f'<option value="{owner["email"]}">' not in page  # not oneself

    # The stranger, in a group of their own, is offered neither the owner nor the owner's team.
    page = _sharing_page(stack, stranger)
    assert owner["email"] not in page and colleague["email"] not in page and f"team-{tag}" not in page

    # An administrator is offered everyone active, and every group.
    page = _sharing_page(stack, admin)
    assert stranger["email"] in page and f"secret-{tag}" in page and inactive["email"] not in page


"""An ordinary user learns no group's name but their own: the sharing page suggests only the
user's groups; an administrator's suggests them all."""
import os


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

"""Who may launch and open what. The rules, for the web app and the API.

The auth service applies the same rules in one SQL query on every request (auth_service/check.py);
the web app checks again with these functions before it acts, so that neither layer is trusted
alone. tests/integration/test_access.py holds both to the same permission matrix.

- A template with no groups is open to every active user; otherwise to members of its groups.
  Administrators may launch any template.
- A personal tool (<slug>--<address name>.<domain>) is opened by its owner, and by the users and
  groups the owner granted it to. A grant never widens the template's groups: a grantee must
  also be allowed the template. Only the owner starts it; administrators get no other access.
- A shared tool (<slug>.<domain>) is opened, and started, by anyone allowed the template.
"""
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from berth.accounts import email_problem
from berth.extensions import db
from berth.models import (Grant, Group, Membership, ToolTemplate, User, delete_where, record_event,
                          template_groups)


class AccessRefused(Exception):
    """What the user may not do, and why, for a 403 page or API error."""

    def __init__(self, reason, status=403):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def group_ids(user):
    return set(db.session.scalars(select(Membership.group_id).where(Membership.user_id == user.id)))


def may_launch(user, template):
    if user.is_admin:
        return True
    allowed = set(db.session.scalars(
        select(template_groups.c.group_id).where(template_groups.c.template_id == template.id)))
    return not allowed or bool(allowed & group_ids(user))


def is_granted(user, host):
    return db.session.scalar(
        select(Grant.id).where(Grant.host == host, or_(
            Grant.user_id == user.id,
            Grant.group_id.in_(select(Membership.group_id).where(Membership.user_id == user.id)),
        )).limit(1)
    ) is not None


def check_open(user, template, owner, host):
    """Raise AccessRefused unless user may open the tool at host (owner None: a shared tool)."""
    if not may_launch(user, template):
        raise AccessRefused(f"You are not in a group that may use {template.name}.")
    if owner is None or owner.id == user.id:
        return
    if not is_granted(user, host):
        raise AccessRefused(f"This {template.name} belongs to {owner.display_name}, "
                            "who has not shared it with you.")


def launchable_templates(user):
    """The enabled templates user may launch, by name: what the catalogue shows."""
    templates = db.session.execute(
        select(ToolTemplate).where(ToolTemplate.enabled.is_(True)).order_by(ToolTemplate.name)
    ).scalars().all()
    return [template for template in templates if may_launch(user, template)]


# -- grants -----------------------------------------------------------------------------------

def grants_on(host):
    return db.session.execute(select(Grant).where(Grant.host == host).order_by(Grant.id)).scalars().all()


def grants_to(user):
    """Grants that let user open someone else's tool, directly or through a group."""
    return db.session.execute(
        select(Grant).where(or_(
            Grant.user_id == user.id,
            Grant.group_id.in_(select(Membership.group_id).where(Membership.user_id == user.id)),
        ), Grant.owner_id != user.id).order_by(Grant.host)
    ).scalars().all()


# The most people and groups the sharing form suggests (it is a datalist in the page).
MAX_SUGGESTIONS = 500


def sharing_suggestions(user):
    """Whom the sharing form suggests to user: (people, groups), where people are (email, name)
    of the active users who share a group with user, and groups are user's own groups. An
    administrator, who sees every account and group on the admin pages anyway, is offered all.
    Never more than MAX_SUGGESTIONS of each: suggestions are a convenience, not a directory."""
    people = select(User.email, User.name).where(User.is_active.is_(True), User.id != user.id)
    groups = select(Group.name)
    if not user.is_admin:
        mine = select(Membership.group_id).where(Membership.user_id == user.id)
        people = people.where(User.id.in_(select(Membership.user_id).where(Membership.group_id.in_(mine))))
        groups = groups.where(Group.id.in_(mine))
    return (db.session.execute(people.order_by(User.email).limit(MAX_SUGGESTIONS)).all(),
            db.session.execute(groups.order_by(Group.name).limit(MAX_SUGGESTIONS)).scalars().all())


def add_grant(owner, template, host, actor, *, email=None, group_name=None):
    """Let a user (by email) or a group (by name) open owner's tool at host. The caller commits."""
    if template.shared:
        raise AccessRefused(f"{template.name} is shared with everyone allowed to use it already.", 400)
    if bool(email) == bool(group_name):
        raise AccessRefused("Name either one user, by email, or one group.", 400)
    if any(ord(character) < 32 or ord(character) == 127 for character in email or group_name):
        raise AccessRefused("Names and emails cannot hold control characters.", 400)
    if email:
        email = email.strip().lower()
        problem = email_problem(email)
        if problem:
            raise AccessRefused(problem, 400)
        if email == owner.email:
            raise AccessRefused("You have access to your own tool already.", 400)
        # The same answer whether the email has an account or not: an email without one is
        # granted as it is, and the grant becomes that person's when their account is made.
        grantee = db.session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        grant = (Grant(host=host, template=template, owner=owner, user=grantee) if grantee is not None
                 else Grant(host=host, template=template, owner=owner, email=email))
    else:
        name = group_name.strip()
        query = select(Group).where(Group.name == name)
        if not owner.is_admin:
            # An ordinary user shares only with their own groups, and learns no other group's
            # name: one they are not in is answered exactly as one that does not exist.
            query = query.where(Group.id.in_(select(Membership.group_id).where(Membership.user_id == owner.id)))
        group = db.session.execute(query).scalar_one_or_none()
        if group is None:
            raise AccessRefused(f"You are in no group called {name!r}." if not owner.is_admin
                                else f"There is no group called {name!r}.", 404)
        grant = Grant(host=host, template=template, owner=owner, group=group)
    try:
        with db.session.begin_nested():
            db.session.add(grant)
    except IntegrityError:
        raise AccessRefused(f"{grant.grantee} has access already.", 409) from None
    record_event("grant.add", f"{owner.email} shared {host} with {grant.grantee}", actor=actor,
                 user_id=owner.id, host=host, grant_id=grant.id, grantee_user_id=grant.user_id,
                 grantee_group_id=grant.group_id)
    return grant


def revoke_grant(grant, actor):
    """End a grant; the grantee's next request (or WebSocket handshake) is refused. Caller commits."""
    description = f"{grant.owner.email} stopped sharing {grant.host} with {grant.grantee}"
    if not delete_where(Grant, Grant.id == grant.id):
        return False
    record_event("grant.revoke", description, actor=actor, user_id=grant.owner_id, host=grant.host,
                 grant_id=grant.id, grantee_user_id=grant.user_id, grantee_group_id=grant.group_id)
    return True

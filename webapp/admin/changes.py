"""Administrators' changes to groups (and their team folders), memberships and templates, each
recorded with before and after.

Every function adds to the current transaction and records an event whose actor is the
administrator ("admin:<id>"); the caller commits. Users' flags go through
berth.accounts.set_user_flags, stops through berth.launch.requests.request_stop.
"""
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from berth.catalogue import apply_fields, groups_named
from berth.extensions import db
from berth.models import Grant, Group, Membership, ToolTemplate, User, record_event, template_groups

MAX_GROUP_NAME = 200


class ChangeRefused(Exception):
    """A change that cannot be made, with what to tell the administrator."""


# -- groups and memberships -------------------------------------------------------------------

def _memberships(user):
    """The user's memberships as {group name: source}."""
    return dict(db.session.execute(
        select(Group.name, Membership.source).join(Membership.group).where(Membership.user_id == user.id)
    ).all())


def create_group(name, actor):
    name = (name or "").strip()
    if not name:
        raise ChangeRefused("Give the group a name.")
    if len(name) > MAX_GROUP_NAME:
        raise ChangeRefused(f"A group name has at most {MAX_GROUP_NAME} characters.")
    if db.session.scalar(select(Group.id).where(Group.name == name)) is not None:
        raise ChangeRefused(f"There is a group called {name!r} already.")
    group = Group(name=name)
    try:
        with db.session.begin_nested():  # another admin may have created it since the check above
            db.session.add(group)
    except IntegrityError:
        raise ChangeRefused(f"There is a group called {name!r} already.") from None
    record_event("group.create", f"Group {name} created", actor=actor, group_id=group.id,
                 before={}, after={"name": name})
    return group


def templates_using(group):
    return db.session.execute(
        select(ToolTemplate).join(template_groups).where(template_groups.c.group_id == group.id)
        .order_by(ToolTemplate.name)
    ).scalars().all()


def delete_group(group, actor):
    """Delete a group, its memberships and the grants made to it.

    Refused while a template names the group: removing a template's last group would open the
    template to everyone.
    """
    using = templates_using(group)
    if using:
        raise ChangeRefused(f"Templates still limited to {group.name}: "
                            f"{', '.join(t.name for t in using)}. Remove the group from them first.")
    members = db.session.execute(
        select(User.email).join(Membership, Membership.user_id == User.id)
        .where(Membership.group_id == group.id).order_by(User.email)
    ).scalars().all()
    db.session.execute(delete(Membership).where(Membership.group_id == group.id)
                       .execution_options(synchronize_session=False))
    db.session.execute(delete(Grant).where(Grant.group_id == group.id)
                       .execution_options(synchronize_session=False))
    db.session.delete(group)
    record_event("group.delete", f"Group {group.name} deleted", actor=actor, group_id=group.id,
                 before={"name": group.name, "members": members}, after={})


def set_team_folder(group, enabled, actor):
    """Turn the group's team folder on or off. Returns whether it changed. Its members' tools
    mount it (or stop mounting it) from their next launch; turning it off deletes nothing."""
    if group.team_folder == enabled:
        return False
    group.team_folder = enabled
    record_event("group.team_folder", f"Team folder of {group.name} turned {'on' if enabled else 'off'}",
                 actor=actor, group_id=group.id, before={"team_folder": not enabled}, after={"team_folder": enabled})
    return True


def add_member(group, user, actor):
    current = _memberships(user)
    if group.name in current:
        how = " through single sign-on" if current[group.name] == "oidc" else ""
        raise ChangeRefused(f"{user.email} is in {group.name} already{how}.")
    db.session.add(Membership(group_id=group.id, user_id=user.id, source="local"))
    db.session.flush()
    _record_groups(user, current, actor)


def remove_member(group, user, actor):
    current = _memberships(user)
    if current.get(group.name) == "oidc":
        raise ChangeRefused(f"{user.email} is in {group.name} through single sign-on: the provider's "
                            "groups claim decides that membership at every sign-in.")
    if group.name not in current:
        raise ChangeRefused(f"{user.email} was not in {group.name}.")
    db.session.execute(delete(Membership).where(Membership.group_id == group.id, Membership.user_id == user.id)
                       .execution_options(synchronize_session=False))
    _record_groups(user, current, actor)


def set_local_groups(user, group_ids, actor):
    """Make the user's local memberships exactly group_ids. Single sign-on memberships stay as they are.

    Returns whether anything changed.
    """
    current = _memberships(user)
    rows = db.session.execute(select(Membership).where(Membership.user_id == user.id)).scalars().all()
    have = {row.group_id: row for row in rows}
    wanted = set(db.session.scalars(select(Group.id).where(Group.id.in_(set(group_ids)))))
    stale = [row.id for row in rows if row.source == "local" and row.group_id not in wanted]
    added = wanted - set(have)
    if stale:
        db.session.execute(delete(Membership).where(Membership.id.in_(stale))
                           .execution_options(synchronize_session=False))
    for group_id in sorted(added):
        db.session.add(Membership(group_id=group_id, user_id=user.id, source="local"))
    if not stale and not added:
        return False
    db.session.flush()
    _record_groups(user, current, actor)
    return True


def _record_groups(user, before, actor):
    after = _memberships(user)
    record_event("user.groups", f"Groups of {user.email} changed", actor=actor, user_id=user.id,
                 before={"groups": sorted(before)}, after={"groups": sorted(after)})


def group_counts():
    """{group id: number of members}."""
    return dict(db.session.execute(
        select(Membership.group_id, func.count()).group_by(Membership.group_id)).all())


# -- templates ----------------------------------------------------------------------------

def _audit_value(value):
    return value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)


def create_template(fields, actor):
    """Add a template from validated fields (berth.catalogue.validate_entry)."""
    fields = dict(fields)
    if db.session.scalar(select(ToolTemplate.id).where(ToolTemplate.slug == fields["slug"])) is not None:
        raise ChangeRefused(f"slug {fields['slug']!r} names another template already")
    groups = fields.pop("groups")
    template = ToolTemplate(**fields, groups=groups_named(groups))
    db.session.add(template)
    db.session.flush()
    record_event("template.create", f"Template {template.slug} created", actor=actor,
                 template_id=template.id, before={},
                 after={**{key: _audit_value(value) for key, value in fields.items()}, "groups": groups})
    return template


def update_template(template, fields, actor, kind="template.update"):
    """Apply validated fields to template. Returns the names of the fields that changed."""
    changes = apply_fields(template, fields)
    if changes:
        record_event(kind, f"Template {template.slug} changed: {', '.join(sorted(changes))}", actor=actor,
                     template_id=template.id,
                     before={key: _audit_value(old) for key, (old, new) in changes.items()},
                     after={key: _audit_value(new) for key, (old, new) in changes.items()})
    return sorted(changes)


def set_template_enabled(template, enabled, actor):
    """Enable or disable a template: a disabled one leaves the catalogue (its running tools carry on)."""
    return update_template(template, {"enabled": enabled}, actor,
                           kind="template.enable" if enabled else "template.disable")

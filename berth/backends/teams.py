"""Team folders: a group may have a folder that its members' tools mount read-write, and nobody else's.

An administrator turns a group's folder on or off on its admin page (Group.team_folder). Which
folders a tool mounts is decided when it launches, from its owner's memberships then: a member
added later gets the folder at their next launch, and one removed keeps it in the tools that
already run until they stop. A shared tool, which belongs to no one user, mounts none.

Access goes by a gid of the group's own, BERTH_TEAM_GIDS' low end plus the group's id:
- process backend: <BERTH_TEAMS_DIR>/<folder>, owned by root and that gid, mode 2770 (setgid,
  so that what members make in it stays the group's); members' tools run with the gid as their
  one supplementary group each, and with umask 007, so that members can edit each other's files.
- docker: a named volume per team, berth-<deployment>-team-<folder>, mounted at
  /home/teams/<folder>, the container given the gid (group_add).
- ecs: an EFS access point per team, under /berth-teams/<folder>, as the gid (uid and gid).
"""
import re
from dataclasses import dataclass

from sqlalchemy import select

from berth.backends.base import LaunchFailed
from berth.extensions import db
from berth.models import Group, Membership

CONTAINER_TEAMS = "/home/teams"  # where a container's tool (docker, ecs) finds its team folders


@dataclass(frozen=True)
class TeamFolder:
    group_id: int
    group_name: str
    name: str  # the folder's name: in paths, volume names and access point tags
    gid: int


def folder_name(group):
    """A name for the group's folder that is safe in a path and a volume name, and stays the
    group's alone: its name in lower-case letters, digits and dashes, then its id."""
    slug = re.sub(r"[^a-z0-9]+", "-", group.name.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'team'}-{group.id}"


def team_gid(config, group_id):
    low, high = config["BERTH_TEAM_GIDS"]
    gid = low + group_id
    if gid > high:
        raise LaunchFailed(f"BERTH_TEAM_GIDS ({low}-{high}) has no gid left for group {group_id}: "
                           "widen the range.")
    return gid


def team_folder(config, group):
    return TeamFolder(group.id, group.name, folder_name(group), team_gid(config, group.id))


def all_team_folders(config):
    """Every group's folder that is turned on, by group name."""
    groups = db.session.execute(select(Group).where(Group.team_folder.is_(True)).order_by(Group.name)).scalars()
    return [team_folder(config, group) for group in groups]


def team_folders_of(config, instance):
    """The team folders the instance's tool mounts: its owner's groups' that are turned on, now;
    none for a shared tool."""
    if instance.template.shared:
        return []
    groups = db.session.execute(
        select(Group).join(Membership, Membership.group_id == Group.id)
        .where(Membership.user_id == instance.owner_id, Group.team_folder.is_(True)).order_by(Group.id)
    ).scalars()
    return [team_folder(config, group) for group in groups]

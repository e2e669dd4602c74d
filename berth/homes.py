"""How much users' homes (and team folders) on the process backend hold, for the admin pages.

The worker measures them (record_usage, from a periodic task in berth.launch.tasks): it runs as
root and may read every home, which the web app, running as an unprivileged user, may not; and
a home may hold millions of files, which no page should wait for. Each folder is walked like
`du`, within a time budget, and what the walk found is recorded in the database (folder_usage),
where the pages read it (home_usage): "at least" where a walk was cut short, nothing for a
folder not measured yet.
"""
import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from berth.extensions import db
from berth.models import FolderUsage, utcnow

WALK_BUDGET_SECONDS = 30.0  # the longest one folder's walk; a longer one is recorded as a lower bound
_CHECK_EVERY = 256  # entries between two looks at the clock
_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass(frozen=True)
class Usage:
    """What a folder holds on disk (its blocks, as `du` counts them, each hard-linked file once).
    complete is False when the walk stopped at the budget or met folders it could not read:
    then size_bytes is what it found, a lower bound."""
    size_bytes: int
    complete: bool


def measure(path, budget=WALK_BUDGET_SECONDS, clock=time.monotonic):
    """The Usage of one folder, walked for at most budget seconds; None if it is not a folder."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    return _walk(path, clock() + budget, clock)


def record_usage(roots, budget=WALK_BUDGET_SECONDS, clock=time.monotonic):
    """Measure every folder directly under each of roots, record each measure, and forget the
    records of folders that are gone. Returns how many folders were measured."""
    measured = 0
    for root in roots:
        root = Path(root)
        present = set()
        try:
            entries = [entry for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]
        except OSError:  # no such root yet: nobody has launched a tool
            entries = []
        for entry in entries:
            usage = measure(entry.path, budget, clock)
            if usage is None:
                continue
            present.add(entry.path)
            _record(entry.path, usage)
            measured += 1
        # Records under this root of folders that are gone (a deleted home) go too.
        gone = [path for path in db.session.execute(
            select(FolderUsage.path).where(FolderUsage.path.startswith(f"{root}/"))).scalars()
            if path not in present and Path(path).parent == root]
        if gone:
            db.session.execute(delete(FolderUsage).where(FolderUsage.path.in_(gone)))
        db.session.commit()
    return measured


def _record(path, usage):
    table = FolderUsage.__table__
    values = {"size_bytes": usage.size_bytes, "complete": usage.complete, "measured_at": utcnow()}
    insert = _INSERT[db.engine.dialect.name](table).values(path=path, **values)
    db.session.execute(insert.on_conflict_do_update(index_elements=[table.c.path], set_=values))


def home_usage(folder, names):
    """{name: Usage, or None for a folder not measured (yet)} of the folders <folder>/<name>, as
    the worker last measured them."""
    paths = {str(Path(folder) / name): name for name in names}
    found = dict.fromkeys(names)
    if not paths:
        return found
    for row in db.session.execute(select(FolderUsage).where(FolderUsage.path.in_(list(paths)))).scalars():
        found[paths[row.path]] = Usage(row.size_bytes, row.complete)
    return found


def _walk(path, deadline, clock):
    total, complete, seen, folders, counted = 0, True, set(), [path], 0
    try:
        total += os.lstat(path).st_blocks * 512
    except OSError:
        return Usage(0, False)
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except OSError:  # unreadable, or gone while walking
            complete = False
            continue
        with entries:
            for entry in entries:
                counted += 1
                if counted % _CHECK_EVERY == 0 and clock() >= deadline:
                    return Usage(total, False)
                try:
                    stat = entry.stat(follow_symlinks=False)
                except OSError:
                    complete = False
                    continue
                if stat.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                    if (stat.st_dev, stat.st_ino) in seen:
                        continue
                    seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return Usage(total, complete)

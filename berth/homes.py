"""How much users' homes and team folders on the process backend hold, for the admin pages.

A home may hold millions of files, and a page must not wait for them. So each home is measured
by a walk, like `du`, that stops when its time budget is spent, and what a walk found is kept
for a few minutes: "at least" where a walk was cut short, and a home not reached yet is
measured on a later round, when the others come from memory. The worker measures, as root
(measure_folder, berth.launch.upkeep.measure_storage), and records what it found in the
database (StorageUsage), which the admin pages show: the web app may not read people's files.
"""
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REMEMBERED_SECONDS = 300  # a home's measure is this old at most
PAGE_BUDGET_SECONDS = 1.0  # the longest one page spends walking homes
_CHECK_EVERY = 256  # entries between two looks at the clock

_measured = {}  # path -> (monotonic time of measuring, Usage)
_lock = threading.Lock()


@dataclass(frozen=True)
class Usage:
    """What a home holds on disk (its blocks, as `du` counts them, each hard-linked file once).
    complete is False when the walk stopped at the budget or met folders it could not read:
    then size_bytes is what it found, a lower bound."""
    size_bytes: int
    complete: bool


def home_usage(homes_dir, names, budget=PAGE_BUDGET_SECONDS, clock=time.monotonic):
    """{name: Usage, or None for a home that does not exist or was not reached within budget}
    of the homes <homes_dir>/<name>."""
    deadline = clock() + budget
    found = {}
    for name in names:
        path = Path(homes_dir) / name
        with _lock:
            remembered = _measured.get(path)
        if remembered and clock() - remembered[0] < REMEMBERED_SECONDS and path.is_dir():
            found[name] = remembered[1]
            continue
        if clock() >= deadline or not path.is_dir():
            found[name] = None
            continue
        usage = _walk(path, deadline, clock)
        with _lock:
            _measured[path] = (clock(), usage)
        found[name] = usage
    return found


def measure_folder(folder, budget):
    """{name: Usage, or None if not reached within budget} of every folder in folder (not links)."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return {}
    return home_usage(folder, names, budget=budget)


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


def forget():
    """Drop every remembered measure (tests, and an operator's fresh look)."""
    with _lock:
        _measured.clear()

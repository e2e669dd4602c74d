"""The SQLite queue's worker side: a task queued by another process wakes a waiting worker
thread at once, not at its next look (berth/launch/sqlite_queue.py)."""
import threading
import time

from huey.storage import SqliteStorage

from berth.launch import sqlite_queue
from berth.launch.sqlite_queue import WAIT_SECONDS, WakingSqliteHuey


def _take_one(storage, taken):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = storage.dequeue()
        if data is not None:
            taken.append((time.monotonic(), bytes(data)))
            return


def test_a_queued_task_wakes_a_waiting_worker_thread(tmp_path):
    filename = str(tmp_path / "queue.db")
    worker = WakingSqliteHuey("berth", filename=filename, results=False).storage
    web = SqliteStorage("berth", filename=filename)  # another connection, as the web app's
    taken = []
    thread = threading.Thread(target=_take_one, args=(worker, taken))
    thread.start()
    time.sleep(WAIT_SECONDS / 5)  # it looked, found nothing, and waits up to WAIT_SECONDS
    queued = time.monotonic()
    web.enqueue(b"launch 1")
    thread.join(15)
    [(at, data)] = taken
    assert data == b"launch 1"
    # Woken by the write: its next look unwoken would come 4/5 of WAIT_SECONDS after it.
    assert at - queued < WAIT_SECONDS * 2 / 5, at - queued
    assert worker.blocking


def test_without_inotify_huey_polls_as_it_does_by_default(tmp_path, monkeypatch):
    def unavailable(folder, prefix):
        raise OSError(24, "inotify_init1 failed")

    monkeypatch.setattr(sqlite_queue, "FolderWatch", unavailable)
    worker = WakingSqliteHuey("berth", filename=str(tmp_path / "queue.db"), results=False).storage
    started = time.monotonic()
    assert worker.dequeue() is None
    assert time.monotonic() - started < WAIT_SECONDS  # no wait: huey's consumer sleeps instead
    assert worker.blocking is False
    worker.enqueue(b"stop 2")
    assert bytes(worker.dequeue()) == b"stop 2"

"""Huey's queue on SQLite, with a worker that takes a task the moment it is queued.

Huey polls a SQLite queue: an idle worker thread looks for work every few tens of milliseconds,
and a launch waits for the next look. Here the worker process watches the queue's folder with
inotify instead. Every task queued, by any process (the web app, the reconciler, huey's
scheduler), writes the queue's write-ahead log, and that write wakes the threads waiting for
work at once.

A thread looks at the queue at least every WAIT_SECONDS all the same, so that nothing waits
long for a change that went unseen, and so that a stopping consumer is not held up. A write
seen a moment before its commit can be read (SQLite writes the log, then marks the commit in
shared memory, which inotify does not see) leaves the queue looking empty: after a write, the
thread looks again FIRST_RECHECK_SECONDS later, then at doubling intervals up to WAIT_SECONDS.
Where inotify is not available, huey polls as it does by default (huey_consumer's -d, -m, -b).
"""
import ctypes
import logging
import os
import struct
import threading

from huey import SqliteHuey
from huey.storage import SqliteStorage

log = logging.getLogger(__name__)

WAIT_SECONDS = 0.5
FIRST_RECHECK_SECONDS = 0.001

# <sys/inotify.h>
_IN_MODIFY, _IN_MOVED_TO, _IN_CREATE, _IN_Q_OVERFLOW = 0x2, 0x80, 0x100, 0x4000
_EVENT_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class FolderWatch:
    """Counts writes to the files of one folder whose names start with prefix (inotify), and
    lets threads wait for the next one. Raises OSError where inotify is not available."""

    def __init__(self, folder, prefix):
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(folder), _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"cannot watch {folder}")
        self._fd = fd
        self._prefix = os.fsencode(prefix)
        self.writes = 0
        self._written = threading.Condition()
        threading.Thread(target=self._watch, name="berth-queue-watch", daemon=True).start()

    def _watch(self):
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError as error:
                log.warning("stopped watching the queue (%s); its worker threads look for work every "
                            "%s s", error, WAIT_SECONDS)
                return
            if self._names_match(data):
                with self._written:
                    self.writes += 1
                    self._written.notify_all()

    def _names_match(self, data):
        offset = 0
        while offset < len(data):
            _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
            offset += _EVENT_HEADER.size
            name = data[offset:offset + length].rstrip(b"\0")
            offset += length
            if mask & _IN_Q_OVERFLOW or name.startswith(self._prefix):
                return True
        return False

    def wait(self, seen, timeout):
        """Wait until there were more writes than seen, for timeout seconds at most."""
        with self._written:
            return self._written.wait_for(lambda: self.writes != seen, timeout)


class WakingSqliteStorage(SqliteStorage):
    """SqliteStorage whose dequeue waits, in the consumer, for the next write to the queue."""

    blocking = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._watch = None
        self._watch_pid = None  # a forked consumer process (huey_consumer -k process) watches anew
        self._watch_lock = threading.Lock()
        self._looks = threading.local()  # each worker thread's wait before its next look

    def _folder_watch(self):
        with self._watch_lock:
            if self._watch_pid != os.getpid():
                self._watch_pid = os.getpid()
                folder, name = os.path.split(os.path.abspath(self.filename))
                try:
                    self._watch = FolderWatch(folder, name)
                except OSError as error:
                    log.warning("cannot watch the queue (%s); polling it instead", error)
                    self._watch = None
                    self.blocking = False  # huey's consumer then sleeps between looks
            return self._watch

    def dequeue(self):
        watch = self._folder_watch()
        if watch is None:
            return super().dequeue()
        seen = watch.writes
        data = super().dequeue()
        if data is None:
            timeout = getattr(self._looks, "timeout", WAIT_SECONDS)
            written = watch.wait(seen, timeout)
            self._looks.timeout = FIRST_RECHECK_SECONDS if written else min(timeout * 2, WAIT_SECONDS)
        return data


class WakingSqliteHuey(SqliteHuey):
    storage_class = WakingSqliteStorage

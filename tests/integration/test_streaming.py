"""200 MB up and down through the real nginx to a running tool, with Berth's memory flat.

nginx streams bodies itself (proxy_request_buffering off, proxy_buffering off) and no Python
process of Berth sits in the data path of a running tool. So neither nginx (master and
workers) nor the auth service, the web app or the worker may grow with the size of a
transfer. A proxy that buffered in memory would grow by about 200 MB; one that buffered to
disk would leave "buffered to a temporary file" in nginx's error log, which is checked too.
"""
import hashlib
import os
import threading
import time

from tests.services import group_rss

SIZE = 200 * 1024 * 1024
CHUNK = 1024 * 1024
GROWTH_LIMIT_KIB = 30 * 1024  # per process group; buffering the body would cost ~200 MB


class MemoryWatch:
    """RSS of each of Berth's process groups before, at peak during, and after a block."""

    def __init__(self, stack, interval=0.02):
        self.roots = {name: process.pid for name, process in stack.processes.processes.items()}
        self.interval = interval
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self):
        return {name: group_rss(pid)[0] for name, pid in self.roots.items()}

    def _run(self):
        while not self._stop.wait(self.interval):
            for name, kib in self.sample().items():
                self.peak[name] = max(self.peak[name], kib)
            self.samples += 1

    def __enter__(self):
        self.before = self.sample()
        self.peak = dict(self.before)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.after = self.sample()
        for name, kib in self.after.items():
            self.peak[name] = max(self.peak[name], kib)

    def assert_flat(self, limit_kib=GROWTH_LIMIT_KIB):
        assert set(self.roots) >= {"nginx", "auth", "web", "worker"}, self.roots
        assert self.samples, "no sample was taken during the transfer, so there is no peak"
        report = {name: f"before {self.before[name] // 1024} MB, peak {self.peak[name] // 1024} MB, "
                        f"after {self.after[name] // 1024} MB" for name in self.roots}
        grown = {name: report[name] for name in self.roots
                 if self.peak[name] - self.before[name] > limit_kib
                 or self.after[name] - self.before[name] > limit_kib}
        assert not grown, f"memory grew by more than {limit_kib // 1024} MB: {grown} (all: {report})"


class ErrorLog:
    """The part of nginx's error log written while the block ran."""

    def __init__(self, stack):
        self.path = stack.data_dir / "nginx" / "logs" / "error.log"

    def __enter__(self):
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        return self

    def __exit__(self, *exc):
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            self.text = log.read().decode("utf-8", "replace")


def _body(digest):
    """SIZE bytes, made CHUNK at a time: the test never holds the whole body."""
    block = os.urandom(CHUNK)
    for index in range(SIZE // CHUNK):
        chunk = block[index:] + block[:index]  # every chunk differs, so the digest checks order
        digest.update(chunk)
        yield chunk


def _warm_up(stack, browser, user):
    """Open the tool and move a little data both ways, so that first-use allocations are not counted."""
    assert stack.open_tool(browser, "echo", user, "/headers").status_code == 200
    answer = browser.post(stack.tool_url("echo", user, "/upload"), data=b"w" * CHUNK, timeout=30)
    assert answer.json()["bytes"] == CHUNK
    answer = browser.get(stack.tool_url("echo", user, f"/download?bytes={CHUNK}"), timeout=30)
    assert len(answer.content) == CHUNK


def test_upload_of_200_mb_streams_to_the_tool_with_flat_memory(stack, alice):
    with stack.login(alice) as browser:
        _warm_up(stack, browser, alice)
        digest = hashlib.sha256()
        started = time.monotonic()
        with ErrorLog(stack) as log, MemoryWatch(stack) as memory:
            with browser.post(stack.tool_url("echo", alice, "/upload"), data=_body(digest),
                              headers={"Accept": "application/json"}, timeout=120) as answer:
                assert answer.status_code == 200, answer.text
                result = answer.json()
        elapsed = time.monotonic() - started
    assert result == {"bytes": SIZE, "sha256": digest.hexdigest()}, result
    memory.assert_flat()
    assert "buffered to a temporary file" not in log.text, log.text
    assert elapsed < 60, f"200 MB took {elapsed:.1f} s"


def test_download_of_200_mb_streams_from_the_tool_with_flat_memory(stack, alice):
    with stack.login(alice) as browser:
        _warm_up(stack, browser, alice)
        received = 0
        started = time.monotonic()
        with ErrorLog(stack) as log, MemoryWatch(stack) as memory:
            with browser.get(stack.tool_url("echo", alice, f"/download?bytes={SIZE}"), stream=True,
                             headers={"Accept": "application/octet-stream"}, timeout=120) as response:
                assert response.status_code == 200, response.text
                assert response.headers["Content-Length"] == str(SIZE)
                for chunk in response.iter_content(CHUNK):
                    assert not chunk.strip(b"b"), "the tool sends only b'b' bytes"
                    received += len(chunk)
        elapsed = time.monotonic() - started
    assert received == SIZE
    memory.assert_flat()
    assert "buffered to a temporary file" not in log.text, log.text
    assert elapsed < 60, f"200 MB took {elapsed:.1f} s"

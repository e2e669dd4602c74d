"""The copy of the bundled tools that sandboxed tools run from (berth/backends/process.py).

Launches refresh it while other tools start from it: a starting tool must never read a module
half written. An emptied echo.py once made a tool exit 0 at once, with no output."""
import threading
from pathlib import Path

from berth.backends.process import BUNDLED_TOOLS, _bundled_tools_runtime


def test_refreshing_the_copy_never_shows_a_reader_a_partial_module(tmp_path):
    config = {"BERTH_DATA_DIR": str(tmp_path)}
    copy = Path(_bundled_tools_runtime(config)) / "berth_tools" / "echo.py"
    original = (Path(BUNDLED_TOOLS) / "echo.py").read_bytes()
    older = b"# the echo tool of an older Berth\n"
    aside = copy.with_name("older")
    seen, done = set(), threading.Event()

    def read_while_refreshed():
        while not done.is_set():
            seen.add(copy.read_bytes())

    reader = threading.Thread(target=read_while_refreshed)
    reader.start()
    try:
        for round in range(200):
            if round % 2:  # as after an upgrade of Berth: the copy differs, and is replaced
                aside.write_bytes(older)
                aside.replace(copy)
            _bundled_tools_runtime(config)
    finally:
        done.set()
        reader.join()
    assert seen == {original, older}
    assert copy.stat().st_mode & 0o777 == 0o644
    assert not [path for path in copy.parent.iterdir() if path.name.startswith(".")]

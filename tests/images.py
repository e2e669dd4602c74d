"""Container images for the tests, built offline: there is no registry to pull from.

- berth-test/busybox: FROM scratch with a static busybox; `httpd` serves plain HTTP.
- berth-test/echo: a Debian root file system (debootstrap, with python3 and aiohttp),
  imported with `docker import`, plus berth_tools/echo.py: HTTP, WebSocket echo, streaming.

The root file system takes a minute or two to build, so its tarball is cached in
~/.cache/berth-test-images, keyed by everything that goes into it. Images are rebuilt in
each throwaway dockerd from those inputs, which takes seconds.
"""
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("BERTH_TEST_IMAGE_CACHE", Path.home() / ".cache" / "berth-test-images"))
DEBOOTSTRAP = ["debootstrap", "--variant=minbase", "--include=python3,python3-aiohttp", "bookworm"]
MIRROR = os.environ.get("BERTH_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")

BUSYBOX_IMAGE = "berth-test/busybox:1"
ECHO_IMAGE = "berth-test/echo:1"


def _build_from_files(client, tag, files):
    """docker build from an in-memory context: {path in context: bytes or (bytes, mode)}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            data, mode = content if isinstance(content, tuple) else (content, 0o644)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    client.images.build(fileobj=buffer, custom_context=True, tag=tag, rm=True, forcerm=True)


def build_busybox(client):
    busybox = shutil.which("busybox")
    if not busybox:
        raise RuntimeError("busybox-static is not installed; `make test` installs it")
    _build_from_files(client, BUSYBOX_IMAGE, {
        "Dockerfile": b"FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n"
                      b'ENTRYPOINT ["/bin/busybox"]\n',
        "busybox": (Path(busybox).read_bytes(), 0o755),
        "www/index.html": b"<!doctype html><title>busybox</title><h1>Hello from busybox</h1>\n",
        "www/health": b"ok\n",
    })
    return BUSYBOX_IMAGE


def _rootfs_tarball():
    key = hashlib.sha256(" ".join(DEBOOTSTRAP + [MIRROR]).encode()).hexdigest()[:16]
    tarball = CACHE / f"bookworm-python-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="berth-rootfs-"))
    try:
        subprocess.run(DEBOOTSTRAP + [str(work / "root"), MIRROR], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(work / "root"), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)  # only a complete tarball is ever cached
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return tarball


def build_echo(client):
    tarball = _rootfs_tarball()
    client.api.import_image_from_file(str(tarball), repository="berth-test/python-base", tag="1")
    _build_from_files(client, ECHO_IMAGE, {
        "Dockerfile": b"FROM berth-test/python-base:1\nCOPY echo.py /opt/echo.py\n"
                      b'ENTRYPOINT ["python3", "/opt/echo.py"]\n',
        "echo.py": (ROOT / "berth_tools" / "echo.py").read_bytes(),
    })
    return ECHO_IMAGE


HOSTILE_IMAGE = "berth-test/hostile:1"


def build_hostile(client):
    """The hostile tool of tests/security/ in a container (on the echo image's Python base)."""
    build_echo(client)
    _build_from_files(client, HOSTILE_IMAGE, {
        "Dockerfile": b"FROM berth-test/python-base:1\nCOPY hostile_tool.py /opt/hostile_tool.py\n",
        "hostile_tool.py": (ROOT / "tests" / "security" / "hostile_tool.py").read_bytes(),
    })
    return HOSTILE_IMAGE

"""What keeps two Berths on one machine apart when `berth run` starts: each port it needs must be
free (and it names the one that is not, and who holds it), and a data folder serves one Berth
at a time (a lock held for the life of `berth run`).
"""
import errno
import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = "berth-run.lock"


class Clash(Exception):
    """Another program holds what this Berth needs; the message says what and who."""


def listen_address(bind, port):
    """nginx's `listen` for a host address and a port (IPv6 addresses in brackets)."""
    return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"


def check_ports_free(ports):
    """ports: (setting name, host address, port). Raise Clash for the first one taken."""
    for name, host, port in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx and granian bind
            try:
                probe.bind((host, port))
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise Clash(f"{name}: cannot listen on {listen_address(host, port)} "
                                f"({error.strerror})") from None
                raise Clash(f"{name}: port {port} on {host} is taken{_by_whom(port)}; stop it, or set "
                            f"{name} to a free port") from None


def _by_whom(port):
    holders = sorted(listening_pids(port))
    for pid in holders:
        data_dir = berth_data_dir(pid)
        if data_dir:
            return f" by another Berth (data folder {data_dir}, pid {pid})"
    return f" by {_program(holders[0])} (pid {holders[0]})" if holders else ""


def berth_data_dir(pid):
    """The data folder of the Berth that process pid belongs to, or None if it is not Berth's.

    Berth's auth, web and worker have BERTH_DATA_DIR in their environment; nginx writes its
    title over its environment, but its prefix is <data folder>/nginx, next to the lock."""
    data_dir = _environ(pid).get("BERTH_DATA_DIR")
    if data_dir:
        return data_dir
    words = command_line(pid).split()
    if "-p" in words[:-1]:
        prefix = Path(words[words.index("-p") + 1])
        if (prefix.parent / LOCK_FILE).exists():
            return str(prefix.parent)
    return None


def listening_pids(port):
    """Pids of the processes that hold a listening TCP socket on port (only those this process
    may look into: all of them as root)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    if not inodes:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            descriptors = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in inodes for fd in descriptors):
                pids.add(int(entry))
        except OSError:
            continue
    return pids


def _environ(pid):
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def command_line(pid):
    """The command line of process pid, its words joined by spaces ("" once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _program(pid):
    words = command_line(pid).split()
    return os.path.basename(words[0]).rstrip(":") if words else "a process"


def lock_data_dir(data_dir):
    """Hold the data folder's lock until this process ends; Clash if another Berth holds it.

    flock, so the kernel lets go of it when `berth run` dies, however it dies."""
    path = Path(data_dir) / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise Clash(f"BERTH_DATA_DIR={data_dir} is in use by another Berth"
                    f"{f' (pid {holder})' if holder else ''}: stop it, or set BERTH_DATA_DIR to another "
                    "folder") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle

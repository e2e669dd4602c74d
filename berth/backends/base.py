"""The interface every spawner backend implements, and helpers they share."""
import random
import socket
from abc import ABC, abstractmethod
from datetime import timedelta


CONTAINER_HOME = "/home/berth"  # where a container's tool (docker, ecs) finds its owner's home; also $HOME


def home_name(instance):
    """The name of the home a tool works in: its owner's host key, a home all their tools share,
    or, for a shared tool, shared-<slug>, the tool's own, so that no visitor's files end up in it."""
    if instance.template.shared:
        return f"shared-{instance.template.slug}"
    return instance.owner.host_key


class LaunchFailed(Exception):
    """A launch cannot go on. `reason` is shown to the user; `detail` (e.g. stderr) below it."""

    def __init__(self, reason, detail=""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Backend(ABC):
    """One class per backend. Methods take the ToolInstance row and never keep state of their own.

    steps          the launch steps this backend runs, in order, before Berth waits for health
    run_step       do one step and return the changes to record: any of backend_state (merged),
                   port, upstream. Must be idempotent: the step may run again after a crash.
    check_ready    the upstream address once the tool answers, None while it is coming up;
                   raise LaunchFailed if it never will (it exited, the image is missing, ...)
    is_alive       (alive, reason) for a RUNNING instance
    stop           end the tool; safe to call on a tool that is gone or was never started
    list_managed   {instance_id: description} of everything this deployment is running
    stop_managed   end one entry of list_managed (an orphan the reconciler found)
    failure_detail the last lines the tool wrote to stderr, for the failed page
    delete_home    delete a departed user's home (admin pages), never while a tool of theirs runs
    """

    name = ""
    steps = ()

    def __init__(self, config):
        self.config = config

    @abstractmethod
    def run_step(self, step, instance):
        ...

    @abstractmethod
    def check_ready(self, instance):
        ...

    @abstractmethod
    def is_alive(self, instance):
        ...

    @abstractmethod
    def stop(self, instance):
        ...

    @abstractmethod
    def stop_managed(self, instance_id, description):
        ...

    @abstractmethod
    def list_managed(self):
        ...

    def failure_detail(self, instance):
        return ""

    def delete_home(self, home):
        """Delete the home called home (base.home_name) from this backend's storage, when no
        tool of its user runs. Returns what it removed, for the audit record; [] if none."""
        return []


def probe_http(address, path, timeout=1.0):
    """True if something answers HTTP at address (host:port) with a status below 500."""
    import http.client

    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        connection.request("GET", path or "/", headers={"User-Agent": "berth-health-probe"})
        return connection.getresponse().status < 500
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def tail_of_file(path, lines=20, max_bytes=16384):
    """The last lines of a log file, as text; empty if there is none."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def allocate_port(config):
    """A loopback port from BERTH_PORT_RANGE that no live instance holds and nothing listens on.

    Nor one that a tool left within the auth cache's lifetime (and a second more, as nginx counts
    whole seconds): nginx may still send a cached answer's requests to that port
    (docs/decisions/0021-one-second-auth-cache.md), and they must not reach another tool.

    Two workers may pick the same port at once; the partial unique index on live ports lets
    only one record it, and the launcher retries the other.
    """
    from sqlalchemy import or_, select

    from berth.extensions import db
    from berth.models import State, ToolInstance, utcnow

    low, high = config["BERTH_PORT_RANGE"]
    recently = utcnow() - timedelta(seconds=config["BERTH_AUTH_CACHE_SECONDS"] + 1)
    taken = set(db.session.execute(
        select(ToolInstance.port).where(
            or_(ToolInstance.state.in_(State.LIVE), ToolInstance.ended_at > recently),
            ToolInstance.port.is_not(None))
    ).scalars())
    candidates = [port for port in range(low, high + 1) if port not in taken]
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise LaunchFailed(f"No free port in {low}-{high}: too many tools are running.")

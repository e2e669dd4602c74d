"""Isolation for process-backend tools: an OS user of their own and a network namespace each.

A tool is someone else's code. On the process backend it therefore runs:

- as an unprivileged uid and gid of its owner's (the lowest of BERTH_TOOL_UIDS plus the Berth
  user's id), never as Berth's user or root, with no supplementary groups but its owner's team
  folders' gids (berth/backends/teams.py), and no_new_privs, so that no setuid program gives it
  privileges back. It can read and write its owner's home
  (0700) and nothing of Berth's: the data directory is 0711 and everything else in it is
  Berth's own, 0600 or 0700;
- in a network namespace of its own, joined to the host by one veth pair with a /30 of
  BERTH_TOOL_NETWORK. nginx reaches the tool at its end of the pair. The firewall chains below
  drop everything the tool starts towards the host (Berth's services, the database, Redis)
  and towards other tools; traffic beyond the host passes only for templates that allow
  egress. The tool's loopback and its ports are its own: it can neither scan nor hoard
  anyone else's.

Everything here is idempotent and named after the deployment and the instance, so a step
redone after a crash finds what the first attempt made, and the reconciler can list and
remove what no live instance owns.
"""
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from berth.backends.base import LaunchFailed
from berth.tool_network import slot_addresses, slot_count, slot_of_port

FOLDER_MODE = 0o2770  # a team folder: its group reads and writes, and what is made in it stays the group's

# The firewall chains, shared by every deployment on the host; the per-tool rules name the
# tool's host-side link, bth<slot>.
INPUT_CHAIN = "BERTH-TOOLS-IN"
FORWARD_CHAIN = "BERTH-TOOLS-FWD"
EGRESS_CHAIN = "BERTH-TOOLS-EGRESS"
LINK_PREFIX = "bth"  # host side; the tool's side is btt<slot>. Interface names: at most 15 bytes.
DOCKER_LINK_PREFIX = "btd"  # the bridge of a docker tool's own network (backends/docker.py)
COMMANDS = ("ip", "iptables", "setpriv")


class Sandbox:
    def __init__(self, config):
        self.config = config
        self.deployment = re.sub(r"[^A-Za-z0-9_.-]", "_", config["BERTH_DEPLOYMENT"])
        self.network = ipaddress.ip_network(config["BERTH_TOOL_NETWORK"])
        self.slots = slot_count(config)

    # -- preconditions ----------------------------------------------------------------------
    def check_available(self):
        """Raise LaunchFailed, saying what to do, where tools cannot be isolated here."""
        if os.geteuid() != 0:
            raise LaunchFailed(
                f"Berth runs as uid {os.geteuid()} and cannot run tools as users of their own. Run "
                "the worker as root, or set BERTH_TOOL_ISOLATION=single-user for a one-person "
                "installation (docs/security.md).")
        missing = [name for name in COMMANDS if shutil.which(name) is None]
        if missing:
            raise LaunchFailed(f"Tool isolation needs {', '.join(missing)}, which this host lacks "
                               "(apt-get install iproute2 iptables util-linux).")

    def uid_for(self, instance):
        """The tool's uid (and gid): its owner's, counted up from the bottom of BERTH_TOOL_UIDS;
        a shared tool has one of its own, counted down from the top, so that its files belong
        to the tool and not to whoever opened it first."""
        low, high = self.config["BERTH_TOOL_UIDS"]
        middle = (low + high) // 2
        if instance.template.shared:
            uid = high - instance.template.id
            if uid <= middle:
                raise LaunchFailed(f"BERTH_TOOL_UIDS ({low}-{high}) has no uid left for shared tool "
                                   f"{instance.template.slug}: widen the range.")
        else:
            uid = low + instance.owner_id
            if uid > middle:
                raise LaunchFailed(f"BERTH_TOOL_UIDS ({low}-{high}) has no uid left for user "
                                   f"{instance.owner_id}: widen the range.")
        return uid

    # -- files ------------------------------------------------------------------------------
    @staticmethod
    def prepare_home(path, uid):
        """The home exists, belongs to uid and is 0700; its parents are traversable but not listable."""
        _prepare_folder(path, uid, uid, 0o700, "its home", "BERTH_DATA_DIR (or BERTH_HOMES_DIR)")

    @staticmethod
    def prepare_team_folder(path, gid):
        """The team folder exists, belongs to root and gid, and is 2770: members (gid) read and
        write, what they make stays gid's, and no one else passes. Its parent is traversable
        but not listable, so a tool learns no other team's folder."""
        _prepare_folder(path, 0, gid, FOLDER_MODE, "its team folder", "BERTH_TEAMS_DIR")

    # -- network ----------------------------------------------------------------------------
    def namespace(self, instance_id):
        return f"berth-{self.deployment}-{instance_id}"

    def create_network(self, instance_id, port, egress=False):
        """The tool's namespace and veth pair; returns what to record. Idempotent.

        The tool gets its port's slot when it is free (berth/tool_network.py): nginx then keeps
        connections to it alive."""
        self.install_firewall()
        self.keep_network_on_host()
        namespace = self.namespace(instance_id)
        made = _run("ip", "netns", "add", namespace, ok_if="File exists").returncode == 0
        slot = None if made else self._slot_of(namespace)  # a new namespace holds no link yet
        if slot is None:
            slot = self._add_link(namespace, slot_of_port(self.config, port))
        host_ip, tool_ip, prefix = self._addresses(slot)
        link, peer = f"{LINK_PREFIX}{slot}", f"btt{slot}"
        _disable_ipv6(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6")
        _run("ip", "netns", "exec", namespace, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
        _run_ip_batch([], [f"addr replace {host_ip}/{prefix} dev {link}", f"link set {link} up"])
        _run_ip_batch(["-n", namespace], [f"addr replace {tool_ip}/{prefix} dev {peer}", f"link set {peer} up",
                                          "link set lo up", f"route replace default via {host_ip}"])
        if egress:
            _ensure_rule("filter", EGRESS_CHAIN, "-i", link, "-j", "ACCEPT")
            _ensure_rule("nat", "POSTROUTING", "-s", f"{tool_ip}/32", "!", "-o", f"{LINK_PREFIX}+",
                         "-j", "MASQUERADE")
        return {"namespace": namespace, "slot": slot, "address": tool_ip}

    def keep_network_on_host(self):
        """Refuse at once, on this host, a connection to an address of BERTH_TOOL_NETWORK that no
        running tool holds: each running tool's /30 is more specific than this route, so it goes
        through the tool's link. Without it, once a tool's link is gone its address follows the
        default route off the host, and nginx still sends requests there on an auth answer it
        cached before the stop (docs/decisions/0021-one-second-auth-cache.md)."""
        self.refuse(str(self.network))

    @staticmethod
    def refuse(network):
        """An `unreachable` route for network (an address, or a network): a connection to it
        fails at once on this host (nginx shows Berth's not-answering page), whatever the
        routes less specific than it say. Idempotent."""
        _run("ip", "route", "replace", "unreachable", network)

    @staticmethod
    def stop_refusing(network):
        """Remove refuse()'s routes within network. Idempotent."""
        _run("ip", "route", "flush", "root", network, "type", "unreachable")

    def _add_link(self, namespace, first_slot):
        """Claim a free slot, first_slot if it is free: creating its link is atomic, so two
        launches never share one."""
        for offset in range(self.slots):
            slot = (first_slot + offset) % self.slots
            created = subprocess.run(
                ["ip", "link", "add", f"{LINK_PREFIX}{slot}", "type", "veth", "peer", "name",
                 f"btt{slot}", "netns", namespace], capture_output=True, text=True)
            if created.returncode == 0:
                return slot
            if "File exists" not in created.stderr:
                raise LaunchFailed(f"Could not create the tool's network link: {created.stderr.strip()}")
        raise LaunchFailed(f"BERTH_TOOL_NETWORK ({self.network}) has no room for another tool.")

    def _slot_of(self, namespace):
        """The slot of the link already in namespace (a step redone after a crash), or None."""
        listed = subprocess.run(["ip", "-n", namespace, "-o", "link", "show"], capture_output=True, text=True)
        match = re.search(r"\bbtt(\d+)@", listed.stdout)
        return int(match.group(1)) if match else None

    def _addresses(self, slot):
        return slot_addresses(self.config, slot)

    def remove_network(self, namespace):
        """Kill whatever still runs in the namespace, then remove it and its link. Idempotent."""
        slot = self._slot_of(namespace)
        for pid in self.pids(namespace):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if slot is not None:
            link = f"{LINK_PREFIX}{slot}"
            _, tool_ip, _ = self._addresses(slot)
            # Refused at once from here on, before the link goes: a connection nginx began while
            # the link was being deleted lost its SYN with it, and then waited, unanswered, for
            # its whole connect timeout (on an auth answer cached before the stop).
            self.refuse(f"{tool_ip}/32")
            _delete_rule("filter", EGRESS_CHAIN, "-i", link, "-j", "ACCEPT")
            _delete_rule("nat", "POSTROUTING", "-s", f"{tool_ip}/32", "!", "-o", f"{LINK_PREFIX}+",
                         "-j", "MASQUERADE")
            _run("ip", "link", "del", link, ok_if="Cannot find device")
            # From now on the route over all of BERTH_TOOL_NETWORK refuses it, and the slot is
            # free for another tool, whose address this /32 must not shadow.
            self.stop_refusing(f"{tool_ip}/32")
        _run("ip", "netns", "del", namespace, ok_if="No such file")

    @staticmethod
    def pids(namespace):
        listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        return [int(pid) for pid in listed.stdout.split() if pid.isdigit()]

    def namespaces(self):
        """{instance_id: namespace} of this deployment's tool namespaces on this host."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        prefix = f"berth-{self.deployment}-"
        found = {}
        for line in listed.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                found[int(name[len(prefix):])] = name
        return found

    # -- processes --------------------------------------------------------------------------
    @staticmethod
    def command(namespace, uid, argv, team_gids=()):
        """argv run inside namespace as uid, with no way to gain privileges, and with no
        supplementary groups but the gids of its owner's team folders.

        `ip netns exec` and setpriv each exec the next program, so the pid that Popen returns
        is the tool's own."""
        groups = f"--groups={','.join(str(gid) for gid in team_gids)}" if team_gids else "--clear-groups"
        return ["ip", "netns", "exec", namespace,
                "setpriv", f"--reuid={uid}", f"--regid={uid}", groups, "--no-new-privs",
                "--inh-caps=-all", "--", *argv]

    # -- firewall ---------------------------------------------------------------------------
    @staticmethod
    def install_firewall():
        """The chains every tool link passes through. Idempotent, shared by all deployments.

        INPUT: a tool may answer connections (nginx's), but starts none to the host itself;
        this holds for docker tools on their own bridges too.
        FORWARD: nothing from a tool to another tool; beyond the host only through the egress
        chain, which holds one ACCEPT per tool whose template allows it.

        Checking every rule takes a dozen and a half iptables runs, most of a tenth of a second
        in all. When the filter table reads exactly as it did once this process last made sure
        of every rule, they are all there still, and one listing suffices. Any change to the
        table (a flush, another tool's rule) makes it check them all again.
        """
        with _firewall.lock:
            listing = _filter_rules()
            if listing is not None and listing == _firewall.checked:
                return
            _install_firewall_rules()
            _firewall.checked = _filter_rules()


def _install_firewall_rules():
    for table, chain in (("filter", INPUT_CHAIN), ("filter", FORWARD_CHAIN), ("filter", EGRESS_CHAIN)):
        _run("iptables", "-w", "-t", table, "-N", chain, ok_if="already exists")
    links = f"{LINK_PREFIX}+"
    for tool_links in (links, f"{DOCKER_LINK_PREFIX}+"):  # process tools, docker tools' own bridges
        _ensure_rule("filter", "INPUT", "-i", tool_links, "-j", INPUT_CHAIN, insert=True)
    _ensure_rule("filter", "FORWARD", "-i", links, "-j", FORWARD_CHAIN, insert=True)
    _ensure_rule("filter", "FORWARD", "-o", links, "-j", FORWARD_CHAIN, insert=True)
    _ensure_rule("filter", INPUT_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
    _ensure_rule("filter", INPUT_CHAIN, "-j", "DROP")
    _ensure_rule("filter", FORWARD_CHAIN, "-i", links, "-o", links, "-j", "DROP")
    # Between tools of the two backends, and between docker tools' own bridges, whatever
    # Docker's own isolation rules say (another engine on the host may rewrite them).
    docker_links = f"{DOCKER_LINK_PREFIX}+"
    for inbound, outbound in ((links, docker_links), (docker_links, links), (docker_links, docker_links)):
        _ensure_rule("filter", "FORWARD", "-i", inbound, "-o", outbound, "-j", "DROP", insert=True)
    _ensure_rule("filter", FORWARD_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
    _ensure_rule("filter", FORWARD_CHAIN, "-i", links, "-j", EGRESS_CHAIN)
    _ensure_rule("filter", FORWARD_CHAIN, "-j", "DROP")


class _FirewallChecked:
    """The filter table's rules as this process last found them complete (Sandbox.install_firewall)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.checked = None


_firewall = _FirewallChecked()


def _filter_rules():
    """`iptables -S` of the filter table, or None if it cannot be listed."""
    listed = subprocess.run(["iptables", "-w", "-t", "filter", "-S"], capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else None


def _run_ip_batch(options, commands):
    """Several `ip` commands in one run of ip (`-batch`): it stops at the first that fails."""
    result = subprocess.run(["ip", *options, "-batch", "-"], input="\n".join(commands) + "\n",
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchFailed(f"Could not isolate the tool: `ip {' '.join(options)}` said {result.stderr.strip()!r} "
                           f"to {commands!r}.")
    return result


def _run(*argv, ok_if=None):
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0 and not (ok_if and ok_if in result.stderr):
        raise LaunchFailed(f"Could not isolate the tool: `{' '.join(argv)}` said {result.stderr.strip()!r}.")
    return result


def _ensure_rule(table, chain, *rule, insert=False):
    check = subprocess.run(["iptables", "-w", "-t", table, "-C", chain, *rule], capture_output=True)
    if check.returncode != 0:
        _run("iptables", "-w", "-t", table, "-I" if insert else "-A", chain, *rule)


def _delete_rule(table, chain, *rule):
    while subprocess.run(["iptables", "-w", "-t", table, "-D", chain, *rule], capture_output=True).returncode == 0:
        pass


def _disable_ipv6(path):
    """No IPv6 on a tool link: its link-local addresses would be a way around the IPv4 rules."""
    deadline = time.monotonic() + 2
    while True:
        try:
            with open(path, "w") as knob:
                knob.write("1")
            return
        except FileNotFoundError:  # IPv6 is off on this host, or the link is still appearing
            if not os.path.exists("/proc/sys/net/ipv6") or time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _prepare_folder(path, uid, gid, mode, what, setting):
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o711, exist_ok=True)
    os.chmod(parent, 0o711)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    blocked = _untraversable_parent(path)
    if blocked:
        raise LaunchFailed(f"A tool's user cannot reach {what} {path}: {blocked} is closed to other users. "
                           f"Put {setting} under a folder that others may traverse (mode o+x).")


def _untraversable_parent(path):
    """The first parent of path that other users cannot traverse, or None."""
    current = os.path.dirname(os.path.abspath(path))
    while True:
        if not os.stat(current).st_mode & 0o001:
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent

"""The docker backend: each tool is a container, through the Docker Engine API (docker SDK).

Containers have a deterministic name (berth-<deployment>-<instance id>) and berth.* labels,
so a step redone after a crash finds the container it made, and the reconciler can list
every container this deployment runs. Containers run as their owner's uid from
BERTH_TOOL_UIDS, with every capability dropped and no-new-privileges. Network modes:

- a network of its own (BERTH_DOCKER_NETWORK unset, the default): each tool gets a bridge
  network that nothing else joins, internal (no route out) unless its template allows
  egress. Docker keeps bridge networks apart, and the firewall chain of sandbox.py drops
  what a tool starts towards the host itself. nginx on the host reaches the tool at its
  address on that network, on the template's port.
- a named network (BERTH_DOCKER_NETWORK=berth-tools): every tool and nginx's container share
  it (the compose deployment). Tools on it can reach each other.
- host networking (BERTH_DOCKER_NETWORK=host): the tool listens on a loopback port that Berth
  allocates, beside everything else on the host. For one person's own laptop only.
"""
import hashlib
import io
import logging
import posixpath
import tarfile
import time

from berth.backends.base import CONTAINER_HOME, Backend, LaunchFailed, allocate_port, home_name, probe_http
from berth.backends.placeholders import fill
from berth.backends.sandbox import DOCKER_LINK_PREFIX, FOLDER_MODE, Sandbox
from berth.backends.teams import CONTAINER_TEAMS, team_folders_of

log = logging.getLogger(__name__)

LABEL = "berth.deployment"
_HOMES_PARENT = "/home"  # holds CONTAINER_HOME and CONTAINER_TEAMS: their owners and modes are set from here


class DockerBackend(Backend):
    name = "docker"
    steps = ("allocate", "create", "start")

    def __init__(self, config):
        super().__init__(config)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import docker

            try:
                if self.config.get("BERTH_DOCKER_URL"):
                    self._client = docker.DockerClient(base_url=self.config["BERTH_DOCKER_URL"], timeout=30)
                else:
                    self._client = docker.from_env(timeout=30)
            except docker.errors.DockerException as error:
                raise LaunchFailed(f"Berth cannot reach the Docker engine: {error}") from None
        return self._client

    def container_name(self, instance_id):
        return f"berth-{self.config['BERTH_DEPLOYMENT']}-{instance_id}"

    @property
    def host_networking(self):
        return self.config.get("BERTH_DOCKER_NETWORK") == "host"

    def network_of(self, instance_id):
        """The network a tool's container is on: its own, or the one BERTH_DOCKER_NETWORK names."""
        return self.config.get("BERTH_DOCKER_NETWORK") or self.container_name(instance_id)

    def _tool_port(self, instance):
        return instance.port if self.host_networking else (instance.template.port or 8888)

    # -- launch steps ---------------------------------------------------------------------
    def run_step(self, step, instance):
        if step == "allocate":
            return {"port": allocate_port(self.config) if self.host_networking else None}
        if step == "create":
            return {"backend_state": {"container": self._create(instance)}}
        if step == "start":
            self._start(instance)
            return {}
        raise LaunchFailed(f"The docker backend has no step {step!r}.")

    def _find(self, instance_id):
        import docker

        try:
            return self.client.containers.get(self.container_name(instance_id))
        except docker.errors.NotFound:
            return None

    def _ensure_image(self, image):
        import docker

        policy = self.config.get("BERTH_DOCKER_PULL", "missing")
        if policy != "always":
            try:
                self.client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                if policy == "never":
                    raise LaunchFailed(f"The image {image!r} is not on this Docker host, and "
                                       "BERTH_DOCKER_PULL=never forbids pulling it.") from None
        try:
            self.client.images.pull(image)
        except docker.errors.DockerException as error:
            raise LaunchFailed(f"The image {image!r} is not on this Docker host and could not be "
                               f"pulled: {_explain(error)}") from None

    def _create(self, instance):
        import docker

        existing = self._find(instance.id)
        if existing is not None:  # made before a crash, not yet recorded: adopt it
            return existing.id
        template = instance.template
        if not template.image:
            raise LaunchFailed("The template names no image for the docker backend.")
        self._ensure_image(template.image)
        port = self._tool_port(instance)
        command, env = fill(instance, port, home=CONTAINER_HOME,
                            ip="127.0.0.1" if self.host_networking else "0.0.0.0")
        env["PORT"] = str(port)
        env["HOME"] = CONTAINER_HOME
        uid = Sandbox(self.config).uid_for(instance)
        # Without a home (home: false), /home/berth is the container's own, gone with it.
        teams = team_folders_of(self.config, instance) if template.home else []
        volumes = {self._home_volume(instance): {"bind": CONTAINER_HOME, "mode": "rw"}} if template.home else {}
        for team in teams:
            volumes[self._team_volume(team)] = {"bind": f"{CONTAINER_TEAMS}/{team.name}", "mode": "rw"}
        if teams:
            env["BERTH_TEAM_FOLDERS"] = ":".join(f"{CONTAINER_TEAMS}/{team.name}" for team in teams)
        size = instance.size or {}
        options = {
            "name": self.container_name(instance.id),
            "command": command or None,
            "environment": env,
            "labels": {
                LABEL: self.config["BERTH_DEPLOYMENT"],
                "berth.instance": str(instance.id),
                "berth.template": template.slug,
                "berth.owner": str(instance.owner_id),
                # Which team folders it mounts, with their gids: its start hands each to its gid.
                "berth.teams": ",".join(f"{team.name}:{team.gid}" for team in teams),
            },
            "init": True,  # a real PID 1 that forwards SIGTERM, so stop is quick
            "volumes": volumes,
            "group_add": [str(team.gid) for team in teams],
            "working_dir": CONTAINER_HOME,
            "detach": True,
            # The tool's own unprivileged uid: never root, and no capability to gain it back.
            "user": f"{uid}:{uid}",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if size.get("cpu"):
            options["nano_cpus"] = int(float(size["cpu"]) * 1e9)
        if size.get("memory_mb"):
            options["mem_limit"] = f"{int(size['memory_mb'])}m"
        if self.host_networking:
            options["network_mode"] = "host"
        else:
            if not self.config.get("BERTH_DOCKER_NETWORK"):
                self._own_network(instance)
            options["network"] = self.network_of(instance.id)
        try:
            return self.client.containers.create(template.image, **options).id
        except docker.errors.APIError as error:
            if error.status_code == 409:  # a racing retry of this step made it first
                found = self._find(instance.id)
                if found is not None:
                    return found.id
            raise LaunchFailed(f"Docker could not create the container: {_explain(error)}") from None

    def home_volume_name(self, home):
        return f"berth-{self.config['BERTH_DEPLOYMENT']}-home-{home}"

    def _home_volume(self, instance):
        """The owner's home: one named volume per user (a shared tool has its own), which every
        docker tool of theirs mounts at /home/berth and which outlives every container. The
        reconciler never removes a volume."""
        owner = home_name(instance)
        return self._volume(self.home_volume_name(owner), {"berth.home": owner}, "home")

    def delete_home(self, home):
        import docker

        name = self.home_volume_name(home)
        try:
            self.client.volumes.get(name).remove()
        except docker.errors.NotFound:
            return []
        except docker.errors.APIError as error:
            raise LaunchFailed(f"Docker could not remove the home volume {name}: {_explain(error)}") from None
        return [f"docker volume {name}"]

    def _team_volume(self, team):
        """A team's folder: one named volume per team, which its members' docker tools mount at
        /home/teams/<folder>."""
        name = f"berth-{self.config['BERTH_DEPLOYMENT']}-team-{team.name}"
        return self._volume(name, {"berth.team": team.name}, "team folder")

    def _volume(self, name, labels, what):
        import docker

        try:
            self.client.volumes.get(name)
        except docker.errors.NotFound:
            try:
                self.client.volumes.create(name, labels={LABEL: self.config["BERTH_DEPLOYMENT"], **labels})
            except docker.errors.APIError as error:
                raise LaunchFailed(f"Docker could not create the {what} volume {name}: {_explain(error)}") from None
        return name

    @staticmethod
    def _hand_home_to(container, uid):
        """Make the mounted home the tool's own (0700), and each team folder its team's (root and
        the team's gid, 2770, as the container's berth.teams label lists them): directory entries
        copied in over them set owner and mode, with nothing needed in the image. Redone at every
        start."""
        import docker

        folders = [(CONTAINER_HOME, uid, uid, 0o700)]
        teams = [team.rpartition(":") for team in (container.labels.get("berth.teams") or "").split(",") if team]
        if teams:
            folders.append((CONTAINER_TEAMS, 0, 0, 0o755))
        folders += [(f"{CONTAINER_TEAMS}/{name}", 0, int(gid), FOLDER_MODE) for name, _, gid in teams]
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path, owner, group, mode in folders:
                entry = tarfile.TarInfo(posixpath.relpath(path, _HOMES_PARENT))
                entry.type, entry.uid, entry.gid, entry.mode = tarfile.DIRTYPE, owner, group, mode
                tar.addfile(entry)
        try:
            container.put_archive(_HOMES_PARENT, archive.getvalue())
        except docker.errors.APIError as error:
            raise LaunchFailed(f"Docker could not prepare the tool's home: {_explain(error)}") from None

    def _own_network(self, instance):
        """The tool's own bridge network, made once: a step redone after a crash finds it."""
        import docker

        name = self.container_name(instance.id)
        try:
            return self.client.networks.get(name)
        except docker.errors.NotFound:
            pass
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        if self._engine_is_local():
            Sandbox.install_firewall()
        try:
            return self.client.networks.create(
                name, driver="bridge", internal=not instance.template.egress, check_duplicate=True,
                labels={LABEL: self.config["BERTH_DEPLOYMENT"], "berth.instance": str(instance.id)},
                # A name the host's firewall knows: sandbox.py drops what tools start towards the host.
                options={"com.docker.network.bridge.name": f"{DOCKER_LINK_PREFIX}{digest}"})
        except docker.errors.APIError as error:
            if error.status_code == 409:
                return self.client.networks.get(name)
            raise LaunchFailed(f"Docker could not create the tool's network: {_explain(error)}") from None

    def _engine_is_local(self):
        """Whether this host's firewall is the engine's: on a remote engine its operator keeps
        tools away from that host's services (docs/security.md)."""
        url = self.config.get("BERTH_DOCKER_URL") or "unix://"
        return url.startswith("unix://")

    def _start(self, instance):
        import docker

        container = self._find(instance.id)
        if container is None:
            raise LaunchFailed("The container disappeared before it could start.")
        if container.status == "running":
            return
        self._hand_home_to(container, Sandbox(self.config).uid_for(instance))
        try:
            container.start()
        except docker.errors.APIError as error:
            raise LaunchFailed(f"Docker could not start the container: {_explain(error)}",
                               self._logs(container)) from None

    # -- health and liveness --------------------------------------------------------------
    def _address(self, instance, container):
        if self.host_networking:
            return f"127.0.0.1:{instance.port}"
        networks = container.attrs.get("NetworkSettings", {}).get("Networks", {})
        ip = (networks.get(self.network_of(instance.id)) or {}).get("IPAddress")
        return f"{ip}:{self._tool_port(instance)}" if ip else None

    def check_ready(self, instance):
        container = self._find(instance.id)
        if container is None:
            raise LaunchFailed("The container is gone.")
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise LaunchFailed(f"The tool exited with code {code} before it answered.", self._logs(container))
        address = self._address(instance, container)
        if address and probe_http(address, instance.template.health_path):
            return address
        return None

    def is_alive(self, instance):
        try:
            container = self._find(instance.id)
        except LaunchFailed as failure:
            return True, failure.reason  # the engine is unreachable: do not declare tools dead
        if container is None:
            return False, "The container is gone."
        if container.status != "running":
            code = container.attrs.get("State", {}).get("ExitCode")
            return False, f"The container stopped (exit code {code})."
        return True, ""

    def failure_detail(self, instance):
        container = self._find(instance.id)
        return self._logs(container) if container is not None else ""

    @staticmethod
    def _logs(container, lines=20):
        try:
            return container.logs(stdout=False, stderr=True, tail=lines).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - logs are a courtesy on the failed page
            return ""

    # -- stopping -------------------------------------------------------------------------
    def stop(self, instance):
        began = time.monotonic()
        container = self._find(instance.id)
        held = self._hold_address(instance, container)
        if container is not None:
            self._remove(container)
        if held:
            time.sleep(max(0.0, began + self.config["BERTH_AUTH_CACHE_SECONDS"] + 1 - time.monotonic()))
        self._remove_own_network(instance.id)

    def _hold_address(self, instance, container):
        """Refuse connections to the tool's address on its own network from now until the network
        goes, and keep the network (and so its addresses) until nginx has no auth answer left
        that it cached before the stop (docs/decisions/0021-one-second-auth-cache.md): a request
        on such an answer fails at once here (Berth's not-answering page) and reaches neither a
        container that gets the address next nor, by the default route, a host elsewhere.
        Whether it holds one."""
        if (not self.config["BERTH_AUTH_CACHE_SECONDS"] or self.config.get("BERTH_DOCKER_NETWORK")
                or container is None or not self._engine_is_local()):
            return False
        address = self._address(instance, container)
        if address is None:
            return False
        try:
            Sandbox.refuse(address.rsplit(":", 1)[0] + "/32")
        except LaunchFailed as failure:  # the stop goes on: the container must go all the same
            log.warning("docker: could not hold the address of instance %s: %s", instance.id, failure.reason)
            return False
        return True

    def _remove_own_network(self, instance_id):
        import docker

        if self.config.get("BERTH_DOCKER_NETWORK"):
            return
        try:
            network = self.client.networks.get(self.container_name(instance_id))
            subnets = [pool.get("Subnet") for pool in (network.attrs.get("IPAM") or {}).get("Config") or []]
            network.remove()
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as error:  # still in use: the reconciler tries again
            raise LaunchFailed(f"Docker could not remove the tool's network: {_explain(error)}") from None
        if self._engine_is_local():  # what _hold_address refused, also after a crash during the hold
            for subnet in filter(None, subnets):
                Sandbox.stop_refusing(subnet)

    def stop_managed(self, instance_id, description):
        import docker

        if description:
            try:
                self._remove(self.client.containers.get(description))
            except docker.errors.NotFound:
                pass
        self._remove_own_network(instance_id)

    @staticmethod
    def _remove(container):
        import docker

        try:
            if container.status == "running":
                container.stop(timeout=5)
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as error:
            # Another process removes it already (the worker's reconciler and `berth reconcile`,
            # or a stop and the reconciler, at once): it goes all the same.
            if error.status_code == 409 and "already in progress" in _explain(error):
                return
            raise LaunchFailed(f"Docker could not remove the tool's container: {_explain(error)}") from None

    def list_managed(self):
        # sparse: the labels come with the list; inspecting each container would race with a
        # stop that removes one in between (NotFound), which the reconciler must not trip over.
        containers = self.client.containers.list(
            all=True, sparse=True, filters={"label": f"{LABEL}={self.config['BERTH_DEPLOYMENT']}"})
        managed = {}
        if not self.config.get("BERTH_DOCKER_NETWORK"):  # a network left behind by a crash
            for network in self.client.networks.list(
                    filters={"label": f"{LABEL}={self.config['BERTH_DEPLOYMENT']}"}):
                try:
                    managed.setdefault(int(network.attrs.get("Labels", {}).get("berth.instance", "")), None)
                except ValueError:
                    continue
        for container in containers:
            try:
                labels = container.attrs.get("Labels") or {}  # a sparse listing's own field
                managed[int(labels.get("berth.instance", ""))] = container.id
            except ValueError:
                continue
        return managed


def _explain(error):
    explanation = getattr(error, "explanation", None)
    return explanation or str(error)

"""The docker backend: each tool is a container, through the Docker Engine API (docker SDK).

Containers have a deterministic name (berth-<deployment>-<instance id>) and berth.* labels,
so a step redone after a crash finds the container it made, and the reconciler can list
every container this deployment runs. Two network modes:

- host networking (BERTH_DOCKER_NETWORK unset): the tool listens on a loopback port that
  Berth allocates, passed as $PORT and {port}. One machine.
- a named network (BERTH_DOCKER_NETWORK=berth): the tool listens on the template's port and
  nginx reaches it at the container's own address on that network (the compose deployment).
"""
from berth.backends.base import Backend, LaunchFailed, allocate_port, probe_http
from berth.backends.placeholders import fill

LABEL = "berth.deployment"


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
    def network(self):
        return self.config.get("BERTH_DOCKER_NETWORK")

    # -- launch steps ---------------------------------------------------------------------
    def run_step(self, step, instance):
        if step == "allocate":
            return {"port": None if self.network else allocate_port(self.config)}
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
        port = instance.port if not self.network else (template.port or 8888)
        command, env = fill(instance, port)
        env["PORT"] = str(port)
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
            },
            "init": True,  # a real PID 1 that forwards SIGTERM, so stop is quick
            "detach": True,
        }
        if size.get("cpu"):
            options["nano_cpus"] = int(float(size["cpu"]) * 1e9)
        if size.get("memory_mb"):
            options["mem_limit"] = f"{int(size['memory_mb'])}m"
        if self.network:
            options["network"] = self.network
        else:
            options["network_mode"] = "host"
        try:
            return self.client.containers.create(template.image, **options).id
        except docker.errors.APIError as error:
            if error.status_code == 409:  # a racing retry of this step made it first
                found = self._find(instance.id)
                if found is not None:
                    return found.id
            raise LaunchFailed(f"Docker could not create the container: {_explain(error)}") from None

    def _start(self, instance):
        import docker

        container = self._find(instance.id)
        if container is None:
            raise LaunchFailed("The container disappeared before it could start.")
        if container.status == "running":
            return
        try:
            container.start()
        except docker.errors.APIError as error:
            raise LaunchFailed(f"Docker could not start the container: {_explain(error)}",
                               self._logs(container)) from None

    # -- health and liveness --------------------------------------------------------------
    def _address(self, instance, container):
        if not self.network:
            return f"127.0.0.1:{instance.port}"
        networks = container.attrs.get("NetworkSettings", {}).get("Networks", {})
        ip = (networks.get(self.network) or {}).get("IPAddress")
        return f"{ip}:{instance.template.port or 8888}" if ip else None

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
        container = self._find(instance.id)
        if container is not None:
            self._remove(container)

    def stop_managed(self, instance_id, description):
        import docker

        try:
            self._remove(self.client.containers.get(description))
        except docker.errors.NotFound:
            pass

    @staticmethod
    def _remove(container):
        import docker

        try:
            if container.status == "running":
                container.stop(timeout=5)
            container.remove(force=True)
        except docker.errors.NotFound:
            pass

    def list_managed(self):
        # sparse: the labels come with the list; inspecting each container would race with a
        # stop that removes one in between (NotFound), which the reconciler must not trip over.
        containers = self.client.containers.list(
            all=True, sparse=True, filters={"label": f"{LABEL}={self.config['BERTH_DEPLOYMENT']}"})
        managed = {}
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

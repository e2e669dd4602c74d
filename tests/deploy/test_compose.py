"""docker-compose.yml on a real Docker engine: build, migrate once, sign in through nginx, launch a tool.

No registry can be reached, so deploy/local-images/build.sh makes the base, PostgreSQL and Redis
images from a debootstrap root file system, and the compose file is pointed at them through its
image variables. The engine is a dockerd of the test's own (tests/services.py) whose image store
is kept in the test image cache between runs: Docker's layer cache then rebuilds only what
changed, usually the layer with Berth's code. Nothing else survives a run: containers, networks
and volumes are removed before and after. Why a user-defined bridge works on this engine, and
what differs from a production engine: docs/decisions/0007-compose-on-a-test-engine.md.
"""
import fcntl
import os
import re
import shutil
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests

from tests.actions import signed_in
from tests.images import CACHE
from tests.services import Dockerd, answers_ok, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
PROJECT = "berth-deploy-test"
DOMAIN = "berth.localhost"
ADMIN = {"email": "admin@berth.localhost", "password": "a long test password"}
METRICS_TOKEN = "scrape-" + os.urandom(16).hex()
CONTROL_PLANE = ("auth", "web", "worker", "nginx")
STORE_LIMIT = 6 * 1024**3  # bytes of image layers the cached engine keeps at most


def _compose_command():
    """The Compose v2 plugin when the docker CLI has it, else Debian's docker-compose (v1)."""
    for candidate in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(candidate[0]) and subprocess.run(
                candidate + ["version"], capture_output=True).returncode == 0:
            return candidate
    raise RuntimeError("Neither `docker compose` nor `docker-compose` is installed; "
                       "`make test` installs docker-compose")


@pytest.fixture(scope="module")
def engine():
    """Our own dockerd, with the image store of earlier runs (one run at a time uses it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "deploy-dockerd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data_root = CACHE / "deploy-dockerd"
        try:
            dockerd = Dockerd(data_root=data_root)
        except RuntimeError:
            # A store left broken (a run killed mid-write) is only a cache: start it afresh.
            shutil.rmtree(data_root, ignore_errors=True)
            dockerd = Dockerd(data_root=data_root)
        client = dockerd.client()
        try:
            _remove_leftovers(client)
            yield dockerd
        finally:
            _remove_leftovers(client)
            _trim_image_store(client)
            client.close()
            dockerd.stop()


def _trim_image_store(client):
    """Drop superseded builds of Berth's image; past a size, everything that is not tagged.

    Untagged images also include the stage that holds the dependencies, Docker's cache for the
    next build, so these are kept until the store grows past STORE_LIMIT.
    """
    client.images.prune(filters={"dangling": True, "label": "org.opencontainers.image.title=Berth"})
    if client.df()["LayersSize"] > STORE_LIMIT:
        client.images.prune(filters={"dangling": True})


def _remove_leftovers(client):
    for container in client.containers.list(all=True):
        container.remove(force=True)
    client.networks.prune()
    client.volumes.prune()


class Deployment:
    def __init__(self, engine):
        self.engine = engine
        self.port = free_port()
        self.base_url = f"http://{DOMAIN}:{self.port}"
        self.compose = _compose_command() + ["--project-name", PROJECT, "--file",
                                             str(ROOT / "docker-compose.yml")]
        # Only these settings: none of the caller's BERTH_*, DOCKER_* or COMPOSE_* variables.
        inherited = {name: value for name, value in os.environ.items()
                     if not name.startswith(("BERTH_", "DOCKER_", "COMPOSE_"))}
        self.env = {
            **inherited,
            "DOCKER_HOST": engine.url,
            "BERTH_ROOTFS_CACHE": str(CACHE),
            "BERTH_BASE_IMAGE": "berth-local/python:3.11",
            "BERTH_POSTGRES_IMAGE": "berth-local/postgres:15",
            "BERTH_REDIS_IMAGE": "berth-local/redis:7",
            "BERTH_HTTP_PORT": str(self.port),
            "BERTH_SECRET_KEY": os.urandom(16).hex(),
            "BERTH_PROXY_SECRET": os.urandom(16).hex(),
            "BERTH_ADMIN_EMAIL": ADMIN["email"],
            "BERTH_ADMIN_PASSWORD": ADMIN["password"],
            "BERTH_DOCKER_SOCKET": str(engine.socket),
            "BERTH_DOCKER_GID": str(engine.socket.stat().st_gid),
            "BERTH_METRICS_TOKEN": METRICS_TOKEN,
        }

    def run(self, *args, timeout=600):
        result = subprocess.run(args, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def logs(self, *services):
        """The output of these services (all by default), each line after its service's name."""
        lines = []
        with closing(self.engine.client()) as client:
            for container in client.containers.list(all=True, filters={
                    "label": f"com.docker.compose.project={PROJECT}"}):
                service = container.labels["com.docker.compose.service"]
                if not services or service in services:
                    text = container.logs().decode("utf-8", "replace")
                    lines += [f"{service} | {line}" for line in text.splitlines()]
        return "\n".join(lines)

    def up(self):
        self.run(str(ROOT / "deploy" / "local-images" / "build.sh"), timeout=900)
        self.run(*self.compose, "build", "migrate", timeout=900)  # one image for every service
        self.run(*self.compose, "up", "--detach")
        if not answers_ok(f"{self.base_url}/healthz", timeout=180, interval=0.25):
            raise AssertionError(f"nginx did not answer /healthz within 180 s:\n{self.logs()[-6000:]}")

    def down(self):
        # Tools are the worker's containers, not the compose project's.
        with closing(self.engine.client()) as client:
            for container in client.containers.list(all=True, filters={"label": "berth.deployment"}):
                container.remove(force=True)
        self.run(*self.compose, "down", "--volumes", "--remove-orphans", "--timeout", "5")

    def container(self, service):
        with closing(self.engine.client()) as client:
            [found] = client.containers.list(all=True, filters={
                "label": [f"com.docker.compose.project={PROJECT}",
                          f"com.docker.compose.service={service}"]})
            return found.attrs


@pytest.fixture(scope="module")
def deployment(engine):
    deployment = Deployment(engine)
    try:
        deployment.up()
        yield deployment
    finally:
        deployment.down()


def _sign_in(deployment):
    return signed_in(deployment.base_url, ADMIN["email"], ADMIN["password"])


def test_compose_stack_signs_in_and_serves_a_launched_tool_through_nginx(deployment):
    browser = _sign_in(deployment)
    catalogue = browser.get(f"{deployment.base_url}/", timeout=10)
    assert catalogue.status_code == 200
    # The catalogue that the migrate job loaded (deploy/compose-catalogue.yml) names each address.
    [tool_url] = set(re.findall(rf"http://echo--[a-z0-9-]+\.{re.escape(DOMAIN)}:{deployment.port}/",
                                catalogue.text))

    starting = browser.get(tool_url, headers={"Sec-Fetch-Mode": "navigate"}, timeout=10)
    assert starting.status_code in (200, 202), starting.text
    deadline = time.monotonic() + 60
    while True:
        status = browser.get(f"{tool_url}__berth/status", timeout=10,
                             headers={"X-Berth-No-Launch": "1", "Accept": "application/json"}).json()
        if status["state"] not in ("QUEUED", "SPAWNING") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status["state"] == "RUNNING", f"{status}\n{deployment.logs('worker')[-4000:]}"

    # The tool's own page, proxied by nginx to the container's address on the tools network.
    seen = browser.get(f"{tool_url}headers", timeout=10)
    assert seen.status_code == 200, seen.text
    request = seen.json()
    assert request["headers"]["Host"] == f"{tool_url.split('/')[2]}"
    assert "berth_session" not in request["cookies"]
    assert not any(name.lower().startswith("x-berth") for name in request["headers"])
    with closing(deployment.engine.client()) as client:
        [tool] = client.containers.list(filters={"label": "berth.template=echo"})
        assert list(tool.attrs["NetworkSettings"]["Networks"]) == ["berth-tools"]


def test_migrations_run_once_in_their_own_job(deployment):
    migrate = deployment.container("migrate")
    assert migrate["State"]["Status"] == "exited"
    assert migrate["State"]["ExitCode"] == 0
    assert "Running upgrade" in deployment.logs("migrate")
    for service in CONTROL_PLANE:
        assert "Running upgrade" not in deployment.logs(service), service


def test_control_plane_runs_unprivileged_on_a_read_only_root(deployment):
    for service in CONTROL_PLANE:
        container = deployment.container(service)
        assert container["Config"]["User"] == "10001:10001", service
        assert container["HostConfig"]["ReadonlyRootfs"] is True, service
        sockets = [mount for mount in container["Mounts"] if mount["Destination"] == "/var/run/docker.sock"]
        assert bool(sockets) == (service == "worker"), service


def _get_inside(deployment, service, url, token=""):
    """(status, body) of a GET from inside a container of the project, on its networks, as a
    Prometheus on the control network would send it."""
    script = ("import sys, urllib.error, urllib.request\n"
              "request = urllib.request.Request(sys.argv[1])\n"
              "if sys.argv[2]: request.add_header('Authorization', 'Bearer ' + sys.argv[2])\n"
              "try:\n    answer = urllib.request.urlopen(request, timeout=5)\n"
              "except urllib.error.HTTPError as error:\n    answer = error\n"
              "print(answer.status); print(answer.read().decode())\n")
    with closing(deployment.engine.client()) as client:
        container = client.containers.get(deployment.container(service)["Id"])
        code, output = container.exec_run(["python", "-c", script, url, token])
    assert code == 0, output.decode()
    status, _, body = output.decode().partition("\n")
    return int(status), body


def test_each_container_serves_its_own_metrics_on_the_control_network(deployment):
    browser = _sign_in(deployment)
    assert browser.get(f"{deployment.base_url}/", timeout=10).status_code == 200  # an auth check
    bodies = {}
    for service, port in (("auth", 8101), ("web", 8102), ("worker", 9102)):
        url = f"http://{service}:{port}/metrics"
        status, reason = _get_inside(deployment, "nginx", url)
        assert status == 403 and "scrape token" in reason, (service, status, reason)
        status, bodies[service] = _get_inside(deployment, "nginx", url, METRICS_TOKEN)
        assert status == 200, (service, bodies[service])
    assert re.search(r'^berth_auth_checks_total\{status="200",target="web"\} [1-9]', bodies["auth"], re.M)
    assert "berth_auth_checks_total" not in bodies["worker"]  # each reports its own container only
    assert "berth_reconciler_actions_total" in bodies["worker"]
    assert "berth_instances" in bodies["web"]
    assert "berth_instances" not in bodies["auth"] and "berth_instances" not in bodies["worker"]


def test_kubernetes_nginx_runs_its_rendered_configmap_in_the_image(deployment, tmp_path):
    """deploy/kubernetes' nginx: the configuration rendered in the image, filled in at start."""
    rendered = deployment.run(str(ROOT / "deploy" / "kubernetes" / "render-nginx-conf.sh"), DOMAIN,
                              "berth:latest")
    (tmp_path / "nginx.conf").write_text(rendered)
    tmp_path.chmod(0o755)
    auth, web = deployment.container("auth"), deployment.container("web")
    port = free_port()
    with closing(deployment.engine.client()) as client:
        # As in a pod: the Services' names lead to auth and web, the ConfigMap is mounted read-only.
        nginx = client.containers.run(
            "berth:latest", ["nginx"], detach=True, read_only=True, tmpfs={"/tmp": ""},
            environment={"BERTH_NGINX_TEMPLATE": "/etc/berth/nginx/nginx.conf",
                         "BERTH_PROXY_SECRET": deployment.env["BERTH_PROXY_SECRET"]},
            volumes={str(tmp_path): {"bind": "/etc/berth/nginx", "mode": "ro"}},
            network=f"{PROJECT}_control", ports={"8080/tcp": ("127.0.0.1", port)},
            extra_hosts={"berth-auth": _address(auth), "berth-web": _address(web)})
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    answer = requests.get(f"http://{DOMAIN}:{port}/healthz", timeout=2)
                    break
                except requests.RequestException:
                    nginx.reload()
                    assert nginx.status == "running" and time.monotonic() < deadline, nginx.logs()
                    time.sleep(0.2)
            assert answer.status_code == 200, nginx.logs()
            # The auth service refuses any request without the proxy secret: its login page,
            # through this nginx, shows that the entrypoint filled the secret in.
            login = requests.get(f"http://{DOMAIN}:{port}/auth/login", timeout=5)
            assert login.status_code == 200 and "csrf_token" in login.text
        finally:
            nginx.remove(force=True)


def _healthy(deployment, service, count, timeout=120):
    """Wait until count containers of service report healthy."""
    deadline = time.monotonic() + timeout
    while True:
        with closing(deployment.engine.client()) as client:
            found = client.containers.list(filters={"label": [f"com.docker.compose.project={PROJECT}",
                                                              f"com.docker.compose.service={service}"]})
            states = [container.attrs["State"].get("Health", {}).get("Status") for container in found]
        if states.count("healthy") == count:
            return found
        assert time.monotonic() < deadline, f"{service}: {states}\n{deployment.logs(service)[-3000:]}"
        time.sleep(1)


def test_scaled_out_auth_and_web_serve_once_nginx_reloads(deployment):
    """docs/operations.md, "Scaling out": scale auth and web, then SIGHUP to nginx, which finds
    the new replicas by name; requests then reach every web replica, and none fails meanwhile."""
    scale = [*deployment.compose, "up", "--detach", "--no-recreate"]
    deployment.run(*scale, "--scale", "auth=2", "--scale", "web=2")
    try:
        _healthy(deployment, "auth", 2)
        webs = _healthy(deployment, "web", 2)
        deployment.run(*deployment.compose, "kill", "-s", "HUP", "nginx")
        browser = _sign_in(deployment)
        answers = [browser.get(f"{deployment.base_url}/", timeout=10).status_code for _ in range(40)]
        assert answers == [200] * 40
        # The web app logs each page it answers: both replicas answered some of them.
        for web in webs:
            served = [line for line in web.logs().decode("utf-8", "replace").splitlines()
                      if "berth.requests: GET / 200" in line]
            assert served, web.name
    finally:
        deployment.run(*scale, "--scale", "auth=1", "--scale", "web=1")
        deployment.run(*deployment.compose, "kill", "-s", "HUP", "nginx")


def _address(container):
    return container["NetworkSettings"]["Networks"][f"{PROJECT}_control"]["IPAddress"]

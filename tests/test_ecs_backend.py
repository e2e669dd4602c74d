"""The ecs backend (berth/backends/ecs.py) and the launcher on it, against an AWS API emulation.

moto runs in server mode on loopback (ThreadedMotoServer), and Berth's boto3 client reaches it
through BERTH_ECS_ENDPOINT_URL and a small fault proxy (tests/aws_proxy.py) that injects
throttling, lost answers and Fargate's "no capacity", and adds RunTask's clientToken
idempotency, which moto lacks. The launcher runs in-process on a migrated SQLite database, or
in a subprocess that kills itself mid-launch (tests/crashing_worker.py).

What moto cannot show is tested on answers in AWS's shape (tests/fixtures/ecs/): a task's
address (moto's leads nowhere: the tests put a loopback server in its place, in the test
process and in the worker subprocess alike), a task that stops by itself, RunTask's failures list.
"""
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer
from sqlalchemy import update

from tests.apps import migrated_app
from tests.aws_proxy import AwsProxy
from berth.catalogue import CatalogueError, parse_catalogue
from berth.settings import load_settings
from berth.extensions import db
from berth.hosts import tool_host
from berth.launch.state_machine import advance_launch, begin_stop, stop_instance
from berth.launch.upkeep import delete_home, reconcile
from berth.models import Event, Group, Membership, State, ToolInstance, ToolTemplate, User, utcnow
from berth.backends import get_backend
from berth.backends import ecs
from berth.backends.sandbox import Sandbox
from berth.backends.ecs import (
    client_token,
    is_capacity_failure,
    run_task_failure,
    started_by,
    stop_summary,
    task_address,
    task_private_ip,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ecs"
REGION = "eu-west-2"
DOMAIN = "berth.localhost"
TOOL_PORT = 8888
# Only ever moto's made-up credentials: boto3 must never look further (no instance metadata).
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
# A worker of its own, killed at a crash point, with the tool's stand-in in every task's place.
WORKER = """
import sys
from berth.backends import ecs
from berth.launch.state_machine import advance_launch
from tests.crashing_worker import arm
from tests.test_ecs_backend import stand_in
from webapp import create_app

instance_id, crash_at, tool_address = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ecs.task_address = stand_in(tool_address)
arm(crash_at)
with create_app().app_context():
    print(advance_launch(instance_id))
"""


def stand_in(tool_address):
    """task_address, with the tool's stand-in in place of every task address: moto's lead nowhere."""
    def address(task, port):
        return tool_address if task_address(task, port) else None
    return address


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


# -- reading AWS's answers: recorded shapes, since moto has no real network ---------------------
def test_address_comes_from_the_network_interface_attachment():
    [task] = fixture("describe_tasks_running.json")["tasks"]
    assert task_private_ip(task) == "10.20.3.47"


def test_address_falls_back_to_the_container_network_interface():
    [task] = fixture("describe_tasks_running.json")["tasks"]
    task["attachments"] = []
    assert task_private_ip(task) == "10.20.3.47"


def test_a_task_still_provisioning_has_no_address_yet():
    [task] = fixture("describe_tasks_provisioning.json")["tasks"]
    assert task_private_ip(task) is None


def test_a_tool_that_exited_is_explained_by_stopped_reason_and_exit_code():
    [task] = fixture("describe_tasks_stopped_essential_exit.json")["tasks"]
    reason, detail = stop_summary(task)
    assert reason == "Essential container in task exited (tool exited with code 1)"
    assert detail.splitlines() == ["stopCode: EssentialContainerExited", "tool: exit code 1"]


def test_an_image_that_cannot_be_pulled_is_explained_by_the_pull_error():
    [task] = fixture("describe_tasks_stopped_cannot_pull.json")["tasks"]
    reason, detail = stop_summary(task)
    assert reason.startswith("CannotPullContainerError: pull image manifest has been retried")
    assert "exited with code" not in reason  # the container never ran, so no exit code
    assert detail.splitlines()[0] == "stopCode: TaskFailedToStart"
    assert detail.splitlines()[1].startswith("tool: CannotPullContainerError:")


def test_no_capacity_answer_is_recognised_and_explained():
    failures = fixture("run_task_no_capacity.json")["failures"]
    assert is_capacity_failure(failures)
    assert run_task_failure(failures).startswith("Capacity is unavailable at this time.")
    assert not is_capacity_failure([{"arn": "arn:aws:ecs:eu-west-2:1:task-definition/x:1", "reason": "MISSING"}])
    assert run_task_failure([]) == "AWS returned neither a task nor a reason"


def test_client_token_is_stable_short_printable_and_distinct_per_launch_and_attempt():
    created = utcnow()
    token = client_token("a-rather-long-deployment-name-" * 5, 2_000_000_000, created, 30)
    assert token == client_token("a-rather-long-deployment-name-" * 5, 2_000_000_000, created, 30)
    assert len(token) <= 64 and all(33 <= ord(char) <= 126 for char in token)
    others = {client_token("berth", 1, created, 1), client_token("berth", 1, created, 2),
              client_token("berth", 2, created, 1), client_token("other", 1, created, 1),
              client_token("berth", 1, created + timedelta(microseconds=1), 1)}
    assert len(others) == 5


def test_ecs_settings_are_read_typed_and_ecs_is_an_accepted_backend():
    settings = load_settings({"BERTH_DATA_DIR": "/tmp/berth-settings-test", "BERTH_SECRET_KEY": "k",
                              "BERTH_PROXY_SECRET": "p", "BERTH_BACKENDS": "process,ecs",
                              "BERTH_ECS_CLUSTER": "tools", "BERTH_ECS_SUBNETS": "subnet-1, subnet-2",
                              "BERTH_ECS_SECURITY_GROUPS": "sg-1", "BERTH_ECS_ASSIGN_PUBLIC_IP": "yes"})
    assert settings["BERTH_BACKENDS"] == ("process", "ecs")
    assert settings["BERTH_ECS_SUBNETS"] == ("subnet-1", "subnet-2")
    assert settings["BERTH_ECS_SECURITY_GROUPS"] == ("sg-1",)
    assert settings["BERTH_ECS_ASSIGN_PUBLIC_IP"] is True
    assert settings["BERTH_ECS_API_ATTEMPTS"] == 8


def test_an_ecs_template_needs_a_task_definition():
    with pytest.raises(CatalogueError, match="image is required for the ecs backend"):
        parse_catalogue("tools: [{slug: lab, name: Lab, backend: ecs}]")
    [entry] = parse_catalogue("tools: [{slug: lab, name: Lab, backend: ecs, image: 'jupyterlab:3', port: 8888}]")
    assert (entry["backend"], entry["image"], entry["port"]) == ("ecs", "jupyterlab:3", 8888)


def test_the_tool_answers_at_the_running_tasks_address_and_the_templates_port():
    [task] = fixture("describe_tasks_running.json")["tasks"]
    assert task_address(task, 8888) == "10.20.3.47:8888"
    [provisioning] = fixture("describe_tasks_provisioning.json")["tasks"]
    assert task_address(provisioning, 8888) is None


# -- an AWS of our own, on loopback ----------------------------------------------------------
@pytest.fixture(scope="module")
def moto():
    with mock.patch.dict(os.environ, AWS_ENV):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        proxy = AwsProxy(port)
        yield SimpleNamespace(url=f"http://{host}:{port}", proxy=proxy)
        proxy.close()
        server.stop()


@pytest.fixture(scope="module")
def tool_server():
    """The tool's stand-in: answers every GET, so health probes succeed (see stand_in)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def account(moto):
    """An account with a VPC, a subnet, a security group and the tools' task definitions."""
    # moto walks a task towards STOPPED a little on every DescribeTasks; a real task runs until
    # it is stopped or its tool exits, so pin it RUNNING.
    assert requests.post(f"{moto.url}/moto-api/state-manager/set-transition", timeout=10, json={
        "model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}}).ok
    with mock.patch.dict(os.environ, AWS_ENV):
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
        ecs = boto3.client("ecs", region_name=REGION, endpoint_url=moto.url)
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto needs it for task ENIs
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.3.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="berth-tools", Description="tools", VpcId=vpc)["GroupId"]
    container = {"name": "tool", "image": "example.org/echo:1", "essential": True, "memory": 512,
                 "portMappings": [{"containerPort": TOOL_PORT}]}
    sidecar = {"name": "log-router", "image": "example.org/fluent-bit:1", "essential": False, "memory": 64}
    ecs.register_task_definition(family="echo", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                 cpu="256", memory="512", containerDefinitions=[sidecar, container])
    ecs.register_task_definition(family="bridged", networkMode="bridge", containerDefinitions=[container])
    with mock.patch.dict(os.environ, AWS_ENV):
        efs = boto3.client("efs", region_name=REGION, endpoint_url=moto.url)
    file_system = efs.create_file_system(CreationToken="berth-homes", Encrypted=True)["FileSystemId"]
    yield SimpleNamespace(ecs=ecs, efs=efs, file_system=file_system, subnet=subnet, security_group=group,
                          proxy=moto.proxy, endpoint=moto.proxy.url)
    ec2.close()
    ecs.close()
    efs.close()


_clusters = itertools.count(1)


@pytest.fixture
def aws(account):
    """A cluster of the test's own, so that each test sees only its own tasks."""
    account.proxy.reset()
    cluster = f"berth-tools-{next(_clusters):04d}"  # one width: moto matches cluster names by substring
    account.ecs.create_cluster(clusterName=cluster)
    return SimpleNamespace(**vars(account), cluster=cluster)


@pytest.fixture
def app(tmp_path, aws, tool_server, monkeypatch):
    """Berth with only the ecs backend, on a migrated SQLite database; the environment is also
    what a worker subprocess inherits."""
    env = {
        **AWS_ENV,
        "BERTH_DATA_DIR": str(tmp_path),
        "BERTH_DATABASE_URL": f"sqlite:///{tmp_path}/berth.db",
        "BERTH_DOMAIN": DOMAIN,
        "BERTH_BACKENDS": "ecs",
        "BERTH_DEPLOYMENT": f"test-ecs-{os.getpid()}",
        "BERTH_ECS_CLUSTER": aws.cluster,
        "BERTH_ECS_SUBNETS": aws.subnet,
        "BERTH_ECS_SECURITY_GROUPS": aws.security_group,
        "BERTH_ECS_REGION": REGION,
        "BERTH_ECS_ENDPOINT_URL": aws.endpoint,
        "BERTH_ECS_API_ATTEMPTS": "3",
        "BERTH_ECS_RETRY_BASE_MS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ecs, "task_address", stand_in(tool_server))
    with migrated_app() as app:
        yield app


def _new_instance(image="echo", size=None, owner_id=None):
    """A QUEUED launch of an ecs template, as the start page makes it: by a new user, or owner_id."""
    if owner_id is None:
        owner = User(email=f"ada-{os.urandom(3).hex()}@example.org", name="Ada")
    else:
        owner = db.session.get(User, owner_id)
    template = db.session.query(ToolTemplate).filter_by(image=image).one_or_none()
    if template is None:
        template = ToolTemplate(
            slug=f"echo-{image}", name="Echo", backend="ecs", image=image, port=TOOL_PORT,
            command=["python", "-m", "http.server", "{port}"], env={"GREETING": "hello", "LISTEN": "{port}"},
            health_path="/health", spawn_timeout=60,
            sizes=[{"name": "small", "cpu": 0.25, "memory_mb": 512}, {"name": "large", "cpu": 1, "memory_mb": 2048}])
    db.session.add(owner)
    db.session.flush()
    instance = ToolInstance(template=template, owner=owner, backend="ecs", state=State.QUEUED,
                            host=tool_host(template.slug, owner.address_name, DOMAIN), size=size or {})
    db.session.add(instance)
    db.session.commit()
    return instance.id


def _instance(instance_id):
    db.session.expire_all()
    return db.session.get(ToolInstance, instance_id)


def _tasks(aws, instance_id=None):
    """Every task in the cluster (stopped ones too), with its tags; or those of one instance."""
    arns = aws.ecs.list_tasks(cluster=aws.cluster)["taskArns"]
    tasks = aws.ecs.describe_tasks(cluster=aws.cluster, tasks=arns, include=["TAGS"])["tasks"] if arns else []
    if instance_id is None:
        return tasks
    return [task for task in tasks if {"key": "berth:instance", "value": str(instance_id)} in task.get("tags", [])]


def _expire_lease(instance_id):
    """What time does to a dead worker's lease."""
    db.session.execute(update(ToolInstance).where(ToolInstance.id == instance_id)
                       .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()


def _worker_killed_at(instance_id, crash_at, tool_address):
    done = subprocess.run([sys.executable, "-c", WORKER, str(instance_id), crash_at, tool_address],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)


def _stop_by_hand(aws, task_arn, reason):
    """The task stops without Berth asking: its tool exited, or an operator stopped it."""
    aws.ecs.stop_task(cluster=aws.cluster, task=task_arn, reason=reason)


# -- the lifecycle -----------------------------------------------------------------------------
def test_launch_runs_one_tagged_task_records_its_address_and_stop_ends_it_with_a_reason(app, aws, tool_server):
    instance_id = _new_instance()

    assert advance_launch(instance_id) == "running"

    instance = _instance(instance_id)
    assert instance.state == State.RUNNING
    assert instance.upstream == tool_server  # the task's address, as the test maps it to loopback
    [task] = _tasks(aws)
    assert instance.backend_state["task_arn"] == task["taskArn"]
    assert task["launchType"] == "FARGATE" and task["lastStatus"] == "RUNNING"
    assert task["startedBy"] == started_by(app.config["BERTH_DEPLOYMENT"], instance_id)
    assert {tag["key"]: tag["value"] for tag in task["tags"]} == {
        "berth:deployment": app.config["BERTH_DEPLOYMENT"], "berth:instance": str(instance_id),
        "berth:template": "echo-echo", "berth:owner": str(instance.owner_id)}
    assert task_private_ip(task)  # moto's address exists; only reaching it is left to the test setting
    messages = [e.message for e in db.session.query(Event).filter_by(instance_id=instance_id)]
    assert "AWS is starting the task; waiting for the tool to answer" in messages

    assert begin_stop(instance, actor="test")
    assert stop_instance(instance_id) == "stopped"

    assert _instance(instance_id).state == State.STOPPED
    [task] = _tasks(aws)
    assert task["lastStatus"] == "STOPPED"
    assert task["stoppedReason"] == f"Berth: stop requested (instance {instance_id})"


def test_task_runs_the_templates_command_environment_and_size_in_the_tool_container(app, aws):
    instance_id = _new_instance(size={"name": "large", "cpu": 1, "memory_mb": 2048})

    assert advance_launch(instance_id) == "running"

    [task] = _tasks(aws)
    assert task["overrides"]["cpu"] == "1024" and task["overrides"]["memory"] == "2048"
    [override] = task["overrides"]["containerOverrides"]
    assert override["name"] == "tool"  # the container mapping the port, not the first one
    assert override["command"] == ["python", "-m", "http.server", "8888"]
    assert override["environment"] == [{"name": "GREETING", "value": "hello"},
                                       {"name": "LISTEN", "value": "8888"}, {"name": "PORT", "value": "8888"}]
    assert (override["cpu"], override["memory"]) == (1024, 2048)
    [run_task] = aws.proxy.requests("RunTask")
    assert run_task["networkConfiguration"] == {"awsvpcConfiguration": {
        "subnets": [aws.subnet], "securityGroups": [aws.security_group], "assignPublicIp": "DISABLED"}}
    assert run_task["clientToken"] == client_token(app.config["BERTH_DEPLOYMENT"], instance_id,
                                                   _instance(instance_id).created_at, 1)


def test_only_a_template_that_allows_egress_gets_the_egress_security_groups(app, aws, monkeypatch):
    """A tool reaches beyond the VPC only through the groups BERTH_ECS_EGRESS_SECURITY_GROUPS
    names, and only when its template says `egress: true`; every other tool has the tools' group
    alone, which lets in nginx and the worker and lets out nothing else."""
    app.config["BERTH_ECS_EGRESS_SECURITY_GROUPS"] = ("sg-egress",)
    closed = _new_instance()
    assert advance_launch(closed) == "running"
    opened = _new_instance(image="echo-open")
    template = _instance(opened).template
    template.egress, template.image = True, "echo"
    db.session.commit()
    assert advance_launch(opened) == "running"
    first, second = aws.proxy.requests("RunTask")[-2:]
    assert first["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"] == [aws.security_group]
    assert second["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"] == [aws.security_group,
                                                                                       "sg-egress"]


# -- idempotency -------------------------------------------------------------------------------
def test_redoing_the_run_task_step_adopts_the_task_it_started(app, aws):
    instance_id = _new_instance()
    backend = get_backend("ecs", app.config)

    first = backend.run_step("run_task", _instance(instance_id))
    again = backend.run_step("run_task", _instance(instance_id))  # its result was never recorded

    assert again["backend_state"]["task_arn"] == first["backend_state"]["task_arn"]
    assert len(_tasks(aws, instance_id)) == 1
    assert len(aws.proxy.requests("RunTask")) == 1


def test_a_lost_run_task_answer_is_retried_with_the_same_client_token_and_one_task_starts(app, aws):
    instance_id = _new_instance()
    aws.proxy.lose_answer("RunTask")  # AWS starts the task, but its answer is lost on the way

    assert advance_launch(instance_id) == "running"

    calls = aws.proxy.requests("RunTask")
    assert len(calls) == 2
    assert calls[0]["clientToken"] == calls[1]["clientToken"]
    [task] = _tasks(aws, instance_id)
    assert _instance(instance_id).backend_state["task_arn"] == task["taskArn"]


@pytest.mark.parametrize("crash_at", ["before:run_task", "after:RunTask", "after:run_task", "before:wait_healthy"])
def test_a_worker_killed_anywhere_in_a_launch_is_resumed_with_one_task(app, aws, tool_server, crash_at):
    instance_id = _new_instance()

    _worker_killed_at(instance_id, crash_at, tool_server)
    _expire_lease(instance_id)
    assert advance_launch(instance_id) == "running"

    instance = _instance(instance_id)
    assert (instance.state, instance.upstream) == (State.RUNNING, tool_server)
    [task] = _tasks(aws, instance_id)
    assert instance.backend_state["task_arn"] == task["taskArn"]
    assert task["lastStatus"] == "RUNNING"


def test_a_resumed_launch_that_cannot_list_its_task_yet_gets_it_back_through_the_client_token(app, aws,
                                                                                             tool_server):
    instance_id = _new_instance()
    _worker_killed_at(instance_id, "after:RunTask", tool_server)
    _expire_lease(instance_id)
    aws.proxy.answer("ListTasks", 200, {"taskArns": []})  # ListTasks lags behind, as it may on AWS

    assert advance_launch(instance_id) == "running"

    calls = aws.proxy.requests("RunTask")
    assert len(calls) == 2 and calls[0]["clientToken"] == calls[1]["clientToken"]  # two workers, one token
    [task] = _tasks(aws, instance_id)
    assert _instance(instance_id).backend_state["task_arn"] == task["taskArn"]


# -- the reconciler --------------------------------------------------------------------------
def test_reconciler_stops_a_tagged_task_with_no_live_instance_and_nothing_else(app, aws):
    live = _new_instance()
    assert advance_launch(live) == "running"
    deployment = app.config["BERTH_DEPLOYMENT"]
    network = {"awsvpcConfiguration": {"subnets": [aws.subnet], "securityGroups": [aws.security_group]}}

    def run(tags, by):
        return aws.ecs.run_task(cluster=aws.cluster, taskDefinition="echo", launchType="FARGATE", startedBy=by,
                                networkConfiguration=network, tags=tags)["tasks"][0]["taskArn"]

    orphan = run([{"key": "berth:deployment", "value": deployment}, {"key": "berth:instance", "value": "999999"}],
                 started_by(deployment, 999999))
    other_berth = run([{"key": "berth:deployment", "value": "someone-else"},
                       {"key": "berth:instance", "value": "999999"}], started_by("someone-else", 999999))
    not_berth = run([{"key": "team", "value": "data"}], "nightly-job")
    enqueued = []

    actions = reconcile(enqueue_launch=enqueued.append, enqueue_stop=enqueued.append, actor="test")

    assert actions == [("orphan-removed", 999999)]
    status = {task["taskArn"]: (task["lastStatus"], task.get("stoppedReason")) for task in _tasks(aws)}
    assert status[orphan] == ("STOPPED", "Berth: no live instance 999999 (reconciler)")
    assert status[other_berth][0] == status[not_berth][0] == "RUNNING"  # never touch what is not ours
    assert status[_instance(live).backend_state["task_arn"]][0] == "RUNNING"
    assert _instance(live).state == State.RUNNING and enqueued == []


def test_reconciler_fails_a_running_instance_whose_task_stopped_with_the_stopped_reason(app, aws):
    instance_id = _new_instance()
    assert advance_launch(instance_id) == "running"
    _stop_by_hand(aws, _instance(instance_id).backend_state["task_arn"], "Essential container in task exited")

    actions = reconcile(enqueue_launch=list().append, enqueue_stop=list().append, actor="test")

    assert actions == [("failed", instance_id)]
    instance = _instance(instance_id)
    assert instance.state == State.FAILED
    assert instance.error == "The ECS task stopped: Essential container in task exited"


def test_a_task_ecs_no_longer_knows_is_reported_gone(app, aws):
    instance_id = _new_instance()
    assert advance_launch(instance_id) == "running"
    aws.proxy.answer("DescribeTasks", 200, fixture("describe_tasks_missing.json"))

    alive, reason = get_backend("ecs", app.config).is_alive(_instance(instance_id))

    assert (alive, reason) == (False, "The ECS task is gone: ECS no longer knows it.")


def test_a_throttled_describe_never_declares_a_running_tool_dead(app, aws):
    instance_id = _new_instance()
    assert advance_launch(instance_id) == "running"
    aws.proxy.answer("DescribeTasks", 400, fixture("error_throttling.json"), times=3)

    alive, reason = get_backend("ecs", app.config).is_alive(_instance(instance_id))

    assert alive is True
    assert "ThrottlingException: Rate exceeded" in reason


# -- failures the user sees --------------------------------------------------------------------
def test_a_task_that_stops_while_starting_shows_its_reason_on_the_failed_page(app, aws, tool_server):
    instance_id = _new_instance()
    _worker_killed_at(instance_id, "after:run_task", tool_server)
    _stop_by_hand(aws, _instance(instance_id).backend_state["task_arn"], "Essential container in task exited")
    _expire_lease(instance_id)

    assert advance_launch(instance_id) == "failed"

    instance = _instance(instance_id)
    assert instance.error == "The ECS task stopped before the tool answered: Essential container in task exited"
    page = app.test_client().get("/", headers={
        "Host": instance.host, "X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"],
        "X-Berth-User-Id": str(instance.owner_id), "X-Berth-Page": "start", "Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 502
    assert "Essential container in task exited" in page.get_data(as_text=True)


def test_an_unknown_task_definition_fails_the_launch_with_a_clear_reason(app, aws):
    instance_id = _new_instance(image="no-such-family")

    assert advance_launch(instance_id) == "failed"

    assert _instance(instance_id).error == ("The task definition 'no-such-family' (the template's image) cannot "
                                           "be used: ClientException: Unable to describe task definition.")
    assert _tasks(aws) == [] and aws.proxy.requests("RunTask") == []


def test_a_task_definition_fargate_cannot_run_fails_the_launch_with_a_clear_reason(app, aws):
    instance_id = _new_instance(image="bridged")

    assert advance_launch(instance_id) == "failed"

    assert _instance(instance_id).error.endswith("uses network mode bridge; Fargate needs awsvpc.")
    assert _tasks(aws) == []


def test_no_fargate_capacity_is_retried_with_a_new_client_token_until_a_task_starts(app, aws):
    instance_id = _new_instance()
    aws.proxy.answer("RunTask", 200, fixture("run_task_no_capacity.json"), times=2)

    assert advance_launch(instance_id) == "running"

    tokens = [call["clientToken"] for call in aws.proxy.requests("RunTask")]
    assert len(tokens) == len(set(tokens)) == 3  # a "no" started nothing, so each try is a new request
    assert len(_tasks(aws, instance_id)) == 1


def test_no_fargate_capacity_beyond_the_bound_fails_with_a_clear_reason(app, aws):
    instance_id = _new_instance()
    aws.proxy.answer("RunTask", 200, fixture("run_task_no_capacity.json"), times=3)

    assert advance_launch(instance_id) == "failed"

    assert _instance(instance_id).error == (
        "AWS Fargate had no capacity for the task in 3 attempts: Capacity is unavailable at this time. "
        "Please try again later or in a different availability zone. Reload the page to try again later.")
    assert _tasks(aws) == []


def test_throttling_is_retried_with_backoff_and_the_same_client_token(app, aws):
    instance_id = _new_instance()
    aws.proxy.answer("RunTask", 400, fixture("error_throttling.json"), times=2)

    assert advance_launch(instance_id) == "running"

    tokens = [call["clientToken"] for call in aws.proxy.requests("RunTask")]
    assert len(tokens) == 3 and len(set(tokens)) == 1
    assert len(_tasks(aws, instance_id)) == 1


def test_throttling_beyond_the_bound_fails_with_a_clear_reason(app, aws):
    instance_id = _new_instance()
    aws.proxy.answer("RunTask", 400, fixture("error_throttling.json"), times=3)

    assert advance_launch(instance_id) == "failed"

    assert _instance(instance_id).error == ("AWS did not accept RunTask after 3 attempts; its last answer was "
                                           "ThrottlingException: Rate exceeded. Try again in a minute.")
    assert len(aws.proxy.requests("RunTask")) == 3  # botocore added no retries of its own
    assert _tasks(aws) == []


def test_an_iam_role_not_yet_visible_is_waited_for(app, aws):
    instance_id = _new_instance()
    aws.proxy.answer("RunTask", 400, fixture("error_service_linked_role.json"))

    assert advance_launch(instance_id) == "running"

    assert len(aws.proxy.requests("RunTask")) == 2
    assert len(_tasks(aws, instance_id)) == 1


def test_a_missing_cluster_setting_fails_the_launch_and_the_reconciler_carries_on(app, aws, monkeypatch):
    instance_id = _new_instance()
    monkeypatch.setitem(app.config, "BERTH_ECS_CLUSTER", None)

    assert advance_launch(instance_id) == "failed"
    assert _instance(instance_id).error == ("The ecs backend needs BERTH_ECS_CLUSTER: the ECS cluster to run "
                                           "tools in.")
    assert reconcile(enqueue_launch=list().append, enqueue_stop=list().append, actor="test") == []



# -- homes on EFS ------------------------------------------------------------------------------
@pytest.fixture
def homes(app, aws, monkeypatch):
    """Berth with BERTH_ECS_EFS_FILE_SYSTEM set: ECS tools get their owner's home."""
    monkeypatch.setitem(app.config, "BERTH_ECS_EFS_FILE_SYSTEM", aws.file_system)
    return aws


def _access_points(aws, home):
    """The access points of one home (an owner's host key) in this deployment."""
    deployment = f"test-ecs-{os.getpid()}"
    points = aws.efs.describe_access_points(FileSystemId=aws.file_system)["AccessPoints"]
    return [point for point in points
            if {"Key": "berth:user", "Value": home} in point["Tags"]
            and {"Key": "berth:deployment", "Value": deployment} in point["Tags"]]


def _launched(owner_id=None):
    instance_id = _new_instance(owner_id=owner_id)
    assert advance_launch(instance_id) == "running"
    return _instance(instance_id)


def test_a_users_home_is_an_access_point_with_their_tool_uid_and_a_root_of_their_own(app, homes):
    instance = _launched()

    [point] = _access_points(homes, instance.owner.host_key)
    uid = Sandbox(app.config).uid_for(instance)  # the uid their process tools run as
    assert point["FileSystemId"] == homes.file_system
    assert point["PosixUser"] == {"Uid": uid, "Gid": uid}
    assert point["RootDirectory"] == {"Path": f"/berth-homes/{instance.owner.host_key}",
                                      "CreationInfo": {"OwnerUid": uid, "OwnerGid": uid, "Permissions": "0700"}}


def test_the_task_mounts_the_home_over_efs_with_transit_encryption_and_iam(app, homes):
    instance = _launched()

    [point] = _access_points(homes, instance.owner.host_key)
    [task] = _tasks(homes, instance.id)
    definition = homes.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    assert definition["family"] == f"berth-test-ecs-{os.getpid()}-echo-echo-{instance.owner.host_key}"
    [volume] = definition["volumes"]
    efs = volume["efsVolumeConfiguration"]
    assert efs.pop("rootDirectory", "/") == "/"  # the access point's root: AWS tells it back as "/"
    assert (volume["name"], efs) == ("berth-home", {
        "fileSystemId": homes.file_system, "transitEncryption": "ENABLED",
        "authorizationConfig": {"accessPointId": point["AccessPointId"], "iam": "ENABLED"}})
    containers = {container["name"]: container for container in definition["containerDefinitions"]}
    assert containers["tool"]["mountPoints"] == [
        {"sourceVolume": "berth-home", "containerPath": "/home/berth", "readOnly": False}]
    assert containers["tool"]["workingDirectory"] == "/home/berth"
    assert not containers["log-router"].get("mountPoints")  # only the tool's container has the home
    assert (definition["networkMode"], definition["cpu"], definition["memory"]) == ("awsvpc", "256", "512")
    [override] = task["overrides"]["containerOverrides"]
    assert {"name": "HOME", "value": "/home/berth"} in override["environment"]


def test_launching_again_for_the_same_user_reuses_their_access_point_and_task_definition(app, homes):
    first = _launched()
    assert begin_stop(first, actor="test") and stop_instance(first.id) == "stopped"

    second = _launched(owner_id=first.owner_id)

    assert len(_access_points(homes, first.owner.host_key)) == 1
    assert len(homes.proxy.requests("CreateAccessPoint")) == 1
    assert len(homes.proxy.requests("RegisterTaskDefinition")) == 1  # the same content: no new revision
    assert _tasks(homes, first.id)[0]["taskDefinitionArn"] == _tasks(homes, second.id)[0]["taskDefinitionArn"]


def test_two_users_get_two_access_points_and_two_task_definitions(app, homes):
    ada, bob = _launched(), _launched()

    [ada_point], [bob_point] = _access_points(homes, ada.owner.host_key), _access_points(homes, bob.owner.host_key)
    assert ada_point["AccessPointId"] != bob_point["AccessPointId"]
    assert ada_point["PosixUser"] != bob_point["PosixUser"]
    assert _tasks(homes, ada.id)[0]["taskDefinitionArn"] != _tasks(homes, bob.id)[0]["taskDefinitionArn"]


def test_a_lost_create_access_point_answer_gets_the_first_one_back_through_the_client_token(app, homes):
    homes.proxy.lose_answer("CreateAccessPoint")  # EFS makes the access point; its answer is lost

    instance = _launched()

    calls = homes.proxy.requests("CreateAccessPoint")
    assert len(calls) == 2 and calls[0]["ClientToken"] == calls[1]["ClientToken"]
    [point] = _access_points(homes, instance.owner.host_key)
    definition = homes.ecs.describe_task_definition(
        taskDefinition=_tasks(homes, instance.id)[0]["taskDefinitionArn"])["taskDefinition"]
    assert definition["volumes"][0]["efsVolumeConfiguration"]["authorizationConfig"]["accessPointId"] == \
        point["AccessPointId"]


def test_the_reconciler_never_removes_a_home(app, homes):
    instance = _launched()
    assert begin_stop(instance, actor="test") and stop_instance(instance.id) == "stopped"

    reconcile(enqueue_launch=list().append, enqueue_stop=list().append, actor="test")

    assert len(_access_points(homes, instance.owner.host_key)) == 1
    assert [name for name, _ in homes.proxy.calls if "Delete" in name or "Deregister" in name] == []


def test_without_a_file_system_tasks_run_the_templates_own_task_definition(app, aws):
    instance = _launched()

    assert _tasks(aws, instance.id)[0]["taskDefinitionArn"].endswith(":task-definition/echo:1")
    assert aws.proxy.requests("DescribeAccessPoints") == aws.proxy.requests("RegisterTaskDefinition") == []


# -- team folders on EFS -----------------------------------------------------------------------
def _team(name, *user_ids, folder=True):
    group = Group(name=f"{name}-{os.urandom(3).hex()}", team_folder=folder)
    db.session.add(group)
    db.session.flush()
    db.session.add_all(Membership(group_id=group.id, user_id=user_id) for user_id in user_ids)
    db.session.commit()
    return group


def _team_points(aws, folder):
    points = aws.efs.describe_access_points(FileSystemId=aws.file_system)["AccessPoints"]
    return [point for point in points if {"Key": "berth:team", "Value": folder} in point["Tags"]]


def test_a_members_task_mounts_the_team_folder_through_an_access_point_with_the_teams_gid(app, homes):
    member = User(email=f"ada-{os.urandom(3).hex()}@example.org", name="Ada")
    db.session.add(member)
    db.session.commit()
    team = _team("analysts", member.id)
    _team("archived", member.id, folder=False)  # a group whose folder is off mounts nothing

    instance = _launched(owner_id=member.id)

    folder, gid = f"{team.name}-{team.id}", app.config["BERTH_TEAM_GIDS"][0] + team.id
    [point] = _team_points(homes, folder)
    assert point["PosixUser"] == {"Uid": gid, "Gid": gid}
    assert point["RootDirectory"] == {"Path": f"/berth-teams/{folder}",
                                      "CreationInfo": {"OwnerUid": gid, "OwnerGid": gid, "Permissions": "2770"}}
    [task] = _tasks(homes, instance.id)
    definition = homes.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    volumes = {volume["name"]: volume["efsVolumeConfiguration"] for volume in definition["volumes"]}
    assert set(volumes) == {"berth-home", f"berth-team-{folder}"}
    team_volume = volumes[f"berth-team-{folder}"]
    assert (team_volume["fileSystemId"], team_volume["transitEncryption"], team_volume["authorizationConfig"]) == (
        homes.file_system, "ENABLED", {"accessPointId": point["AccessPointId"], "iam": "ENABLED"})
    [tool] = [c for c in definition["containerDefinitions"] if c["name"] == "tool"]
    assert {"sourceVolume": f"berth-team-{folder}", "containerPath": f"/home/teams/{folder}",
            "readOnly": False} in tool["mountPoints"]
    [override] = task["overrides"]["containerOverrides"]
    assert {"name": "BERTH_TEAM_FOLDERS", "value": f"/home/teams/{folder}"} in override["environment"]


def test_a_non_members_task_has_no_team_folder_and_a_new_member_gets_it_at_the_next_launch(app, homes):
    outsider = _launched()
    team = _team("analysts")
    first = homes.ecs.describe_task_definition(taskDefinition=_tasks(homes, outsider.id)[0]["taskDefinitionArn"])
    assert [volume["name"] for volume in first["taskDefinition"]["volumes"]] == ["berth-home"]

    db.session.add(Membership(group_id=team.id, user_id=outsider.owner_id))
    db.session.commit()
    assert begin_stop(outsider, actor="test") and stop_instance(outsider.id) == "stopped"
    again = _launched(owner_id=outsider.owner_id)

    definition = homes.ecs.describe_task_definition(
        taskDefinition=_tasks(homes, again.id)[0]["taskDefinitionArn"])["taskDefinition"]
    assert sorted(v["name"] for v in definition["volumes"]) == ["berth-home", f"berth-team-{team.name}-{team.id}"]
    assert len(_team_points(homes, f"{team.name}-{team.id}")) == 1


def test_deleting_a_home_deletes_its_access_point_and_only_while_no_tool_of_the_user_runs(app, homes):
    instance, other = _launched(), _launched()

    assert delete_home(instance.owner_id, actor="admin:1") == "refused"
    assert len(_access_points(homes, instance.owner.host_key)) == 1
    assert begin_stop(instance, actor="test") and stop_instance(instance.id) == "stopped"
    assert delete_home(instance.owner_id, actor="admin:1") == "deleted"

    assert _access_points(homes, instance.owner.host_key) == []
    assert len(_access_points(homes, other.owner.host_key)) == 1
    [event] = db.session.query(Event).filter_by(kind="home.delete", user_id=instance.owner_id).all()
    assert event.actor == "admin:1" and event.data["removed"][0].startswith("EFS access point fsap-")

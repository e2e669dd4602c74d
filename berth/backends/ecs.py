"""The ecs backend: each tool is an AWS Fargate task, through boto3.

One launch step, then the launcher's wait:

- run_task     RunTask on Fargate with the template's task definition (`image`: a family,
               family:revision or ARN) and container overrides for command, environment, cpu
               and memory (from the chosen size). Its clientToken is derived from the
               deployment, the instance and the attempt, so AWS answers a repeated call (a
               retry, or the step redone by another worker after a crash) with the task it
               already started. The step also adopts a task already tagged with this instance.
- wait_healthy check_ready describes the task until it is RUNNING with a private IPv4 address,
               then probes the template's health path at <address>:<port>. That address is
               recorded as the upstream nginx proxies to.

With BERTH_ECS_EFS_FILE_SYSTEM set, every tool has its owner's home at /home/berth, on EFS, as
docker tools have theirs in a named volume, and its owner's team folders at /home/teams/<folder>;
see _home_task_definition.

Every task is tagged berth:deployment, berth:instance, berth:template and berth:owner (its
startedBy names the deployment and the instance too), so the reconciler can list what this
Berth runs and find orphans both ways. A task that stops by itself is reported with its stoppedReason and the
exit codes of its containers.

AWS throttles, and IAM and ECS are eventually consistent: a call that is throttled, answered
with a server error, or refused only because a role created moments ago is not visible yet,
is tried again with exponential backoff and jitter, at most BERTH_ECS_API_ATTEMPTS times;
then the launch fails with the last answer. botocore's own retries are off, so that bound is
the only one. Fargate's "no capacity" answer is retried the same way, with a new clientToken.

AWS's answers are read by the small pure functions below (the task's address, why it stopped,
RunTask's failures), tested with recorded real responses in tests/fixtures/ecs/: the emulator
the tests run against (moto) gives tasks addresses that lead nowhere.
"""
import hashlib
import json
import logging
import random
import re
import time

from berth.models import State
from berth.backends.base import CONTAINER_HOME, Backend, LaunchFailed, home_name, probe_http
from berth.backends.placeholders import fill
from berth.backends.sandbox import Sandbox
from berth.backends.teams import CONTAINER_TEAMS, team_folders_of

log = logging.getLogger(__name__)

TAG_DEPLOYMENT = "berth:deployment"
TAG_INSTANCE = "berth:instance"
TAG_TEMPLATE = "berth:template"
TAG_OWNER = "berth:owner"
TAG_USER = "berth:user"  # an access point's home: the owner's host key, or shared-<template slug>
TAG_CONTENT = "berth:content"  # a home task definition's fingerprint: see _home_task_definition
HOMES_ROOT = "/berth-homes"  # on the file system, each access point's root is <this>/<home>
HOME_VOLUME = "berth-home"  # the volume's name in a home task definition
TAG_TEAM = "berth:team"  # a team folder's access point: the folder's name
TEAMS_ROOT = "/berth-teams"  # each team access point's root is <this>/<folder>
TEAM_VOLUME_PREFIX = "berth-team-"  # a team folder's volume is this and the folder's name
# What RegisterTaskDefinition takes of what DescribeTaskDefinition tells.
_REGISTERED_FIELDS = ("taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions", "volumes",
                      "placementConstraints", "requiresCompatibilities", "cpu", "memory", "pidMode", "ipcMode",
                      "proxyConfiguration", "inferenceAccelerators", "ephemeralStorage", "runtimePlatform")
DEFAULT_PORT = 8888
PROBE_INTERVAL = 0.05  # seconds between health probes within one check_ready
MAX_BACKOFF = 10.0  # seconds: the longest wait between two attempts of one call

# Answers that only say "not now": AWS is throttling us or had a transient fault.
_RETRY_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
                "ServerException", "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException"}
# Refusals that only mean IAM or ECS has not caught up yet: a task or execution role, or the
# ECS service-linked role, created moments ago. Other refusals are final.
_NOT_CAUGHT_UP = ("unable to assume the role", "unable to assume the service linked role",
                  "please verify that the ecs service role")
# RunTask failures that a later attempt may not meet: Fargate had no room at that moment.
_NO_CAPACITY = "capacity is unavailable"


class AwsUnavailable(LaunchFailed):
    """AWS kept throttling or failing a call past the bound; nothing is known about the task."""


class AwsRefused(LaunchFailed):
    """AWS answered a call with a final error; `answer` is its code and message."""

    def __init__(self, reason, answer, code="", response=None):
        super().__init__(reason)
        self.answer = answer
        self.code = code
        self.response = response or {}


# -- reading AWS's answers (pure; tested with recorded real responses) -------------------------
def client_token(deployment, instance_id, created_at, attempt):
    """RunTask's clientToken for one attempt of one launch: at most 64 printable ASCII characters.

    The same launch and attempt give the same token in any worker, so AWS answers a repeated
    RunTask with the task it started the first time (for 24 hours). created_at keeps a reset
    database, whose instance ids count from 1 again, from reusing an old launch's token.
    """
    digest = hashlib.sha256(f"{deployment}\0{instance_id}\0{created_at.isoformat()}".encode()).hexdigest()
    return f"berth-{instance_id}-{attempt}-{digest}"[:64]


def started_by(deployment, instance_id):
    """RunTask's startedBy: names the deployment and the instance, so ListTasks finds its task."""
    return f"berth-{re.sub(r'[^A-Za-z0-9_-]', '-', deployment)[:100]}-{instance_id}"


def task_tags(task):
    return {tag.get("key"): tag.get("value") for tag in task.get("tags") or []}


def task_private_ip(task):
    """The task's private IPv4 address once its network interface is attached, else None.

    An awsvpc (Fargate) task reports it as the `privateIPv4Address` detail of its
    ElasticNetworkInterface attachment; containers[].networkInterfaces[] repeats it.
    """
    for attachment in task.get("attachments") or []:
        if attachment.get("type") != "ElasticNetworkInterface":
            continue
        for detail in attachment.get("details") or []:
            if detail.get("name") == "privateIPv4Address" and detail.get("value"):
                return detail["value"]
    for container in task.get("containers") or []:
        for interface in container.get("networkInterfaces") or []:
            if interface.get("privateIpv4Address"):
                return interface["privateIpv4Address"]
    return None


def task_address(task, port):
    """Where the tool in a task answers, <private IPv4>:<port>, once the task is RUNNING with an
    address; None before."""
    if task.get("lastStatus") != "RUNNING":
        return None
    ip = task_private_ip(task)
    return f"{ip}:{port}" if ip else None


def is_stopping(task):
    """True once ECS has decided the task ends (desiredStatus STOPPED), or it has ended."""
    return task.get("desiredStatus") == "STOPPED" or task.get("lastStatus") == "STOPPED"


def stop_summary(task):
    """(reason, detail) of a task that stopped: its stoppedReason with the containers' exit codes.

    Only containers that have stopped have a meaningful exit code. The detail lists each
    container's exit code and reason (CannotPullContainerError, OutOfMemoryError, ...).
    """
    reason = (task.get("stoppedReason") or "").strip() or "ECS gave no reason"
    exits, lines = [], []
    for container in task.get("containers") or []:
        name = container.get("name") or "container"
        parts = []
        if container.get("lastStatus") == "STOPPED" and container.get("exitCode") is not None:
            exits.append(f"{name} exited with code {container['exitCode']}")
            parts.append(f"exit code {container['exitCode']}")
        if container.get("reason"):
            parts.append(container["reason"])
        if parts:
            lines.append(f"{name}: {'; '.join(parts)}")
    summary = reason + (f" ({', '.join(exits)})" if exits else "")
    if task.get("stopCode"):
        lines.insert(0, f"stopCode: {task['stopCode']}")
    return summary, "\n".join(lines)


def run_task_failure(failures):
    """One sentence for RunTask's failures list (AWS started no task)."""
    reasons = []
    for failure in failures or []:
        text = failure.get("reason") or "no reason given"
        if failure.get("detail"):
            text += f" ({failure['detail']})"
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons) or "AWS returned neither a task nor a reason"


def is_capacity_failure(failures):
    return any(_NO_CAPACITY in (failure.get("reason") or "").lower() for failure in failures or [])


def tool_container(task_definition, port):
    """The name of the container that serves the tool: the one mapping port, else the first essential one."""
    containers = task_definition.get("containerDefinitions") or []
    for container in containers:
        if any(mapping.get("containerPort") == port for mapping in container.get("portMappings") or []):
            return container["name"]
    for container in containers:
        if container.get("essential", True):
            return container["name"]
    raise LaunchFailed(f"The task definition {task_definition.get('taskDefinitionArn')} has no container.")


def home_family(deployment, template_slug, home):
    """The task-definition family of one template's tasks with one home mounted: at most 255
    letters, digits, - and _."""
    family = re.sub(r"[^A-Za-z0-9_-]", "-", f"berth-{deployment}-{template_slug}-{home}")
    if len(family) > 255:
        family = f"{family[:238]}-{hashlib.sha256(family.encode()).hexdigest()[:16]}"
    return family


def access_point_token(deployment, file_system, home, kind="home"):
    """CreateAccessPoint's ClientToken for one home (or team folder): the same in every worker
    and every launch, so that a create redone after a crash (before the new access point was
    found by its tags) gets the first one back instead of making a second."""
    digest = hashlib.sha256(f"{deployment}\0{file_system}\0{home}".encode()).hexdigest()
    return f"berth-{kind}-{digest}"[:64]


def with_home(task_definition, container, family, file_system, access_point, teams=()):
    """RegisterTaskDefinition's parameters: the template's task definition, with the home's EFS
    access point as a volume, mounted at /home/berth (also the working directory) in container,
    and each team folder's, [(folder name, access point id)], mounted at /home/teams/<folder>.

    Transit encryption and IAM authorization are on: the task role then needs
    elasticfilesystem:ClientMount and ClientWrite (deploy/ecs/README.md)."""
    params = {field: task_definition[field] for field in _REGISTERED_FIELDS if task_definition.get(field)}
    params["family"] = family
    mounted = [(HOME_VOLUME, access_point, CONTAINER_HOME)] + [
        (f"{TEAM_VOLUME_PREFIX}{name}", point, f"{CONTAINER_TEAMS}/{name}") for name, point in teams]
    volumes = [{"name": name, "efsVolumeConfiguration": {
        "fileSystemId": file_system, "transitEncryption": "ENABLED",
        "authorizationConfig": {"accessPointId": point, "iam": "ENABLED"}}} for name, point, _ in mounted]
    params["volumes"] = [other for other in params.get("volumes") or []
                         if not _mounted_by_berth(other.get("name", ""))] + volumes
    paths = {path for _, _, path in mounted}
    definitions = []
    for definition in params["containerDefinitions"]:
        if definition.get("name") == container:
            mounts = [mount for mount in definition.get("mountPoints") or [] if mount.get("containerPath") not in paths]
            definition = {**definition, "workingDirectory": CONTAINER_HOME, "mountPoints": mounts + [
                {"sourceVolume": name, "containerPath": path, "readOnly": False} for name, _, path in mounted]}
        definitions.append(definition)
    params["containerDefinitions"] = definitions
    return params


def _mounted_by_berth(volume_name):
    """Whether a task definition's volume is one Berth mounts (a home, a team folder), and so replaces."""
    return volume_name == HOME_VOLUME or volume_name.startswith(TEAM_VOLUME_PREFIX)


def fingerprint(params):
    """A digest of a task definition's parameters: AWS adds defaults to what it tells back, so
    Berth compares what it registered, recorded in a tag, rather than what DescribeTaskDefinition says."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]


def _worth_retrying(error):
    """True for an answer that only says "not yet": throttling, a server fault, IAM catching up."""
    code = error.response.get("Error", {}).get("Code", "")
    message = (error.response.get("Error", {}).get("Message") or "").lower()
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return code in _RETRY_CODES or status >= 500 or any(text in message for text in _NOT_CAUGHT_UP)


def _error_text(error):
    answer = error.response.get("Error", {})
    return f"{answer.get('Code') or 'error'}: {answer.get('Message') or 'no message'}"


class EcsBackend(Backend):
    name = "ecs"
    steps = ("run_task",)
    # While a task starts, DescribeTasks runs about this often (seconds); health probes go on
    # in between. ECS rate-limits DescribeTasks per account, so the launcher's 50 ms is too often.
    describe_interval = 1.0

    def __init__(self, config):
        super().__init__(config)
        self._clients = {}

    # -- the API client ---------------------------------------------------------------------
    @property
    def cluster(self):
        cluster = self.config.get("BERTH_ECS_CLUSTER")
        if not cluster:
            raise LaunchFailed("The ecs backend needs BERTH_ECS_CLUSTER: the ECS cluster to run tools in.")
        return cluster

    @property
    def deployment(self):
        return self.config["BERTH_DEPLOYMENT"]

    @property
    def file_system(self):
        """The EFS file system that holds the homes, or None: then tools have none on ECS."""
        return self.config.get("BERTH_ECS_EFS_FILE_SYSTEM")

    @property
    def client(self):
        return self._client_for("ecs")

    def _client_for(self, service):
        if service not in self._clients:
            try:
                import boto3
                from botocore.config import Config
                from botocore.exceptions import NoRegionError
            except ImportError:
                raise LaunchFailed("The ecs backend needs boto3: pip install 'berth[ecs]'.") from None
            self.cluster  # noqa: B018 - a missing setting fails here, before any call
            options = Config(retries={"mode": "standard", "total_max_attempts": 1},  # _call retries
                             connect_timeout=5, read_timeout=30, user_agent_extra="berth")
            try:
                self._clients[service] = boto3.session.Session().client(
                    service, region_name=self.config.get("BERTH_ECS_REGION"),
                    endpoint_url=self.config.get("BERTH_ECS_ENDPOINT_URL"), config=options)
            except NoRegionError:
                raise LaunchFailed("The ecs backend needs a region: set BERTH_ECS_REGION.") from None
        return self._clients[service]

    def _call(self, operation, service="ecs", **params):
        """One ECS (or EFS) API call, tried again with backoff while AWS throttles or has not caught up."""
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as AwsConnectionError

        attempts = self.config["BERTH_ECS_API_ATTEMPTS"]
        action = "".join(part.title() for part in operation.split("_"))
        for attempt in range(1, attempts + 1):
            try:
                return getattr(self._client_for(service), operation)(**params)
            except ClientError as error:
                if not _worth_retrying(error):
                    raise AwsRefused(f"AWS refused {action}: {_error_text(error)}", _error_text(error),
                                     error.response.get("Error", {}).get("Code", ""), error.response) from None
                last = _error_text(error)
            except (AwsConnectionError, HTTPClientError) as error:
                last = str(error)
            if attempt < attempts:
                self._backoff(attempt)
        raise AwsUnavailable(f"AWS did not accept {action} after {attempts} attempts; its last answer "
                             f"was {last}. Try again in a minute.")

    def _backoff(self, attempt):
        delay = min(MAX_BACKOFF, self.config["BERTH_ECS_RETRY_BASE_MS"] / 1000 * 2 ** (attempt - 1))
        time.sleep(delay / 2 + random.uniform(0, delay / 2))  # "equal jitter"

    # -- launch steps -----------------------------------------------------------------------
    def run_step(self, step, instance):
        if step == "run_task":
            return {"backend_state": self._run_task(instance)}
        raise LaunchFailed(f"The ecs backend has no step {step!r}.")

    def _run_task(self, instance):
        found = self._tasks(instance.id).get(instance.id)
        if found:  # started before a crash, not yet recorded: adopt it
            return {"task_arn": found[0]}
        template = instance.template
        port = template.port or DEFAULT_PORT
        try:
            task_definition = self._call("describe_task_definition",
                                         taskDefinition=template.image)["taskDefinition"]
        except AwsRefused as refusal:
            raise LaunchFailed(f"The task definition {template.image!r} (the template's image) cannot "
                               f"be used: {refusal.answer}") from None
        if task_definition.get("networkMode") != "awsvpc":
            raise LaunchFailed(f"The task definition {task_definition['taskDefinitionArn']} uses network "
                               f"mode {task_definition.get('networkMode') or 'bridge'}; Fargate needs awsvpc.")
        container = tool_container(task_definition, port)
        task_definition_arn, teams = template.image, []
        if self.file_system and template.home:
            teams = team_folders_of(self.config, instance)
            task_definition_arn = self._home_task_definition(instance, task_definition, container, teams)
        params = {
            "cluster": self.cluster,
            "taskDefinition": task_definition_arn,
            "launchType": "FARGATE",
            "count": 1,
            "startedBy": started_by(self.deployment, instance.id),
            "networkConfiguration": {"awsvpcConfiguration": self._network(template)},
            "overrides": self._overrides(instance, container, port, home=bool(self.file_system) and template.home,
                                         teams=teams),
            "tags": [
                {"key": TAG_DEPLOYMENT, "value": self.deployment},
                {"key": TAG_INSTANCE, "value": str(instance.id)},
                {"key": TAG_TEMPLATE, "value": template.slug},
                {"key": TAG_OWNER, "value": str(instance.owner_id)},
            ],
        }
        attempts = self.config["BERTH_ECS_API_ATTEMPTS"]
        for attempt in range(1, attempts + 1):
            token = client_token(self.deployment, instance.id, instance.created_at, attempt)
            answer = self._call("run_task", clientToken=token, **params)
            if answer.get("tasks"):
                task = answer["tasks"][0]
                return {"task_arn": task["taskArn"], "task_definition": task.get("taskDefinitionArn")}
            failures = answer.get("failures") or []
            if not is_capacity_failure(failures):
                raise LaunchFailed(f"AWS did not start the task: {run_task_failure(failures)}")
            if attempt < attempts:  # no task was started, so the next attempt takes a new token
                self._backoff(attempt)
        raise LaunchFailed(f"AWS Fargate had no capacity for the task in {attempts} attempts: "
                           f"{run_task_failure(failures).rstrip('.')}. Reload the page to try again later.")

    # -- homes on EFS -----------------------------------------------------------------------
    def _home_task_definition(self, instance, task_definition, container, teams):
        """The ARN of the template's task definition with the owner's home and team folders mounted.

        A volume's access point is part of the task definition (RunTask cannot override it), so
        each (template, home) has a family of its own, berth-<deployment>-<template>-<home>.
        A new revision is registered only when what it would hold changes (the template's task
        definition, the access points, the owner's team folders), found by the fingerprint tag of the family's latest
        revision: launches reuse it, and the revisions stay as few as those changes. Two
        workers racing may register one identical revision each, which is harmless.
        """
        home = home_name(instance)
        uid = Sandbox(self.config).uid_for(instance)
        access_point = self._access_point(TAG_USER, home, f"{HOMES_ROOT}/{home}", uid, uid, "0700")
        team_points = [(team.name, self._access_point(TAG_TEAM, team.name, f"{TEAMS_ROOT}/{team.name}",
                                                      team.gid, team.gid, "2770"))
                       for team in teams]
        family = home_family(self.deployment, instance.template.slug, home)
        params = with_home(task_definition, container, family, self.file_system, access_point, team_points)
        digest = fingerprint(params)
        try:
            latest = self._call("describe_task_definition", taskDefinition=family, include=["TAGS"])
        except AwsRefused:  # no revision yet: ECS answers a ClientException
            latest = {}
        if {"key": TAG_CONTENT, "value": digest} in (latest.get("tags") or []):
            return latest["taskDefinition"]["taskDefinitionArn"]
        tags = [{"key": TAG_DEPLOYMENT, "value": self.deployment}, {"key": TAG_TEMPLATE, "value": instance.template.slug},
                {"key": TAG_USER, "value": home}, {"key": TAG_CONTENT, "value": digest}]
        try:
            registered = self._call("register_task_definition", tags=tags, **params)
        except AwsRefused as refusal:
            raise LaunchFailed(f"AWS refused the task definition that mounts the home: {refusal.answer}") from None
        return registered["taskDefinition"]["taskDefinitionArn"]

    def _access_points(self, tag, value):
        """The ids of this deployment's live access points tagged tag=value."""
        found, token = [], None
        while True:
            page = self._call("describe_access_points", service="efs", FileSystemId=self.file_system,
                              **({"NextToken": token} if token else {}))
            for point in page.get("AccessPoints") or []:
                tags = {item.get("Key"): item.get("Value") for item in point.get("Tags") or []}
                if (tags.get(TAG_DEPLOYMENT) == self.deployment and tags.get(tag) == value
                        and point.get("LifeCycleState") in ("available", "creating", "updating")):
                    found.append(point["AccessPointId"])
            token = page.get("NextToken")
            if not token:
                return found

    def _access_point(self, tag, value, root, uid, gid, permissions):
        """The id of the access point of a home (tag berth:user) or team folder (berth:team),
        made the first time: every file goes through it as uid and gid (a home: the uid its
        owner's process tools run as; a team folder: the team's gid), under root, created with
        permissions and owned by them. Found by its tags; the reconciler never removes one."""
        found = self._access_points(tag, value)
        if found:
            return found[0]
        kind = "home" if tag == TAG_USER else "team"
        try:
            created = self._call(
                "create_access_point", service="efs", FileSystemId=self.file_system,
                ClientToken=access_point_token(self.deployment, self.file_system, value, kind),
                PosixUser={"Uid": uid, "Gid": gid},
                RootDirectory={"Path": root,
                               "CreationInfo": {"OwnerUid": uid, "OwnerGid": gid, "Permissions": permissions}},
                Tags=[{"Key": TAG_DEPLOYMENT, "Value": self.deployment}, {"Key": tag, "Value": value}])
        except AwsRefused as refusal:
            if refusal.code == "AccessPointAlreadyExists" and refusal.response.get("AccessPointId"):
                return refusal.response["AccessPointId"]  # the same token: made by an earlier attempt
            what = "home" if kind == "home" else "team folder"
            raise LaunchFailed(f"AWS could not make the {what} on EFS file system {self.file_system}: "
                               f"{refusal.answer}") from None
        return created["AccessPointId"]

    def delete_home(self, home):
        """Delete the home's access points. The files under /berth-homes/<home> stay on the file
        system: EFS deletes no data with an access point (docs/operations.md)."""
        if not self.file_system:
            return []
        found = self._access_points(TAG_USER, home)
        for point in found:
            self._call("delete_access_point", service="efs", AccessPointId=point)
        return [f"EFS access point {point} ({self.file_system}:{HOMES_ROOT}/{home})" for point in found]

    def _network(self, template):
        """The task's network interface: the tools' subnets and security groups, and those that
        let it reach beyond the VPC only when its template allows egress."""
        subnets = list(self.config.get("BERTH_ECS_SUBNETS") or ())
        if not subnets:
            raise LaunchFailed("BERTH_ECS_SUBNETS is empty: a Fargate task needs at least one subnet.")
        network = {"subnets": subnets,
                   "assignPublicIp": "ENABLED" if self.config.get("BERTH_ECS_ASSIGN_PUBLIC_IP") else "DISABLED"}
        groups = list(self.config.get("BERTH_ECS_SECURITY_GROUPS") or ())
        if template.egress:
            groups += [group for group in self.config.get("BERTH_ECS_EGRESS_SECURITY_GROUPS") or ()
                       if group not in groups]
        if groups:
            network["securityGroups"] = groups
        return network

    @staticmethod
    def _overrides(instance, container, port, home=False, teams=()):
        """Command and environment from the template, cpu and memory from the size.

        Deterministic (sorted environment), because AWS answers a repeated clientToken with the
        first task only if the parameters are the same.
        """
        command, env = fill(instance, port)
        env["PORT"] = str(port)
        if home:
            env["HOME"] = CONTAINER_HOME
        if teams:
            env["BERTH_TEAM_FOLDERS"] = ":".join(f"{CONTAINER_TEAMS}/{team.name}" for team in teams)
        container_override = {"name": container,
                              "environment": [{"name": key, "value": env[key]} for key in sorted(env)]}
        if command:
            container_override["command"] = command
        overrides = {"containerOverrides": [container_override]}
        size = instance.size or {}
        if size.get("cpu"):
            units = max(1, round(float(size["cpu"]) * 1024))  # ECS counts 1024 units per vCPU
            overrides["cpu"], container_override["cpu"] = str(units), units
        if size.get("memory_mb"):
            memory = int(size["memory_mb"])
            overrides["memory"], container_override["memory"] = str(memory), memory
        return overrides

    # -- health and liveness ----------------------------------------------------------------
    def _describe(self, task_arn):
        """The task as DescribeTasks tells it, or None if ECS does not know it (yet, or any more)."""
        answer = self._call("describe_tasks", cluster=self.cluster, tasks=[task_arn])
        for task in answer.get("tasks") or []:
            if task.get("taskArn") == task_arn:
                return task
        return None

    @staticmethod
    def _task_arn(instance):
        return (instance.backend_state or {}).get("task_arn")

    def check_ready(self, instance):
        task_arn = self._task_arn(instance)
        if not task_arn:
            raise LaunchFailed("No ECS task was recorded for this launch.")
        task = self._describe(task_arn)  # None right after RunTask: DescribeTasks may lag behind
        if task is not None and is_stopping(task):
            reason, detail = stop_summary(task)
            raise LaunchFailed(f"The ECS task stopped before the tool answered: {reason}", detail)
        address = task_address(task, instance.template.port or DEFAULT_PORT) if task is not None else None
        until = time.monotonic() + self.describe_interval
        while True:
            if address and probe_http(address, instance.template.health_path):
                return address
            if time.monotonic() >= until:
                return None
            time.sleep(PROBE_INTERVAL)

    def is_alive(self, instance):
        task_arn = self._task_arn(instance)
        if not task_arn:
            return False, "No ECS task was recorded for this tool."
        try:
            task = self._describe(task_arn)
        except LaunchFailed as failure:
            return True, failure.reason  # AWS is unreachable or throttling: do not declare tools dead
        if task is None:
            return False, "The ECS task is gone: ECS no longer knows it."
        if is_stopping(task):
            return False, f"The ECS task stopped: {stop_summary(task)[0]}"
        return True, ""

    def failure_detail(self, instance):
        task_arn = self._task_arn(instance)
        try:
            task = self._describe(task_arn) if task_arn else None
        except LaunchFailed:
            return ""  # a courtesy on the failed page; never a reason to fail differently
        return stop_summary(task)[1] if task is not None and is_stopping(task) else ""

    # -- stopping -----------------------------------------------------------------------------
    def stop(self, instance):
        why = "stop requested" if instance.state == State.STOPPING else "launch ended"
        try:
            task_arns = set(self._tasks(instance.id).get(instance.id, []))
            if self._task_arn(instance):
                task_arns.add(self._task_arn(instance))
            for task_arn in task_arns:
                self._stop_task(task_arn, f"Berth: {why} (instance {instance.id})")
        except LaunchFailed as failure:
            # The reconciler stops a task with no live instance later; nothing is lost.
            log.warning("could not stop the ECS task of instance %s: %s", instance.id, failure.reason)

    def stop_managed(self, instance_id, description):
        for task_arn in description:
            self._stop_task(task_arn, f"Berth: no live instance {instance_id} (reconciler)")

    def _stop_task(self, task_arn, reason):
        self._call("stop_task", cluster=self.cluster, task=task_arn, reason=reason[:255])

    def list_managed(self):
        return self._tasks()

    def _tasks(self, instance_id=None):
        """{instance_id: [task ARN, ...]} of the tasks this deployment runs (and is not stopping):
        all of them, or those started for one instance."""
        task_arns, token, filters = [], None, {}
        if instance_id is not None:  # startedBy must be ListTasks' only filter
            filters["startedBy"] = started_by(self.deployment, instance_id)
        else:
            filters["desiredStatus"] = "RUNNING"
        while True:
            page = self._call("list_tasks", cluster=self.cluster, **filters,
                              **({"nextToken": token} if token else {}))
            task_arns += page.get("taskArns") or []
            token = page.get("nextToken")
            if not token:
                break
        managed = {}
        for start in range(0, len(task_arns), 100):  # DescribeTasks takes at most 100 tasks
            answer = self._call("describe_tasks", cluster=self.cluster, tasks=task_arns[start:start + 100],
                                include=["TAGS"])
            for task in answer.get("tasks") or []:
                tags = task_tags(task)
                if tags.get(TAG_DEPLOYMENT) != self.deployment or is_stopping(task):
                    continue
                try:
                    instance_id = int(tags.get(TAG_INSTANCE) or "")
                except ValueError:
                    continue
                managed.setdefault(instance_id, []).append(task["taskArn"])
        return managed

"""deploy/ecs/: task definitions checked offline against the ECS API's own model, and wired together.

botocore ships the model of every AWS API; its parameter validator is what boto3 runs before it
sends RegisterTaskDefinition, so a field that AWS would refuse for its name or type fails here.
"""
import json
import re
import string
from pathlib import Path

import botocore.session
import pytest
from botocore.validate import ParamValidator

ECS = Path(__file__).resolve().parent.parent.parent / "deploy" / "ecs"
PROCESSES = ("auth", "web", "worker", "nginx", "migrate")
SAMPLE = {"AWS_ACCOUNT_ID": "123456789012", "AWS_REGION": "eu-west-2",
          "BERTH_IMAGE": "123456789012.dkr.ecr.eu-west-2.amazonaws.com/berth:1.0.0",
          "BERTH_DOMAIN": "berth.example.com", "BERTH_REDIS_URL": "redis://cache.internal:6379/0",
          "BERTH_TOOLS_CLUSTER": "berth", "BERTH_TOOLS_SUBNETS": "subnet-1,subnet-2",
          "BERTH_TOOLS_SECURITY_GROUPS": "sg-1", "BERTH_ADMIN_EMAIL": "admin@example.com"}
# Fargate's cpu units and the memory (MiB) each allows.
FARGATE = {"256": range(512, 2049, 512), "512": range(1024, 4097, 1024), "1024": range(2048, 8193, 1024),
           "2048": range(4096, 16385, 1024), "4096": range(8192, 30721, 1024)}


def _filled(name):
    """The file as `envsubst` leaves it, with the README's placeholders filled in."""
    text = (ECS / name).read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(SAMPLE), name
    return json.loads(string.Template(text).substitute(SAMPLE))


@pytest.fixture(scope="module")
def definitions():
    return {process: _filled(f"{process}.json") for process in PROCESSES}


def _container(definition):
    [container] = definition["containerDefinitions"]
    return container


@pytest.mark.parametrize("process", PROCESSES)
def test_task_definition_is_what_register_task_definition_accepts(definitions, process):
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(definitions[process], shape)
    assert not report.has_errors(), report.generate_report()


def test_the_model_check_refuses_a_misspelled_field(definitions):
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    misspelled = {**_container(definitions["web"]), "comand": ["web"]}
    broken = {**definitions["web"], "containerDefinitions": [misspelled]}
    assert ParamValidator().validate(broken, shape).has_errors()


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_runs_on_fargate_from_the_one_image_unprivileged(definitions, process):
    definition = definitions[process]
    assert definition["family"] == f"berth-{process}"
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert definition["networkMode"] == "awsvpc"
    assert int(definition["memory"]) in FARGATE[definition["cpu"]]
    assert definition["executionRoleArn"].endswith(":role/berth-task-execution")
    container = _container(definition)
    assert container["image"] == SAMPLE["BERTH_IMAGE"]
    assert container["command"] == [process]
    assert container["essential"] is True
    assert container["user"] == "10001:10001"
    assert container["readonlyRootFilesystem"] is True
    assert container["mountPoints"] == [{"sourceVolume": "tmp", "containerPath": "/tmp"}]
    assert container["logConfiguration"]["options"]["awslogs-stream-prefix"] == process


@pytest.mark.parametrize("process", PROCESSES)
def test_secrets_come_from_ssm_never_from_the_definition(definitions, process):
    container = _container(definitions[process])
    secrets = {entry["name"]: entry["valueFrom"] for entry in container["secrets"]}
    plain = {entry["name"] for entry in container["environment"]}
    needed = {"BERTH_SECRET_KEY", "BERTH_PROXY_SECRET"}
    if process != "nginx":
        needed.add("BERTH_DATABASE_URL")
    assert needed <= set(secrets)
    assert not plain & {"BERTH_SECRET_KEY", "BERTH_PROXY_SECRET", "BERTH_DATABASE_URL",
                        "BERTH_ADMIN_PASSWORD"}
    for value in secrets.values():
        assert value.startswith("arn:aws:ssm:eu-west-2:123456789012:parameter/berth/")


def test_only_the_worker_has_a_task_role(definitions):
    with_role = {process for process, definition in definitions.items() if "taskRoleArn" in definition}
    assert with_role == {"worker"}
    policy = _filled("worker-policy.json")
    actions = {action for statement in policy["Statement"] for action in
               ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}
    assert {"ecs:RunTask", "ecs:DescribeTasks", "ecs:StopTask", "ecs:ListTasks", "ecs:TagResource",
            "ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition", "iam:PassRole",
            "elasticfilesystem:DescribeAccessPoints", "elasticfilesystem:CreateAccessPoint",
            "elasticfilesystem:DeleteAccessPoint", "elasticfilesystem:TagResource"} == actions


def test_auth_and_web_are_health_checked_and_named_for_nginx(definitions):
    nginx = {entry["name"]: entry["value"] for entry in _container(definitions["nginx"])["environment"]}
    for process, path, server in (("auth", "/auth/healthz", "BERTH_AUTH_SERVER"),
                                  ("web", "/healthz", "BERTH_WEB_SERVER")):
        container = _container(definitions[process])
        assert path in " ".join(container["healthCheck"]["command"])
        [port] = container["portMappings"]
        assert port["name"] == process  # Service Connect's portName (README.md)
        assert nginx[server] == f"berth-{process}:{port['containerPort']}"


def test_migrations_run_only_in_the_migrate_task(definitions):
    assert [process for process, definition in definitions.items()
            if _container(definition)["command"] == ["migrate"]] == ["migrate"]
    assert "portMappings" not in _container(definitions["migrate"])


def test_the_readme_documents_every_file_and_placeholder():
    readme = (ECS / "README.md").read_text()
    for path in ECS.glob("*.json"):
        assert f"`{path.name}`" in readme, path.name
    for placeholder in SAMPLE:
        assert f"${{{placeholder}}}" in readme, placeholder


def test_auth_web_and_worker_are_labelled_for_scraping_their_own_metrics(definitions):
    for process, port in (("auth", 8101), ("web", 8102), ("worker", 9102)):
        container = _container(definitions[process])
        labels = container["dockerLabels"]
        assert labels["ECS_PROMETHEUS_EXPORTER_PORT"] == str(port), process
        assert labels["ECS_PROMETHEUS_METRICS_PATH"] == "/metrics", process
        assert port in [mapping["containerPort"] for mapping in container["portMappings"]], process
        assert "BERTH_METRICS_TOKEN" in {entry["name"] for entry in container["secrets"]}, process
    worker = _container(definitions["worker"])
    env = {entry["name"]: entry["value"] for entry in worker["environment"]}
    assert env["BERTH_WORKER_METRICS_PORT"] == "9102"
    assert env["BERTH_WORKER_METRICS_HOST"] == "0.0.0.0"
    assert [mapping["name"] for mapping in worker["portMappings"]] == ["metrics"]


# -- security groups: who may reach whom ------------------------------------------------------

def _security_group_rules():
    """{(kind, group): [(peer, from port, to port)]} of security-groups.json, kind "in" or "out";
    a peer is another group's logical name or a CIDR."""
    template = json.loads((ECS / "security-groups.json").read_text())
    rules = {}
    for resource in template["Resources"].values():
        kind = {"AWS::EC2::SecurityGroupIngress": "in", "AWS::EC2::SecurityGroupEgress": "out"}.get(resource["Type"])
        if kind is None:
            continue
        properties = resource["Properties"]
        peer = properties.get("SourceSecurityGroupId") or properties.get("DestinationSecurityGroupId") \
            or properties.get("CidrIp")
        peer = peer["Ref"] if isinstance(peer, dict) else peer
        rules.setdefault((kind, properties["GroupId"]["Ref"]), []).append(
            (peer, properties["FromPort"], properties["ToPort"]))
    return template, rules


def test_tools_let_in_nginx_and_the_worker_only_and_never_each_other():
    template, rules = _security_group_rules()
    tools_in = rules[("in", "ToolsSecurityGroup")]
    assert {peer for peer, *_ in tools_in} == {"NginxSecurityGroup", "WorkerSecurityGroup"}
    # No group admits itself: one tool never reaches another, one replica never needs to.
    for (kind, group), peers in rules.items():
        assert all(peer != group for peer, *_ in peers), group
    # Berth's internals let in only what must reach them.
    assert {peer for peer, *_ in rules[("in", "AuthSecurityGroup")]} == {"NginxSecurityGroup"}
    assert {peer for peer, *_ in rules[("in", "WebSecurityGroup")]} == {"NginxSecurityGroup"}
    assert ("in", "WorkerSecurityGroup") not in rules
    assert "ToolsSecurityGroup" not in {peer for peer, *_ in rules[("in", "DatabaseSecurityGroup")]}
    assert "ToolsSecurityGroup" not in {peer for peer, *_ in rules[("in", "RedisSecurityGroup")]}


def test_tools_reach_nothing_beyond_the_vpc_unless_their_template_allows_egress():
    template, rules = _security_group_rules()
    resources = template["Resources"]
    # The inline rule replaces AWS's default allow-all egress with one that matches nothing.
    assert resources["ToolsSecurityGroup"]["Properties"]["SecurityGroupEgress"] == [
        {"IpProtocol": "-1", "CidrIp": "127.0.0.1/32",
         "Description": "nothing: the default allow-all egress is removed"}]
    assert {peer for peer, *_ in rules[("out", "ToolsSecurityGroup")]} == {"EndpointsSecurityGroup",
                                                                          "EfsSecurityGroup"}
    opened = resources["ToolsEgressSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert [rule["CidrIp"] for rule in opened] == ["0.0.0.0/0"]


def test_the_security_groups_deploy_and_the_tools_group_names_its_two_peers():
    """CloudFormation (as moto models it) creates the stack, and the tools' group, as EC2 then
    describes it, admits exactly nginx's and the worker's groups. moto skips the stand-alone
    egress rules (it does not model them), which the test above reads from the template."""
    import warnings

    import boto3
    from moto import mock_aws

    with mock_aws(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*AWS::EC2::SecurityGroupEgress.*")
        ec2 = boto3.client("ec2", region_name="eu-west-2")
        cloudformation = boto3.client("cloudformation", region_name="eu-west-2")
        vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
        cloudformation.create_stack(StackName="berth-security-groups",
                                    TemplateBody=(ECS / "security-groups.json").read_text(),
                                    Parameters=[{"ParameterKey": "VpcId", "ParameterValue": vpc}])
        [stack] = cloudformation.describe_stacks(StackName="berth-security-groups")["Stacks"]
        assert stack["StackStatus"] == "CREATE_COMPLETE"
        ids = {output["OutputKey"]: output["OutputValue"] for output in stack["Outputs"]}
        [tools] = ec2.describe_security_groups(GroupIds=[ids["ToolsSecurityGroup"]])["SecurityGroups"]
        peers = {pair["GroupId"] for rule in tools["IpPermissions"] for pair in rule["UserIdGroupPairs"]}
        assert peers == {ids["NginxSecurityGroup"], ids["WorkerSecurityGroup"]}
        assert all(not rule["IpRanges"] for rule in tools["IpPermissions"])

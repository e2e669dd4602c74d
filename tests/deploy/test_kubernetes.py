"""deploy/kubernetes/: Kubernetes' own schemas, checked offline, and the manifests wired together.

kubernetes-validate bundles the OpenAPI schemas of every Kubernetes release, so this needs no
cluster and no network. There is no kustomize here either: the kustomizations are read as
kustomize would read them (resources, configMapGenerator, namespace), which is all they use.
"""
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from deploy.nginx_template import PLACEHOLDER, TemplateError, fill

ROOT = Path(__file__).resolve().parent.parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
# The oldest release still supported by the big managed offerings, and the newest bundled.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
DOMAIN = "berth.example.com"


def _render_nginx_conf(tmp_path):
    """nginx.conf as README.md says to make it, with the `berth` of this checkout."""
    env = {**os.environ, "BERTH_LOCAL": "1", "BERTH_DATA_DIR": str(tmp_path / "data"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in [name for name in env if name.startswith("BERTH_") and name not in (
            "BERTH_LOCAL", "BERTH_DATA_DIR")]:
        del env[name]
    result = subprocess.run([str(KUBERNETES / "render-nginx-conf.sh"), DOMAIN], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def _kustomize(folder, generated):
    """The objects `kustomize build folder` would make (without its image and name rewriting)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if path.is_dir():
            objects += _kustomize(path, generated)
        else:
            objects += [document for document in yaml.safe_load_all(path.read_text()) if document]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for name in generator["files"]:
            data[name] = generated[name] if name in generated else (folder / name).read_text()
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": generator["name"]}, "data": data})
    for item in objects:
        if item["kind"] != "Namespace" and kustomization.get("namespace"):
            item["metadata"]["namespace"] = kustomization["namespace"]
    return objects


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    generated = {"nginx.conf": _render_nginx_conf(tmp_path_factory.mktemp("render"))}
    return {
        "migrate": _kustomize(KUBERNETES / "migrate", generated),
        "control-plane": _kustomize(KUBERNETES / "control-plane", generated),
        "secret": list(yaml.safe_load_all((KUBERNETES / "secret.example.yaml").read_text())),
    }


def _all(manifests, kind=None):
    every = [item for group in manifests.values() for item in group]
    return [item for item in every if kind is None or item["kind"] == kind]


def _config_map(manifests, name):
    """The ConfigMap of that name (common/ is in both kustomizations: the same object twice)."""
    return next(item for item in _all(manifests, "ConfigMap") if item["metadata"]["name"] == name)


def _pod_specs(manifests):
    for item in _all(manifests):
        if item["kind"] in ("Deployment", "Job"):
            yield item["metadata"]["name"], item["spec"]["template"]["spec"]


def test_every_manifest_matches_the_kubernetes_schema(manifests):
    kinds = set()
    for item in _all(manifests):
        kinds.add(item["kind"])
        for version in VERSIONS:
            kubernetes_validate.validate(item, version, strict=True)
    assert {"Deployment", "Service", "ConfigMap", "Job", "Secret", "Namespace"} <= kinds


def test_the_schema_check_refuses_a_misspelled_field(manifests):
    [auth] = [item for item in _all(manifests, "Deployment") if item["metadata"]["name"] == "berth-auth"]
    broken = {**auth, "spec": {**auth["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_the_control_plane_has_a_deployment_for_each_process(manifests):
    deployments = {item["metadata"]["name"]: item for item in manifests["control-plane"]
                   if item["kind"] == "Deployment"}
    assert set(deployments) == {"berth-auth", "berth-web", "berth-worker", "berth-nginx"}
    for name, deployment in deployments.items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [name.removeprefix("berth-")]


def test_auth_and_web_are_probed_on_their_health_endpoints(manifests):
    paths = {name: container for name, spec in _pod_specs(manifests) for container in spec["containers"]}
    for name, path in (("berth-auth", "/auth/healthz"), ("berth-web", "/healthz"),
                       ("berth-nginx", "/healthz")):
        assert paths[name]["readinessProbe"]["httpGet"]["path"] == path, name
        assert "livenessProbe" in paths[name], name
    nginx_host = paths["berth-nginx"]["readinessProbe"]["httpGet"]["httpHeaders"]
    assert {"name": "Host", "value": DOMAIN} in nginx_host


def test_migrations_run_only_in_their_own_job(manifests):
    migrating = [(item["kind"], name) for item in _all(manifests) if item["kind"] in ("Deployment", "Job")
                 for name, spec in [(item["metadata"]["name"], item["spec"]["template"]["spec"])]
                 for container in spec["containers"] + spec.get("initContainers", [])
                 if container.get("args") == ["migrate"]]
    assert migrating == [("Job", "berth-migrate")]
    assert not any(item["kind"] == "Job" for item in manifests["control-plane"])


def test_every_pod_runs_unprivileged_on_a_read_only_root(manifests):
    for name, spec in _pod_specs(manifests):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert "/tmp" in [mount["mountPath"] for mount in container["volumeMounts"]], name


def test_secret_settings_come_from_the_secret_and_every_reference_resolves(manifests):
    [secret] = manifests["secret"]
    config_maps = {item["metadata"]["name"] for item in _all(manifests, "ConfigMap")}
    for name, spec in _pod_specs(manifests):
        for container in spec["containers"]:
            secret_keys = {entry["name"]: entry["valueFrom"]["secretKeyRef"]
                           for entry in container.get("env", [])
                           if "secretKeyRef" in entry.get("valueFrom", {})}
            assert "BERTH_PROXY_SECRET" in secret_keys, name
            if name != "berth-nginx":
                assert {"BERTH_SECRET_KEY", "BERTH_DATABASE_URL"} <= set(secret_keys), name
            for reference in secret_keys.values():
                assert reference["name"] == secret["metadata"]["name"]
                assert reference["key"] in secret["stringData"]
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, name
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, name
    settings = _config_map(manifests, "berth-settings")
    assert not {"BERTH_SECRET_KEY", "BERTH_PROXY_SECRET", "BERTH_DATABASE_URL"} & set(settings["data"])


def test_services_select_their_deployments_pods(manifests):
    deployments = _all(manifests, "Deployment")
    for service in _all(manifests, "Service"):
        selector = service["spec"]["selector"]
        [target] = [item for item in deployments
                    if selector.items() <= item["spec"]["template"]["metadata"]["labels"].items()]
        port_names = {port["name"] for container in target["spec"]["template"]["spec"]["containers"]
                      for port in container.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]


def test_the_nginx_configmap_holds_no_secret_and_names_the_services(manifests):
    config_map = _config_map(manifests, "berth-nginx")
    text = config_map["data"]["nginx.conf"]
    assert PLACEHOLDER in text
    assert "server berth-auth:8101" in text and "server berth-web:8102" in text
    assert f"server_name {DOMAIN};" in text
    assert "upstream berth_tool_" not in text  # tools are not on loopback ports under Kubernetes


def test_the_filled_nginx_conf_is_valid_for_nginx(manifests, tmp_path):
    config_map = _config_map(manifests, "berth-nginx")
    text = fill(config_map["data"]["nginx.conf"], "s3cr3t-" + "x" * 20, "/tmp/nginx")
    assert "s3cr3t-" in text and PLACEHOLDER not in text
    # nginx -t resolves upstream names and writes under its prefix: use loopback and tmp_path.
    text = (text.replace("berth-auth:8101", "127.0.0.1:8101").replace("berth-web:8102", "127.0.0.1:8102")
            .replace("/tmp/nginx", str(tmp_path)))
    from berth.nginx_conf import prepare_prefix

    prepare_prefix(tmp_path)
    (tmp_path / "nginx.conf").write_text(text)
    result = subprocess.run(["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-e", str(tmp_path / "logs" / "error.log")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("text, secret, message", [
    ("proxy_set_header X-Berth-Proxy-Secret \"abc\"; /tmp/nginx/tmp/proxy", "x" * 20, "has no"),
    (f"\"{PLACEHOLDER}\" /tmp/nginx/tmp/proxy", None, "must be set"),
    (f"\"{PLACEHOLDER}\" /tmp/nginx/tmp/proxy", 'with"quote' + "x" * 10, "must be set"),
    (f"\"{PLACEHOLDER}\" /srv/nginx/tmp/proxy", "x" * 20, "another nginx prefix"),
])
def test_filling_the_template_refuses_what_would_break_or_leak(text, secret, message):
    with pytest.raises(TemplateError, match=message):
        fill(text, secret, "/tmp/nginx")


def test_auth_web_and_worker_pods_are_annotated_for_scraping_their_own_metrics(manifests):
    pods = {item["metadata"]["name"]: item["spec"]["template"] for item in _all(manifests, "Deployment")}
    for name in ("berth-auth", "berth-web", "berth-worker"):
        annotations = pods[name]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/path"] == "/metrics", name
        [container] = pods[name]["spec"]["containers"]
        assert int(annotations["prometheus.io/port"]) in [port["containerPort"] for port in container["ports"]]
        [token] = [entry for entry in container["env"] if entry["name"] == "BERTH_METRICS_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"]["optional"] is True, name  # metrics stay optional
    [worker] = pods["berth-worker"]["spec"]["containers"]
    env = {entry["name"]: entry.get("value") for entry in worker["env"]}
    [metrics] = [port for port in worker["ports"] if port["name"] == "metrics"]
    assert env["BERTH_WORKER_METRICS_PORT"] == str(metrics["containerPort"])
    assert env["BERTH_WORKER_METRICS_HOST"] == "0.0.0.0"  # reachable from the scraper, not loopback
    assert "prometheus.io/scrape" not in pods["berth-nginx"]["metadata"].get("annotations", {})


def test_network_policies_let_only_nginx_reach_auth_and_web(manifests):
    """Nothing enters the namespace unless a policy lets it: the world reaches nginx, nginx (and
    a metrics scraper) reaches auth and web, and nothing else reaches any Berth pod."""
    policies = {item["metadata"]["name"]: item["spec"] for item in _all(manifests, "NetworkPolicy")}
    assert policies["berth-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    components = {item["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
                  for item in _all(manifests, "Deployment")}

    def admitted(component):
        rules = []
        for spec in policies.values():
            selector = spec["podSelector"]
            labels = {"app.kubernetes.io/name": "berth", "app.kubernetes.io/component": component}
            if all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items()) and all(
                    labels.get(expression["key"]) in expression["values"]
                    for expression in selector.get("matchExpressions", [])):
                rules += spec.get("ingress", [])
        return rules

    assert admitted("nginx") == [{"ports": [{"port": "http"}]}]  # from anywhere
    for component in ("auth", "web"):
        [rule] = admitted(component)
        sources = rule["from"]
        assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "berth",
                                                "app.kubernetes.io/component": "nginx"}}} in sources
        assert all("podSelector" in source or "namespaceSelector" in source for source in sources)
        assert not any(source.get("podSelector") == {} for source in sources)
    [worker_rule] = admitted("worker")
    assert all("namespaceSelector" in source for source in worker_rule["from"])
    assert components == {"auth", "web", "worker", "nginx"}

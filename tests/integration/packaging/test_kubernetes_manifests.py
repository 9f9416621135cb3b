"""packaging/kubernetes: every overlay renders offline; every rendered manifest passes `kubernetes-validate
--strict` (the Kubernetes OpenAPI schemas it bundles, unknown fields rejected); the KEDA ScaledObject passes
its CRD's schema (vendored in packaging/kubernetes/schemas, unknown fields rejected the way the API server's
strict field validation does); and the manifests say what the issue promises (GPU resources and probes,
RBAC scoped to the scale subresource, HPA limits) consistently with the agent's config."""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dsagent.config import load_config

from tests.conftest import REPO_ROOT

KUBE = REPO_ROOT / "packaging" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/gpu", "overlays/deployment", "overlays/hpa", "overlays/keda"]
#: 1.29: the oldest release with native sidecar containers on by default; and the newest schemas bundled
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
CRD_KINDS = {"ScaledObject"}

_spec = importlib.util.spec_from_file_location("kube_render", KUBE / "render.py")
assert _spec is not None and _spec.loader is not None
render_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_module)


def rendered(kustomization: str) -> list[dict[str, Any]]:
    return render_module.render(KUBE / kustomization)  # type: ignore[no-any-return]


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name))


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []) if c["name"] == name)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_overlay_renders_offline_without_duplicates(kustomization: str) -> None:
    resources = rendered(kustomization)
    keys = [(r["kind"], r["metadata"]["name"]) for r in resources]
    assert keys and len(keys) == len(set(keys))
    assert all(r["metadata"].get("namespace") == "dsagent" for r in resources if r["kind"] != "Namespace")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_manifests_pass_kubernetes_validate_strict(kustomization: str, version: str) -> None:
    checked = 0
    for resource in rendered(kustomization):
        if resource["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(resource, version, strict=True)  # raises ValidationError on any problem
        checked += 1
    assert checked >= 7


def test_kubernetes_validate_command_line_on_every_rendered_file(tmp_path: Path) -> None:
    files = []
    for kustomization in KUSTOMIZATIONS:
        for index, resource in enumerate(rendered(kustomization)):
            if resource["kind"] in CRD_KINDS:
                continue
            path = tmp_path / f"{kustomization.replace('/', '-')}-{index}-{resource['kind']}.yaml"
            path.write_text(yaml.safe_dump(resource))
            files.append(str(path))
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(tool), "--strict", "--quiet", *files], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_strict_validation_rejects_an_unknown_field() -> None:
    daemonset = copy.deepcopy(find(rendered("overlays/gpu"), "DaemonSet"))
    daemonset["spec"]["template"]["spec"]["nodeSelectr"] = {"x": "y"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSIONS[-1], strict=True)


def _strict_schema(schema: Any) -> Any:
    """The CRD's structural schema with unknown fields rejected wherever it lists the properties."""
    if isinstance(schema, dict):
        result = {k: _strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if "properties" in schema and "additionalProperties" not in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
        return result
    if isinstance(schema, list):
        return [_strict_schema(item) for item in schema]
    return schema


def keda_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((KUBE / "schemas" / "keda.sh_scaledobjects.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = _strict_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked by the API server itself
    return jsonschema.Draft7Validator(schema)


def test_scaled_object_passes_the_keda_crd_schema() -> None:
    scaled_object = find(rendered("overlays/keda"), "ScaledObject")
    errors = [f"{list(e.path)}: {e.message}" for e in keda_validator().iter_errors(scaled_object)]
    assert errors == []
    assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
    prometheus = next(t for t in scaled_object["spec"]["triggers"] if t["type"] == "prometheus")
    assert "dsagent_engine_requests_waiting" in prometheus["metadata"]["query"]


def test_keda_schema_check_rejects_a_misspelt_field() -> None:
    scaled_object = copy.deepcopy(find(rendered("overlays/keda"), "ScaledObject"))
    scaled_object["spec"]["maxReplicas"] = 20  # the HPA's spelling, not KEDA's maxReplicaCount
    assert any("maxReplicas" in e.message for e in keda_validator().iter_errors(scaled_object))


def test_renderer_agrees_with_kubectl_kustomize() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the offline renderer is checked by the other tests only")
    for kustomization in KUSTOMIZATIONS:
        result = subprocess.run([kubectl, "kustomize", str(KUBE / kustomization)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
        ours = {(d["kind"], d["metadata"]["name"]): d for d in rendered(kustomization)}
        assert theirs == ours, kustomization


def test_deployment_pod_template_equals_the_gpu_daemonset_pod_template() -> None:
    daemonset = find(rendered("overlays/gpu"), "DaemonSet")
    deployment = find(rendered("overlays/deployment"), "Deployment", "dsagent-inference")
    assert deployment["spec"]["template"] == daemonset["spec"]["template"]
    assert not [r for r in rendered("overlays/deployment") if r["kind"] == "DaemonSet"]


def test_gpu_overlay_has_the_guides_resources_and_probes(tmp_path: Path) -> None:
    pod = find(rendered("overlays/gpu"), "DaemonSet")["spec"]["template"]["spec"]
    engine = container(pod, "engine")
    assert engine["restartPolicy"] == "Always"  # native sidecar
    assert engine["resources"]["limits"] == {"cpu": "4", "memory": "64Gi", "nvidia.com/gpu": 1}
    assert engine["resources"]["requests"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": 1}
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    agent = container(pod, "agent")
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"]["port"] == 8080 and agent[probe]["initialDelaySeconds"] == 30
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["ports"] == [{"name": "api", "containerPort": 8080}]
    env = {item["name"]: item.get("value") for item in agent["env"]}
    # the probe port is where the agent listens: the config in the ConfigMap plus the overlay's env
    config_map = find(rendered("overlays/gpu"), "ConfigMap", "dsagent-config")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"])
    config = load_config(config_file, environ={k: v for k, v in env.items() if k.startswith("DSAGENT_") and v})
    assert config.server.port == 8080 and config.server.host == "0.0.0.0"
    assert config.engine.kind == "external" and config.engine.url == "http://127.0.0.1:8000"


def test_rbac_allows_only_get_and_patch_on_the_scaled_deployment() -> None:
    resources = rendered("overlays/hpa")
    role = find(resources, "Role")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments/scale"],
                              "resourceNames": ["dsagent-inference"], "verbs": ["get", "patch"]}]
    binding = find(resources, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dsagent", "namespace": "dsagent"}]
    config = yaml.safe_load(find(resources, "ConfigMap", "dsagent-config")["data"]["config.yaml"])
    assert config["actions"]["scale"]["name"] == "dsagent-inference" == find(resources, "Deployment")["metadata"]["name"]


def test_hpa_scales_on_cpu_and_inference_qps_between_4_and_20() -> None:
    hpa = find(rendered("overlays/hpa"), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 20)
    assert hpa["spec"]["scaleTargetRef"]["name"] == "dsagent-inference"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert metrics["External"]["external"]["metric"]["name"] == "inference_qps"
    assert metrics["External"]["external"]["target"] == {"type": "AverageValue", "averageValue": "1000"}


def test_rules_configmap_is_mounted_as_a_directory_so_edits_reach_the_pod() -> None:
    pod = find(rendered("base"), "DaemonSet")["spec"]["template"]["spec"]
    mount = next(m for m in container(pod, "agent")["volumeMounts"] if m["name"] == "rules")
    assert "subPath" not in mount  # subPath mounts never see ConfigMap updates
    rules = yaml.safe_load(find(rendered("base"), "ConfigMap", "dsagent-rules")["data"]["site.yaml"])
    assert rules["groups"][0]["rules"][0]["alert"] == "EngineDown"
    service = find(rendered("base"), "Service")
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_config_wires_the_engine_records_and_the_rules_into_the_pod(tmp_path: Path) -> None:
    resources = rendered("overlays/gpu")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(find(resources, "ConfigMap", "dsagent-config")["data"]["config.yaml"])
    config = load_config(config_file, environ={})
    engine_args = container(find(resources, "DaemonSet")["spec"]["template"]["spec"], "engine")["args"]
    receiver = config.sources.otlp_receiver
    assert engine_args[engine_args.index("--otlp-endpoint") + 1] == f"http://{receiver.host}:{receiver.port}"
    # the image installs the default packs under sys.prefix (/usr/local in python:3.11-slim) as data files
    assert "/usr/local/share/dsagent/rules/*.yaml" in config.rules.paths
    assert '"share/dsagent/rules"' in (REPO_ROOT / "pyproject.toml").read_text()
    assert "/etc/dsagent/rules/*.yaml" in config.rules.paths


def test_site_rules_pass_the_rules_checker(tmp_path: Path) -> None:
    from dsagent.cli import app
    from typer.testing import CliRunner

    site = KUBE / "base" / "rules" / "site.yaml"
    result = CliRunner().invoke(app, ["rules", "check", str(site)])
    assert result.exit_code == 0 and "SUCCESS" in result.output, result.output


def test_renderer_refuses_what_it_does_not_support(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas:\n- name: x\n  count: 2\n")
    with pytest.raises(render_module.RenderError, match="replicas not supported"):
        render_module.render(tmp_path)

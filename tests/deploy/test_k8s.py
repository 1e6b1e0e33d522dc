"""deploy/k8s/ against the Kubernetes schemas (kubernetes-validate, offline) and against the code: the services
and their workers (shared/topology.py PROCESSES), ports, probe paths, settings names, the runtime user, the
migrations command; and against deploy/prometheus/kubernetes.yml, whose relabelling keeps and names the pods.
Overlays are rendered with
kustomize when `kustomize` or `kubectl` is installed (skipped otherwise; the base is checked regardless)."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.runtime.cli import build_parser
from shared.settings import Settings
from shared.topology import PROCESSES, SERVICES, TOPICS, WORKERS, port_variable
from tests.deploy.test_compose import _is_setting

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "kubernetes.yml"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.32"
DOCKERFILE_USER = re.search(r"^USER (\d+):(\d+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def base_resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in documents(K8S / "base" / name)]


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def rendered_pod(deployment: dict[str, Any]) -> dict[str, Any]:
    """A base Deployment's pod template as kustomize renders it: the base kustomization's `labels` entries
    that ask for it (includeTemplates, or includeSelectors) are added to the pod templates."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    added = {name: value for entry in kustomization.get("labels", [])
             if entry.get("includeTemplates") or entry.get("includeSelectors")
             for name, value in entry["pairs"].items()}
    template = deployment["spec"]["template"]
    return {**template, "metadata": {**template["metadata"], "labels": {**template["metadata"]["labels"], **added}}}


def _meta_name(name: str) -> str:
    """A label or annotation name as Prometheus' Kubernetes discovery spells it in a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def scrape_target(pod: dict[str, Any], namespace: str) -> dict[str, str] | None:
    """The labels of the target Prometheus makes of this pod's port with deploy/prometheus/kubernetes.yml
    (its namespaces and relabelling applied as Prometheus applies them); None when it does not scrape it."""
    [job] = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    [discovery] = job["kubernetes_sd_configs"]
    if discovery["role"] != "pod" or namespace not in discovery["namespaces"]["names"]:
        return None
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]
    metadata = pod["metadata"]
    labels = {
        "__address__": f"10.1.2.3:{port['containerPort']}",  # the pod's IP and the container port
        "__metrics_path__": job.get("metrics_path", "/metrics"),
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": f"{metadata['labels'].get('app.kubernetes.io/name', 'pod')}-5d8f7-x2x9q",
        **{f"__meta_kubernetes_pod_label_{_meta_name(k)}": v for k, v in metadata.get("labels", {}).items()},
        **{f"__meta_kubernetes_pod_annotation_{_meta_name(k)}": v
           for k, v in metadata.get("annotations", {}).items()},
    }
    for rule in job["relabel_configs"]:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule["source_labels"])
        matched = re.fullmatch(rule.get("regex", "(.*)"), value)  # Prometheus anchors the regex
        action = rule.get("action", "replace")
        assert action in ("keep", "drop", "replace"), f"relabel action {action} is not simulated here"
        if (action == "keep" and not matched) or (action == "drop" and matched):
            return None
        if action == "replace" and matched:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = matched.expand(replacement)
    return labels


def assert_scraped_as_its_process(pod: dict[str, Any], name: str, namespace: str) -> None:
    target = scrape_target(pod, namespace)
    assert target is not None, f"Prometheus would not scrape {name}'s pods in {namespace}"
    assert target["__address__"].endswith(f":{PROCESSES[name].port}") and target["__metrics_path__"] == "/metrics"
    # the label every rule and dashboard groups by
    assert (target["service"], target["namespace"]) == (name, namespace)


def validate(resource: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = f"{resource['kind']}/{resource['metadata']['name']}"
        raise AssertionError(f"{where}: {exc.message} at {exc.path}") from None


def test_every_base_manifest_is_valid_kubernetes() -> None:
    resources = base_resources()
    # a Deployment, Service, PodDisruptionBudget and HPA per service; a worker has no Service
    assert len(resources) == 2 + 4 * len(SERVICES) + 3 * len(WORKERS)
    for resource in resources:
        validate(resource)


def test_the_validator_refuses_a_broken_manifest() -> None:
    deployment = dict(by_kind(base_resources(), "Deployment")["leads"])
    deployment["spec"] = {**deployment["spec"], "replicas": "two"}
    with pytest.raises(AssertionError):
        validate(deployment)


def test_each_process_has_a_deployment_pdb_and_hpa_and_each_service_a_service_agreeing_with_the_topology() -> None:
    resources = base_resources()
    deployments, services = by_kind(resources, "Deployment"), by_kind(resources, "Service")
    budgets, autoscalers = by_kind(resources, "PodDisruptionBudget"), by_kind(resources, "HorizontalPodAutoscaler")
    assert set(deployments) == set(budgets) == set(autoscalers) == set(PROCESSES)
    # a worker answers nobody but the kubelet's probes and Prometheus, both on the pod itself
    assert set(services) == set(SERVICES)
    for name, topology in PROCESSES.items():
        pod = deployments[name]["spec"]["template"]
        [container] = pod["spec"]["containers"]
        [port] = container["ports"]
        assert port["containerPort"] == topology.port and port["name"] == "http"
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert int(env.get(port_variable(name), topology.port)) == topology.port
        assert not [variable for variable in env if not _is_setting(variable)], env
        if name in SERVICES:
            assert container["image"] == f"funnelcast-{name}"
            assert "command" not in container and "args" not in container  # the image's entrypoint
            [service_port] = services[name]["spec"]["ports"]
            assert service_port["port"] == topology.port and service_port["targetPort"] == "http"
            assert services[name]["spec"]["selector"] == deployments[name]["spec"]["selector"]["matchLabels"]
        else:  # a worker: its service's image, another command
            worker = WORKERS[name]
            assert container["image"] == f"funnelcast-{worker.service}"
            assert container["command"] == ["python", "-m", worker.module]
            service_env = {e["name"]: e["value"] for e in
                           deployments[worker.service]["spec"]["template"]["spec"]["containers"][0].get("env", [])}
            assert service_env.get(worker.hand_over) == "true", "the service would deliver too"
        # no Service or Deployment selects another process's pods
        labels = pod["metadata"]["labels"]
        others = [other for other, d in deployments.items() if other != name and
                  d["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert not others, f"{name}'s pods are selected by {others}"
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(topology.port)
        assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
        # what deploy/prometheus/kubernetes.yml keeps pods by and names their series after
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert rendered_pod(deployments[name])["metadata"]["labels"]["app.kubernetes.io/part-of"] == "funnelcast"
        assert labels["app.kubernetes.io/name"] == name
        assert budgets[name]["spec"]["selector"] == deployments[name]["spec"]["selector"]
        hpa = autoscalers[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        # More consumer instances than partitions would idle.
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= min(t.partitions for t in TOPICS.values()
                                                                      if t.partitions >= 6)


def test_prometheus_in_the_cluster_scrapes_every_process_as_its_service() -> None:
    namespaces = [yaml.safe_load((overlay / "kustomization.yaml").read_text())["namespace"] for overlay in OVERLAYS]
    deployments = by_kind(base_resources(), "Deployment")
    for name in PROCESSES:
        pod = rendered_pod(deployments[name])
        for namespace in namespaces:
            assert_scraped_as_its_process(pod, name, namespace)
    # and the simulation tells a pod Prometheus would skip
    pod = rendered_pod(deployments["leads"])
    unannotated = {**pod, "metadata": {**pod["metadata"], "annotations": {
        k: v for k, v in pod["metadata"]["annotations"].items() if k != "prometheus.io/scrape"}}}
    foreign = {**pod, "metadata": {**pod["metadata"], "labels": {
        **pod["metadata"]["labels"], "app.kubernetes.io/part-of": "another-system"}}}
    assert scrape_target(unannotated, namespaces[0]) is None and scrape_target(foreign, namespaces[0]) is None
    assert scrape_target(pod, "default") is None


def test_probes_resources_and_a_non_root_read_only_container() -> None:
    assert DOCKERFILE_USER is not None
    uid, gid = int(DOCKERFILE_USER.group(1)), int(DOCKERFILE_USER.group(2))
    settings_grace = float(yaml.safe_load((K8S / "base" / "config.yaml").read_text())["data"]
                           ["FUNNELCAST_SHUTDOWN_GRACE_S"])
    for name, deployment in by_kind(base_resources(), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # The state home must be on the writable volume, the root filesystem being read-only.
        [mount] = container["volumeMounts"]
        assert Path("/tmp/funnelcast").is_relative_to(mount["mountPath"])  # noqa: S108 - the pod's path
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > settings_grace + pre_stop, name


def test_configuration_names_real_settings_and_secrets_stay_out_of_the_config_map() -> None:
    fields = {f"FUNNELCAST_{field.upper()}" for field in Settings.model_fields}
    config = by_kind(base_resources(), "ConfigMap")["funnelcast-config"]["data"]
    assert set(config) <= fields, set(config) - fields
    assert config["FUNNELCAST_HOST"] == "0.0.0.0"  # noqa: S104 - in a pod, every interface
    assert config["FUNNELCAST_HOME"] == "/tmp/funnelcast"  # noqa: S108
    assert Settings(**{k.removeprefix("FUNNELCAST_").lower(): v for k, v in config.items()})  # values parse
    assert not {"FUNNELCAST_AUTH_SECRET", "FUNNELCAST_DATABASE_URL"} & set(config)
    for workload in [*by_kind(base_resources(), "Deployment").values(), *by_kind(base_resources(), "Job").values()]:
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "funnelcast-config"}},
                                        {"secretRef": {"name": "funnelcast-secrets"}}]


def test_compose_and_the_config_map_give_the_scoring_service_the_same_schedule() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    in_compose = {key: value for key, value in compose["services"]["scoring"]["environment"].items()
                  if key.startswith("FUNNELCAST_SCORING_")}
    config = by_kind(base_resources(), "ConfigMap")["funnelcast-config"]["data"]
    in_config_map = {key: value for key, value in config.items() if key.startswith("FUNNELCAST_SCORING_")}
    assert "FUNNELCAST_SCORING_RESCORE_INTERVAL_S" in in_config_map
    assert in_compose == in_config_map


def test_the_migrations_job_runs_a_real_cli_command() -> None:
    job = by_kind(base_resources(), "Job")["funnelcast-migrate"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    program, *arguments = container["command"]
    assert program == "funnelcast"
    assert build_parser().parse_args(arguments).command == "migrate"


def test_the_dev_overlay_generates_every_secret_the_services_need() -> None:
    dev = yaml.safe_load((K8S / "overlays" / "dev" / "kustomization.yaml").read_text())
    [secret] = dev["secretGenerator"]
    assert secret["name"] == "funnelcast-secrets"
    assert {literal.split("=", 1)[0] for literal in secret["literals"]} == {
        "FUNNELCAST_AUTH_SECRET", "FUNNELCAST_DATABASE_URL"
    }


def kustomize() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.skip("neither kustomize nor kubectl is installed: the overlays are not rendered (the base is checked)")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_each_overlay_renders_to_valid_manifests(overlay: Path) -> None:
    result = subprocess.run([*kustomize(), str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text())["namespace"]
    assert {r["kind"] for r in rendered} >= {"Namespace", "ConfigMap", "Job", "Deployment", "Service",
                                             "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for resource in rendered:
        validate(resource)
        if resource["kind"] == "Namespace":
            continue
        assert resource["metadata"]["namespace"] == namespace
        if resource["kind"] != "Secret":  # the overlay's generated Secret carries no base labels
            assert resource["metadata"]["labels"]["app.kubernetes.io/part-of"] == "funnelcast"
    deployments = by_kind(rendered, "Deployment")
    assert set(deployments) == set(PROCESSES)
    for name, deployment in deployments.items():
        assert_scraped_as_its_process(deployment["spec"]["template"], name, namespace)

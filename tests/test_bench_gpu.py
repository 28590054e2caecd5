"""The GPU check runs end to end on the CPU (`--smoke`), so the script is known to work before a GPU is lent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu import PARTS, main
from benchmarks.gpu_report import render, targets
from model.checkpoint import load_checkpoint
from server.registry import find_checkpoints
from tests.gpu_smoke import ROOT, TIMEOUT_S, SmokeRun, check_command


def run_check(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check_command(out, *args), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def smoke(gpu_smoke_run: SmokeRun) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The whole smoke run, which the suite started in the background (`tests/gpu_smoke.py`)."""
    return gpu_smoke_run.result(), gpu_smoke_run.out


def test_the_smoke_run_finishes_every_part_and_writes_both_reports(
    smoke: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert list(report["parts"]) == list(PARTS)
    assert {name: part["status"] for name, part in report["parts"].items()} == dict.fromkeys(PARTS, "ok")
    markdown = (out / "report.md").read_text()
    for heading in ("## Targets", "## Environment", "## Correctness", "## Serving", "## Training", "## Burst"):
        assert heading in markdown
    assert markdown == render(report)
    assert report["parts"]["environment"]["result"]["gpu"] == {
        "skipped": "no CUDA device: torch.cuda.is_available() is false"
    }
    assert all(t["applies"] is False for t in report["targets"])  # a CPU run measures no GPU target


def test_every_shipped_checkpoint_and_paper_configuration_is_compared(
    smoke: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = smoke
    result = json.loads((out / "report.json").read_text())["parts"]["correctness"]["result"]
    shipped = {path.name for path in find_checkpoints(ROOT / "weights", [])}
    assert set(result["checkpoints"]) == shipped
    for name, runs in result["checkpoints"].items():
        # The smoke run's "device" is the CPU itself, so fp32 must agree exactly with the CPU reference.
        assert runs["fp32"]["agreement"] == 1.0, name
        assert len(runs["fp32"]["per_step"]) == 2
    assert 0.9 <= result["checkpoints"]["sudoku-9x9"]["bf16"]["agreement"] <= 1.0
    assert set(result["paper"]) == {"sudoku-extreme-mlp", "sudoku-extreme-att", "maze-hard", "arc1", "hrm-maze-hard"}
    assert all(run["finite"] and run["agreement"] == 1.0 for run in result["paper"].values())
    onnx = result["onnx"]["sudoku-9x9"]
    assert onnx["provider"] == "CPUExecutionProvider" and onnx["agreement"] >= 0.999


def test_serving_measures_every_scheduler_and_the_raw_ceiling(
    smoke: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = smoke
    result = json.loads((out / "report.json").read_text())["parts"]["serving"]["result"]["float32/eager"]
    for model in ("sudoku-9x9", "paper-sudoku-mlp"):
        assert result[model]["raw"]["puzzles_per_s"] > 0
        assert result[model]["raw"]["provider"] == "cpu"
        for policy in ("continuous", "static", "sequential"):
            assert set(result[model][policy]) == {"c1", "c8"}
            for cell in result[model][policy].values():
                assert cell["errors"] == 0 and "puzzles_per_s" in cell
    assert result["sudoku-9x9"]["continuous"]["c8"]["served"] > 0
    # Random paper-size weights never reach the halting threshold: every puzzle runs the whole horizon.
    assert result["paper-sudoku-mlp"]["raw"]["mean_steps"] == 16


def test_training_and_the_burst_run_the_real_loop_and_bring_a_checkpoint_back(
    smoke: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = smoke
    parts = json.loads((out / "report.json").read_text())["parts"]
    training = parts["training"]["result"]
    assert set(training) == {"sudoku-extreme-mlp", "maze-hard", "arc1"}
    for row in training.values():
        assert row["seconds_per_step"] > 0 and row["skipped_updates"] == 0
    burst = parts["burst"]["result"]
    assert burst["summary"]["steps"] > 0
    ckpt = load_checkpoint(out / "burst")
    assert ckpt.config.family == "sudoku" and ckpt.config.training["preset"] == "sudoku-extreme-mlp"


def test_a_part_past_its_cap_is_killed_and_reported(tmp_path: Path) -> None:
    proc = run_check(tmp_path, "--only", "environment,correctness", "--cap", "correctness=2")
    assert proc.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["parts"]) == ["environment", "correctness"]
    assert report["parts"]["environment"]["status"] == "ok"
    assert report["parts"]["correctness"]["status"] == "timed out at its 2 s cap"
    assert "timed out at its 2 s cap" in (tmp_path / "report.md").read_text()


def test_unknown_parts_and_caps_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--only", "environment,warp"], ["--cap", "warp=3"], ["--cap", "serving"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--smoke", "--out", str(tmp_path), *args])
        assert exit_.value.code == 2
    assert "warp" in capsys.readouterr().err


def report_with(agreement: float, continuous: float, sequential: float, raw: float) -> dict[str, Any]:
    cells = {"raw": {"puzzles_per_s": raw}}
    cells |= {
        "continuous": {"c64": {"puzzles_per_s": continuous}},
        "sequential": {"c64": {"puzzles_per_s": sequential}},
    }
    return {
        "smoke": False,
        "plan": {"serve_variants": [["bfloat16", False]], "target_concurrency": 64},
        "parts": {
            "correctness": {
                "result": {"checkpoints": {"a": {"fp32": {"agreement": 1.0}}, "b": {"fp32": {"agreement": agreement}}}}
            },
            "serving": {"result": {"bfloat16/eager": {"sudoku-9x9": cells}}},
        },
    }


def test_targets_are_judged_against_their_bars() -> None:
    met = {t["target"]: t["met"] for t in targets(report_with(0.9995, 600.0, 100.0, 650.0))}
    assert met == {
        "shipped checkpoints, device fp32 vs CPU fp32 agreement (worst: b)": True,
        "sudoku-9x9: continuous / sequential at c=64": True,
        "sudoku-9x9: server / raw model at c=64": True,
        "paper-sudoku-mlp: continuous / sequential at c=64": None,  # not measured
        "paper-sudoku-mlp: server / raw model at c=64": None,
    }
    rows = targets(report_with(0.998, 400.0, 100.0, 500.0))
    assert [t["met"] for t in rows[:3]] == [False, False, False]
    assert [t["value"] for t in rows[:3]] == [0.998, 4.0, 0.8]

"""The accuracy/compute curve runs every mode on a tiny checkpoint and writes its JSON, table and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.inference_curve import main
from model.checkpoint import save_checkpoint
from tests.training.test_evaluate import tiny_model


def test_every_mode_of_every_set_is_a_point_with_its_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(3)
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    weights = save_checkpoint(model, model.config, tmp_path / "tiny")
    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    argv = ["--set", f"tiny={weights}@generate:sudoku:12:6:10:1", "--budgets", "0,12", "--threads", "1"]
    assert main([*argv, "--json", str(out), "--png", str(png)]) == 0
    curve = json.loads(out.read_text())["curves"]["tiny"]
    assert [p["mode"] for p in curve] == ["q_head", "verified", "budget 12"]
    for point in curve:
        assert point["command"].startswith(f"python -m training.evaluate --weights {weights}")
        assert 0.0 <= point["exact_accuracy"] <= 1.0 and point["mean_steps"] > 0
    assert curve[2]["mean_views_tried"] >= curve[1]["mean_views_tried"] == 1.0
    assert curve[2]["exact_accuracy"] >= curve[1]["exact_accuracy"]  # more views can only add verified answers
    assert png.stat().st_size > 0
    assert "| tiny | budget 12 |" in capsys.readouterr().out

"""The learning curve counts training hours over every sitting of a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.curve import curve, main, training_hours

RECORDS = [
    {"kind": "train", "step": 100, "elapsed": 1800.0},
    {"kind": "train", "step": 200, "elapsed": 3600.0},
    {"kind": "eval", "step": 200, "exact_accuracy": 0.5},
    {"kind": "train", "step": 300, "elapsed": 900.0},  # resumed: a new process counts from 0 again
    {"kind": "train", "step": 400, "elapsed": 1800.0},
    {"kind": "eval", "step": 400, "exact_accuracy": 0.75},
]


def test_hours_add_up_across_resumed_sittings() -> None:
    assert training_hours(RECORDS) == {100: 0.5, 200: 1.0, 300: 1.25, 400: 1.5}
    assert curve(RECORDS) == [(200, 1.0, 0.5), (400, 1.5, 0.75)]


def test_cli_prints_the_table_and_draws_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert main([str(tmp_path), "--png", str(tmp_path / "curve.png")]) == 0
    assert "| 400 | 1.50 | 75.0% |" in capsys.readouterr().out
    assert (tmp_path / "curve.png").stat().st_size > 1000

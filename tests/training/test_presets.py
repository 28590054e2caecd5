"""Paper presets: dry runs report the reference parameter counts; `--set` overrides apply, typos are rejected."""

from __future__ import annotations

import json
from typing import Any

import pytest

from training import run
from training.config import available_presets, load_preset

PAPER = {
    "sudoku-extreme-mlp": 5_028_866,
    "sudoku-extreme-att": 6_828_034,
    "maze-hard": 6_822_914,
    "arc1": 6_829_058,
    "arc2": 6_829_058,
    "hrm-sudoku-extreme": 27_275_266,
}


def dry_run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved preset (all but the last line) and the summary (the last line) a dry run prints."""
    assert run.main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads("\n".join(lines[:-1])), json.loads(lines[-1])


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_preset_dry_run_reports_reference_parameter_count(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    preset, summary = dry_run(capsys, "--preset", name)
    assert summary["preset"] == name == preset["name"]
    assert summary["trainable_parameters"] == PAPER[name]


def test_every_preset_loads() -> None:
    names = available_presets()
    assert set(PAPER) <= set(names) and "sudoku-4x4-tiny" in names
    for name in names:
        assert load_preset(name).name == name


def test_set_overrides_apply_to_model_data_and_train(capsys: pytest.CaptureFixture[str]) -> None:
    preset, summary = dry_run(
        capsys,
        "--preset",
        "sudoku-extreme-att",
        "--set",
        "model.l_cycles=4",
        "--set",
        "model.hidden_size=256",
        "--set",
        "train.lr=3e-4",
        "--set",
        "train.ema=false",
        "--set",
        "data.n_test=7",
    )
    assert preset["model"]["l_cycles"] == 4 and preset["model"]["hidden_size"] == 256
    assert preset["train"]["lr"] == 3e-4 and preset["train"]["ema"] is False
    assert preset["data"]["n_test"] == 7
    assert preset["model"]["training"]["overrides"] == [
        "model.l_cycles=4",
        "model.hidden_size=256",
        "train.lr=3e-4",
        "train.ema=false",
        "data.n_test=7",
    ]
    assert summary["net_calls_per_step"] == 3 * (4 + 1)
    assert summary["trainable_parameters"] < PAPER["sudoku-extreme-att"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.hiden_size=64", r"\[model\] has unknown keys \['hiden_size'\]"),
        ("train.learning_rate=1e-3", r"\[train\] has unknown keys \['learning_rate'\]; known: .*'lr'"),
        ("optim.lr=1e-3", "section must be model, data or train"),
        ("lr=1e-3", "must look like section.key=value"),
        ("model.hidden_size", "must look like section.key=value"),
    ],
)
def test_bad_overrides_are_rejected_with_a_clear_error(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run.main(["--preset", "sudoku-4x4-tiny", "--set", override, "--dry-run"])


def test_bad_values_and_unknown_presets_are_rejected() -> None:
    with pytest.raises(ValueError, match="hidden_size must be divisible by num_heads"):
        load_preset("sudoku-4x4-tiny", ["model.hidden_size=30"])
    with pytest.raises(ValueError, match=r"no preset 'sudoku-huge'; available: .*sudoku-4x4-tiny"):
        load_preset("sudoku-huge")

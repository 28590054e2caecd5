"""Paper presets: dry runs report the reference parameter counts; `--set` overrides apply, typos are rejected."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import pytest

from training import run
from training.config import available_presets, load_preset
from training.data.dataset import DatasetMeta
from training.data.sources import fit_to_data

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


HRM_PRESETS = ["hrm-sudoku-extreme", "hrm-maze-hard", "hrm-arc1", "hrm-sudoku-cpu", "hrm-sudoku-4x4-tiny"]


@pytest.mark.parametrize("name", HRM_PRESETS)
def test_hrm_preset_dry_runs_as_hrm_with_q_learning_halting(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    preset, summary = dry_run(capsys, "--preset", name)
    model = preset["model"]
    assert model["arch"] == "hrm" and model["no_act_continue"] is False
    assert summary["preset"] == name and summary["trainable_parameters"] > 0
    assert summary["grad_net_calls_per_step"] == 2


@pytest.mark.parametrize("name", ["hrm-maze-hard", "hrm-arc1"])
def test_hrm_paper_presets_use_the_hrm_recipe(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    preset, summary = dry_run(capsys, "--preset", name)
    model = preset["model"]
    assert (model["hidden_size"], model["num_heads"], model["num_layers"]) == (512, 8, 4)
    assert (model["h_cycles"], model["l_cycles"], model["halt_max_steps"], model["puzzle_emb_len"]) == (2, 2, 16, 1)
    assert summary["net_calls_per_step"] == 6 and preset["train"]["ema"] is False
    trm = load_preset(name.removeprefix("hrm-"))
    assert preset["data"] == asdict(trm.data)


@pytest.mark.parametrize(("hrm", "trm"), [("hrm-sudoku-cpu", "sudoku-cpu"), ("hrm-sudoku-4x4-tiny", "sudoku-4x4-tiny")])
def test_hrm_comparison_presets_match_their_trm_data_train_and_compute(
    hrm: str, trm: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/compare_models.py trains these pairs on one dataset: same data, schedule and calls per step."""
    hrm_preset, trm_preset = load_preset(hrm), load_preset(trm)
    assert asdict(hrm_preset.data) == asdict(trm_preset.data)
    assert asdict(hrm_preset.train) == asdict(trm_preset.train)
    _, hrm_summary = dry_run(capsys, "--preset", hrm)
    _, trm_summary = dry_run(capsys, "--preset", trm)
    assert hrm_summary["net_calls_per_step"] == trm_summary["net_calls_per_step"]
    assert hrm_summary["sequence_length"] == trm_summary["sequence_length"]
    h, t = hrm_preset.model, trm_preset.model
    assert (h.hidden_size, h.expansion, h.num_layers, h.mixer) == (t.hidden_size, t.expansion, t.num_layers, t.mixer)


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


def test_a_preset_is_sized_to_its_dataset_and_refuses_another_family() -> None:
    preset = load_preset("maze-cpu")
    meta = DatasetMeta("maze", 6, 121, 1, "dihedral", "11x11 mazes", {"side": 11})
    fitted = fit_to_data(preset, meta)
    assert (fitted.model.seq_len, fitted.model.num_puzzle_ids) == (121, 1)
    assert fitted.model.training["data"] == "11x11 mazes" and fitted.model.training["data_source"] == {"side": 11}
    assert fitted.model.training["preset"] == "maze-cpu"  # what the preset recorded is kept
    sudoku_meta = DatasetMeta("sudoku", 11, 81, 1, "sudoku", "9x9 sudoku", {})
    with pytest.raises(ValueError, match="dataset is sudoku/vocab 11, preset model wants maze/vocab 6"):
        fit_to_data(preset, sudoku_meta)

"""The TRM vs HRM comparison trains both tiny presets on one dataset, or loads them, and writes one table and JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.compare_models import format_table, main

TINY = ["--trm-preset", "sudoku-4x4-tiny", "--hrm-preset", "hrm-sudoku-4x4-tiny"]
STEPS = 10


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """The comparison (and the trainer it calls) sets torch's thread count; later tests keep theirs."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One end-to-end run with training: its directory, the JSON it wrote and the table it printed."""
    root = tmp_path_factory.mktemp("compare")
    before = torch.get_num_threads()
    argv = [*TINY, "--steps", str(STEPS), "--eval", "32", "--step-seconds", "0.1"]
    argv += ["--out-dir", str(root / "runs"), "--data-dir", str(root / "data"), "--json", str(root / "out.json")]
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(before)
    return root, json.loads((root / "out.json").read_text()), (root / "out.txt").read_text()


def check_rows(results: dict[str, Any]) -> None:
    rows = results["models"]
    assert list(rows) == ["trm", "hrm"]
    assert [row["arch"] for row in rows.values()] == ["trm", "hrm"]
    assert rows["trm"]["trainable_parameters"] > 0 and rows["hrm"]["trainable_parameters"] > 0
    assert rows["trm"]["trainable_parameters"] != rows["hrm"]["trainable_parameters"]
    assert rows["trm"]["net_calls_per_step"] == rows["hrm"]["net_calls_per_step"]
    for row in rows.values():
        for key in ("adaptive_exact_accuracy", "adaptive_cell_accuracy", "exact_accuracy", "cell_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (row["arch"], key)
        assert 1 <= row["mean_steps"] <= row["max_steps"]
        assert row["step_ms"] > 0
        assert row["train_steps"] == STEPS and row["train_wall_seconds"] >= 0


def test_both_models_train_on_one_dataset_and_share_one_table(
    trained: tuple[Path, dict[str, Any], str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, results, table = trained
    check_rows(results)
    rows = results["models"]
    assert all(row["source"] == "trained" for row in rows.values())
    assert results["train_data"] == str(root / "data") and (root / "data" / "data_config.json").is_file()
    assert rows["trm"]["train_data"] == rows["hrm"]["train_data"]
    assert results["eval"]["puzzles"] == 32
    assert table.strip() == format_table(results)
    assert table.count("| trm | sudoku-4x4-tiny |") == 1 and table.count("| hrm | hrm-sudoku-4x4-tiny |") == 1


def test_loaded_checkpoints_are_compared_without_training(
    trained: tuple[Path, dict[str, Any], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, first, _ = trained
    runs = root / "runs"
    out = tmp_path / "loaded.json"
    argv = [*TINY, "--trm", str(runs / "trm" / "checkpoint"), "--hrm", str(runs / "hrm" / "checkpoint")]
    assert main([*argv, "--eval", "32", "--step-seconds", "0.1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    check_rows(results)
    assert all(row["source"] == "loaded" for row in results["models"].values())
    for arch in ("trm", "hrm"):  # the same weights on the same held-out puzzles give the same figures
        assert results["models"][arch]["exact_accuracy"] == first["models"][arch]["exact_accuracy"]
        assert results["models"][arch]["adaptive_cell_accuracy"] == first["models"][arch]["adaptive_cell_accuracy"]
    assert "| trm | sudoku-4x4-tiny |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("presets", "message"),
    [
        (["--trm-preset", "sudoku-cpu", "--hrm-preset", "hrm-sudoku-4x4-tiny"], r"different data \(data\.\["),
        (["--trm-preset", "sudoku-4x4-tiny", "--hrm-preset", "sudoku-4x4-tiny"], "builds arch 'trm', not 'hrm'"),
    ],
)
def test_presets_that_are_not_a_fair_pair_are_rejected(presets: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        main([*presets, "--out-dir", str(tmp_path), "--json", str(tmp_path / "x.json")])

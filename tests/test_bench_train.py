"""The training benchmark runs the real training step per variant and writes a complete table and JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks.train import main, parse_variants


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """The trainer sets torch's thread count; later tests in the session keep theirs."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_each_variant_is_timed_and_written(tmp_path: Path) -> None:
    out = tmp_path / "results" / "train.json"
    argv = ["--preset", "sudoku-4x4-tiny", "--set", f"data.cache_dir={tmp_path / 'data'}", "--set", "train.threads=1"]
    argv += ["--variants", "float32/off,bfloat16/off", "--steps", "3", "--warmup", "1", "--json", str(out)]
    assert main(argv) == 0

    results = json.loads(out.read_text())
    assert results["preset"] == "sudoku-4x4-tiny"
    assert results["global_batch_size"] == 32
    assert [row["variant"] for row in results["variants"]] == ["float32/off", "bfloat16/off"]
    for row in results["variants"]:
        assert "error" not in row
        assert row["seconds_per_step"] > 0
        assert row["examples_per_second"] == pytest.approx(32 / row["seconds_per_step"], rel=0.01)
        assert row["peak_memory_mib"] > 0
        assert row["trainable_parameters"] > 0
        assert row["last_lm_loss"] > 0
        assert row["skipped_updates"] == 0  # every timed step really trained
    table = out.with_suffix(".txt").read_text()
    assert "| float32/off |" in table and "| bfloat16/off |" in table and "| 0 of 4 |" in table


def test_variants_default_per_device_and_reject_unknown_names() -> None:
    assert parse_variants("", torch.device("cpu")) == [("float32", "off"), ("float32", "on"), ("bfloat16", "on")]
    assert parse_variants("", torch.device("cuda")) == [("float32", "off"), ("bfloat16", "off"), ("bfloat16", "on")]
    assert parse_variants("bfloat16/on", torch.device("cpu")) == [("bfloat16", "on")]
    with pytest.raises(ValueError, match="float16/on"):
        parse_variants("float16/on", torch.device("cpu"))
    with pytest.raises(ValueError, match="'float32'"):
        parse_variants("float32", torch.device("cpu"))


def test_a_bad_variant_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--preset", "sudoku-4x4-tiny", "--variants", "fp8/on"])
    assert exit_.value.code == 2
    assert "variant 'fp8/on'" in capsys.readouterr().err

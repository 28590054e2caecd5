"""The model benchmark runs end to end on a tiny checkpoint and writes a complete table and JSON (speeds unchecked)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks.model import BACKENDS, format_tables, main
from tests.server.conftest import write_checkpoint


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    """The benchmark sets torch's thread count; later tests in the session keep theirs."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_every_backend_cell_is_measured_and_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(tmp_path / "weights" / "sudoku-tiny", "sudoku", 81, seed=1)
    monkeypatch.setenv("TRM_ONNX_CACHE", str(tmp_path / "onnx-cache"))
    out = tmp_path / "results" / "model.json"
    # The torchscript exporter and dynamo's eager backend keep this in seconds; the default dynamo export and
    # inductor compile run the same code paths but take a minute on a busy CPU.
    argv = ["--weights-dir", str(tmp_path / "weights"), "--batches", "1,2", "--seconds", "0.06", "--repeats", "2"]
    argv += ["--threads", "1", "--skip-server", "--exporter", "torchscript", "--compile-backend", "eager"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the torchscript exporter is deprecated
        assert main([*argv, "--json", str(out)]) == 0

    results = json.loads(out.read_text())
    assert results["threads"] == 1
    assert {"cpu", "device", "torch", "onnxruntime"} <= results.keys()
    assert "server" not in results
    model = results["models"]["sudoku-tiny"]
    assert "error" not in model["onnx"]
    assert list(model["batches"]) == ["1", "2"]
    for cells in model["batches"].values():
        assert set(cells) == set(BACKENDS)
        for backend, cell in cells.items():
            if backend.startswith("compile") and "error" in cell:
                continue  # a compile failure is a recorded result, not a crash
            assert cell["puzzle_steps_per_s"] > 0, (backend, cell)
            assert cell["calls"] >= 2
    table = out.with_suffix(".txt").read_text()
    assert table.strip() == format_tables(results)
    assert table.count("| sudoku-tiny |") == 2

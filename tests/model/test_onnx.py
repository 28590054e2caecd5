"""ONNX export of one supervision step: parity with torch, dynamic batch, the plain-ORT contract and the CLI."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model.checkpoint import WEIGHTS_FILE, save_checkpoint, sha256_file
from model.export_onnx import INPUTS, OUTPUTS, check_export, export_step, main, make_session, onnx_providers
from model.factory import build_model
from model.puzzles.sudoku import SudokuCodec
from model.trm import TRM, Carry
from tests.conftest import tiny_config

MIXERS = {
    "attention-rope": {"mixer": "attention", "pos_encodings": "rope"},
    "mlp-none": {"mixer": "mlp", "pos_encodings": "none"},
}
# A published 9x9 puzzle (Wikipedia's Sudoku example), 30 givens.
SUDOKU = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box spinning workers slow eager ~100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=list(MIXERS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[TRM, Path]:
    """A tiny model of each mixer variant with 7 puzzle rows, exported once per module (exports take seconds)."""
    torch.manual_seed(0)
    model = TRM(tiny_config(num_puzzle_ids=7, **MIXERS[request.param])).eval()
    path = export_step(model, tmp_path_factory.mktemp(request.param) / "model.onnx")
    return model, path


def chained_logit_diff(model: TRM, session: ort.InferenceSession, tokens: torch.Tensor, vectors: torch.Tensor) -> float:
    """Max |logits| difference over 16 steps from the initial carry, both sides fed ONNX's y_out/z_out each step.

    Same carry on both sides: an untrained model is chaotic, so two free-running chains part ways at the rate of
    any 1e-7 rounding difference and would test the model's dynamics instead of the export.
    """
    carry = model.initial_carry(len(tokens))
    y, z = carry.y.numpy(), carry.z.numpy()
    worst = 0.0
    for _ in range(16):
        y_out, z_out, logits, q_halt, _ = session.run(
            list(OUTPUTS), {"inputs": tokens.numpy(), "puzzle_vectors": vectors.numpy(), "y": y, "z": z}
        )
        with torch.no_grad():
            want = model.step(Carry(torch.from_numpy(y), torch.from_numpy(z)), tokens, puzzle_vectors=vectors)
        assert logits.shape == (len(tokens), model.config.seq_len, model.config.vocab_size)
        assert np.allclose(q_halt, want.q_halt.numpy(), atol=1e-4)
        worst = max(worst, float(np.abs(logits - want.logits.numpy()).max()))
        y, z = y_out, z_out
    return worst


@pytest.mark.parametrize("batch_size", [1, 8])
def test_random_inputs_match_torch_over_16_chained_steps(exported: tuple[TRM, Path], batch_size: int) -> None:
    model, path = exported
    session = make_session(path, threads=1)
    tokens = torch.randint(0, model.config.vocab_size, (batch_size, model.config.seq_len))
    vectors = torch.randn(batch_size, model.config.hidden_size)
    assert chained_logit_diff(model, session, tokens, vectors) < 1e-4


def test_graph_has_the_step_interface_and_no_puzzle_table(exported: tuple[TRM, Path]) -> None:
    model, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUTS)
    assert [o.name for o in graph.output] == list(OUTPUTS)
    for value in (*graph.input, *graph.output):
        batch_dim = value.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.HasField("dim_value"), f"{value.name} batch axis is fixed"
    table_shape = [model.config.num_puzzle_ids, model.config.hidden_size]
    assert all(list(t.dims) != table_shape for t in graph.initializer), "the puzzle table leaked into the graph"


def test_check_export_measures_parity_and_fails_loudly_on_a_mismatch(exported: tuple[TRM, Path]) -> None:
    model, path = exported
    assert check_export(model, path, batch_sizes=(1, 3), steps=2) < 1e-4
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.add_(0.01)
    with pytest.raises(RuntimeError, match="max abs diff"):
        check_export(other, path, batch_sizes=(2,), steps=1)


@pytest.fixture(scope="module")
def sudoku_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[TRM, Path]:
    """A 9x9-Sudoku-shaped tiny MLP model (the mixer of the shipped Sudoku weights; attention is exported above, and
    exports half as fast) saved as a checkpoint and exported through the CLI."""
    torch.manual_seed(0)
    config = tiny_config(seq_len=81, hidden_size=64, num_heads=4, mixer="mlp", pos_encodings="none")
    model = TRM(config).eval()
    with torch.no_grad():
        model.puzzle_emb.normal_()  # the table starts at zero; a non-zero prefix exercises the vector input
    directory = save_checkpoint(model, config, tmp_path_factory.mktemp("ckpt") / "sudoku-tiny")
    main([str(directory)])
    return model, directory


def test_cli_writes_model_onnx_and_stamp_beside_a_saved_checkpoint(sudoku_checkpoint: tuple[TRM, Path]) -> None:
    _, directory = sudoku_checkpoint
    assert (directory / "model.onnx").is_file()
    assert (directory / "model.onnx.sha256").read_text().strip() == sha256_file(directory / WEIGHTS_FILE)
    session = make_session(directory / "model.onnx", threads=1)
    assert [o.name for o in session.get_outputs()] == list(OUTPUTS)
    assert not list(directory.glob("*.tmp")), "the temporary export file was left behind"


def test_real_sudoku_encoding_matches_torch_at_batch_1_and_8(sudoku_checkpoint: tuple[TRM, Path]) -> None:
    model, directory = sudoku_checkpoint
    session = make_session(directory / "model.onnx", threads=1)
    codec = SudokuCodec(81)
    grid = codec.parse(SUDOKU)
    # Relabelling the digits of a valid puzzle gives another valid puzzle: eight real, distinct encodings.
    rng = np.random.default_rng(0)
    grids = [grid] + [np.concatenate(([0], rng.permutation(9) + 1))[grid] for _ in range(7)]
    tokens = torch.from_numpy(np.stack([codec.encode(g) for g in grids]).astype(np.int64))
    assert tokens.shape == (8, 81) and int(tokens.max()) <= 10
    for batch in (tokens[:1], tokens):
        vectors = model.puzzle_emb[torch.zeros(len(batch), dtype=torch.long)]
        assert chained_logit_diff(model, session, batch, vectors) < 1e-4


def test_plain_onnxruntime_runs_the_file_outside_the_project(exported: tuple[TRM, Path], tmp_path: Path) -> None:
    model, path = exported
    script = (
        "import json, sys\n"
        "import numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "types = {'tensor(int64)': np.int64, 'tensor(float)': np.float32}\n"
        "feeds = {i.name: np.zeros([3, *i.shape[1:]], types[i.type]) for i in s.get_inputs()}\n"
        "out = s.run(None, feeds)\n"
        "print(json.dumps({'shapes': [list(o.shape) for o in out], 'torch': 'torch' in sys.modules}))\n"
    )
    # -I: no PYTHONPATH, no cwd on sys.path, so nothing of the project can be imported by accident.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg = model.config
    hidden = [3, cfg.total_len, cfg.hidden_size]
    assert result == {"shapes": [hidden, hidden, [3, cfg.seq_len, cfg.vocab_size], [3], [3]], "torch": False}


def test_one_onnxruntime_distribution_with_the_expected_providers(exported: tuple[TRM, Path]) -> None:
    _, path = exported
    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(dist)
            installed.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    # Both at once overwrite each other's files in site-packages and the import picks one at random.
    assert len(installed) == 1, f"expected exactly one onnxruntime distribution, found {installed}"
    providers = onnx_providers()
    assert "CPUExecutionProvider" in providers and providers == ort.get_available_providers()
    assert make_session(path, "cpu").get_providers()[0] == "CPUExecutionProvider"
    want = "CUDAExecutionProvider" if "CUDAExecutionProvider" in providers else "CPUExecutionProvider"
    assert make_session(path, "cuda").get_providers()[0] == want
    with pytest.raises(ValueError, match="device"):
        make_session(path, "tpu")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter announces its own deprecation
@pytest.mark.parametrize("arch", ["hrm", "trm-torchscript"])
def test_hrm_and_the_legacy_exporter_also_reproduce_the_step(arch: str, tmp_path: Path) -> None:
    # HRM with T = n = 1: one f_L and one f_H call is enough to show its two networks are wired in.
    config = tiny_config(arch="hrm", h_cycles=1, l_cycles=1) if arch == "hrm" else tiny_config()
    model = build_model(config).train()
    exporter = "torchscript" if arch.endswith("torchscript") else "dynamo"
    path = export_step(model, tmp_path / "model.onnx", exporter=exporter)
    assert model.training, "export must restore the model's train/eval mode"
    assert check_export(model, path, batch_sizes=(1, 4), steps=3) < 1e-4

"""Shared server-test fixtures: tiny checkpoints, a free port, and the real `python -m server` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import VOCAB, TRMConfig
from model.factory import build_model
from model.trm import TRM

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0

# A valid solved Sudoku; puzzles in these tests blank some of its cells, so their givens never conflict.
SOLVED = [
    [5, 3, 4, 6, 7, 8, 9, 1, 2],
    [6, 7, 2, 1, 9, 5, 3, 4, 8],
    [1, 9, 8, 3, 4, 2, 5, 6, 7],
    [8, 5, 9, 7, 6, 1, 4, 2, 3],
    [4, 2, 6, 8, 5, 3, 7, 9, 1],
    [7, 1, 3, 9, 2, 4, 8, 5, 6],
    [9, 6, 1, 5, 3, 7, 2, 8, 4],
    [2, 8, 7, 4, 1, 9, 6, 3, 5],
    [3, 4, 5, 2, 8, 6, 1, 7, 9],
]

# A 10x10 maze with one S and one G and a path between them (fits the 10x10 tiny maze model exactly).
MAZE_10 = [
    "##########",
    "#S   #   #",
    "# ## # # #",
    "#  #   # #",
    "## ##### #",
    "#      # #",
    "# #### # #",
    "#    #   #",
    "#### ## G#",
    "##########",
]


def sudoku_puzzle(blanks: int = 40, seed: int = 0) -> list[list[int]]:
    """SOLVED with `blanks` cells set to 0 (a different pattern per seed)."""
    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(81, generator=rng)[:blanks].tolist()
    grid = [row[:] for row in SOLVED]
    for i in order:
        grid[i // 9][i % 9] = 0
    return grid


def tiny_config(
    family: str, seq_len: int, halt_max_steps: int = 6, num_puzzle_ids: int = 1, arch: str = "trm"
) -> TRMConfig:
    """The smallest model with every code path of the paper ones: hidden 32, 4 heads, T=2, n=2, prefix 4."""
    return TRMConfig(
        arch=arch,  # type: ignore[arg-type]
        family=family,  # type: ignore[arg-type]
        vocab_size=VOCAB[family],
        seq_len=seq_len,
        num_puzzle_ids=num_puzzle_ids,
        puzzle_emb_len=4,
        hidden_size=32,
        num_heads=4,
        expansion=2.0,
        h_cycles=2,
        l_cycles=2,
        halt_max_steps=halt_max_steps,
    )


def tiny_model(family: str = "sudoku", seq_len: int = 81, seed: int = 0, **overrides: Any) -> tuple[TRM, TRMConfig]:
    torch.manual_seed(seed)
    config = tiny_config(family, seq_len, **overrides)
    model = build_model(config)
    assert isinstance(model, TRM)  # HRM subclasses TRM
    return model.eval(), config


def write_checkpoint(
    directory: Path, family: str, seq_len: int, seed: int = 0, q_halt_bias: float | None = None, **overrides: Any
) -> Path:
    """An untrained tiny checkpoint saved with the project's own writer (config.json + model.safetensors).

    An untrained halting head says "continue" (bias -5); `q_halt_bias=5.0` makes one that halts after step 1.
    """
    model, config = tiny_model(family, seq_len, seed, **overrides)
    if q_halt_bias is not None:
        with torch.no_grad():
            model.q_head.bias[0] = q_halt_bias
    save_checkpoint(model, config, directory)
    return directory


def write_conv_checkpoint(directory: Path, seed: int = 0, **overrides: Any) -> Path:
    """An untrained size-agnostic checkpoint (`conv` mixer, hidden 16, one prefix slot): by default a maze one on a
    16x16 training canvas; `overrides` change any config field (an ARC one: family, seq_len, conv_broadcast)."""
    torch.manual_seed(seed)
    fields: dict[str, Any] = dict(
        family="maze",
        seq_len=256,
        puzzle_emb_len=1,
        hidden_size=16,
        num_heads=2,
        expansion=2.0,
        h_cycles=1,
        l_cycles=1,
        mixer="conv",
        pos_encodings="none",
        halt_max_steps=2,
    )
    fields.update(overrides)
    config = TRMConfig(vocab_size=VOCAB[fields["family"]], **fields)
    save_checkpoint(build_model(config).eval(), config, directory)
    return directory


def record_trained_sides(directory: Path, side: int, min_side: int | None) -> None:
    """Write into a maze checkpoint's config.json what `training.run` records about its data (the keys the server
    reads): one side, or mixed sides from `min_side` up."""
    path = directory / "config.json"
    config = json.loads(path.read_text())
    source: dict[str, object] = {"generator": "training.data.maze.generate", "side": side}
    if min_side is not None:
        source["min_side"] = min_side
    config["training"] = {"preset": "test", "data_source": source}
    path.write_text(json.dumps(config))


def write_tiny_weights(weights: Path, arc: bool = True) -> Path:
    """sudoku-tiny (9x9), maze-tiny (10x10) and, optionally, arc-tiny (10x10 canvas, two known task rows)."""
    write_checkpoint(weights / "sudoku-tiny", "sudoku", 81, seed=1)
    write_checkpoint(weights / "maze-tiny", "maze", 100, seed=2)
    if arc:
        write_checkpoint(weights / "arc-tiny", "arc", 100, seed=3, num_puzzle_ids=2)
        (weights / "arc-tiny" / "identifiers.json").write_text(json.dumps(["<blank>", "task-a"]))
    return weights


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tests share two cores with other work: torch stays on one thread."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A running `python -m server`; `stop()` is safe to call more than once."""

    proc: subprocess.Popen[bytes]
    base: str
    log_path: Path

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def start_server(weights: Path, log_dir: Path, *extra: str, timeout: float = READY_TIMEOUT_S) -> ServerProcess:
    """Start the real server process on a free port and wait until /health/ready answers 200."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "server", "--weights-dir", str(weights), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--threads", "1", *extra]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n{server.log()}")
            try:
                if httpx.get(f"{server.base}/health/ready", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready within {timeout} s:\n{server.log()}")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise

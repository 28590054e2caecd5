"""Data parallelism: two gloo processes on CPU give the weights, EMA, puzzle table and ACT state of one process.

The test runs this file as a script twice (ranks 0 and 1); each rank trains on its half of the same global batch
and rank 0 writes the gathered training state, which is compared with a single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.config import Preset, load_preset
from training.data import sudoku
from training.data.dataset import PuzzleSet, load_split
from training.loop import Trainer
from training.state import ACT_FIELDS, save_state

REPO = Path(__file__).resolve().parents[2]
BATCH, STEPS = 8, 5


def preset_for(tmp_path: Path) -> Preset:
    return load_preset(
        "sudoku-4x4-tiny",
        [
            f"data.cache_dir={tmp_path / 'data'}",
            "train.threads=1",
            f"train.global_batch_size={BATCH}",
            "train.max_steps=20",
            "model.num_puzzle_ids=3",
            "model.halt_exploration_prob=0.5",
        ],
    )


def dataset(tmp_path: Path) -> PuzzleSet:
    data = load_split(tmp_path / "sudoku", "train", mmap=False)
    return PuzzleSet(data.inputs, data.labels, (np.asarray(data.groups) % 3).astype(np.int32), data.groups)


def train(tmp_path: Path) -> tuple[Trainer, list[dict[str, float]]]:
    """STEPS optimizer steps; the Q head starts at "halt", so exploration alone decides which slots stop when."""
    torch.set_num_threads(1)
    trainer = Trainer(preset_for(tmp_path), dataset(tmp_path), None, tmp_path / "run", device=torch.device("cpu"))
    with torch.no_grad():
        trainer.model.q_head.bias.fill_(5.0)
    return trainer, [trainer.train_step() for _ in range(STEPS)]


def worker(tmp_path: Path) -> None:
    trainer, stats = train(tmp_path)
    save_state(trainer, tmp_path / "state")  # gathers the ACT slots of both ranks; rank 0 writes
    if trainer.dist.rank == 0:
        (tmp_path / "stats.json").write_text(json.dumps(stats))
    torch.distributed.barrier()
    # Skip interpreter teardown: gloo's threads can abort a finished process at exit ("terminate called without
    # an active exception"), which would fail the test after all the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_two_processes_match_one_process_with_the_same_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sudoku.build(tmp_path / "sudoku", 24, 8, (6, 10), seed=11, side=4, workers=1)
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(tmp_path)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{output}"

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single, single_stats = train(tmp_path)
    assert single.dist.world == 1

    saved = load_file(str(tmp_path / "state" / "tensors.safetensors"))
    for key, value in single.model.state_dict().items():
        assert torch.allclose(saved[f"model/{key}"], value, rtol=0, atol=1e-6), key
    assert single.ema is not None
    for key, value in single.ema.shadow.items():
        assert torch.allclose(saved[f"ema/{key}"], value, rtol=0, atol=1e-6), f"ema {key}"
    for name in ACT_FIELDS:
        assert torch.equal(saved[f"act/{name}"], getattr(single.act, name).to(saved[f"act/{name}"].dtype)), name
    assert torch.allclose(saved["act/y"], single.act.carry.y, rtol=0, atol=1e-5)
    halted_counts = {s["halted"] for s in single_stats}
    assert len(halted_counts) > 1  # exploration made slots halt at different steps

    two_stats = json.loads((tmp_path / "stats.json").read_text())
    for a, b in zip(two_stats, single_stats, strict=True):
        assert a["halted"] == b["halted"] and a["exact_sum"] == b["exact_sum"]
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=1e-5)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))

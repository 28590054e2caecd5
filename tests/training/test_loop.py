"""The training loop end to end on tiny data: learning, ACT slot refills, resume, data parallelism."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_checkpoint
from model.factory import build_model
from training import run
from training.config import load_preset
from training.data.dataset import DatasetMeta, PuzzleSet, save_dataset
from training.loop import Trainer
from training.state import load_state, save_state

ROOT = Path(__file__).resolve().parents[2]


def tiny_preset(tmp_path, *extra):
    return load_preset("sudoku-4x4-tiny", [f"data.cache_dir='{tmp_path / 'data'}'", "train.threads=1", *extra])


def random_set(n=96, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, 6, (n, 16)).astype(np.uint8)
    return PuzzleSet(inputs, inputs + 1, np.zeros(n, np.int32), np.arange(n, dtype=np.int32))


def test_a_tiny_run_learns_and_writes_curves_and_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "weights"
    argv = [
        "--preset",
        "sudoku-4x4-tiny",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"data.cache_dir='{tmp_path / 'data'}'",
        "--set",
        "train.threads=1",
        "--set",
        "train.max_steps=240",
        "--set",
        "train.eval_every_steps=120",
        "--log-every",
        "20",
    ]
    assert run.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["lm_loss"] < 0.7 * train[0]["lm_loss"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["cell_accuracy"] > evals[0]["cell_accuracy"] - 1e-9 and evals[-1]["cell_accuracy"] > 0.6
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 1000
    assert summary["steps"] == 240
    assert load_checkpoint(out).config.seq_len == 16


def test_running_slots_keep_their_puzzle_and_halted_slots_are_refilled(tmp_path):
    preset = tiny_preset(tmp_path, "model.halt_max_steps=3", "model.halt_exploration_prob=0.0")
    trainer = Trainer(preset, random_set(), None, tmp_path)
    trainer.train_step()
    first = trainer.act.inputs.clone()
    trainer.train_step()
    assert torch.equal(trainer.act.inputs, first)  # q_head starts at -5: nobody halts before the limit
    assert trainer.act.steps.tolist() == [2] * trainer.local_batch
    trainer.train_step()
    assert trainer.act.halted.all()
    trainer.train_step()
    assert not torch.equal(trainer.act.inputs, first) and trainer.act.steps.tolist() == [1] * trainer.local_batch


def test_resume_continues_bit_for_bit(tmp_path):
    preset = tiny_preset(tmp_path)
    data = random_set()
    straight = Trainer(preset, data, None, tmp_path)
    for _ in range(6):
        straight.train_step()

    first = Trainer(preset, data, None, tmp_path)
    for _ in range(3):
        first.train_step()
    save_state(first, tmp_path / "state")
    resumed = Trainer(preset, data, None, tmp_path)
    load_state(resumed, tmp_path / "state")
    for _ in range(3):
        resumed.train_step()

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for name, shadow in straight.ema.shadow.items():
        assert torch.equal(shadow, resumed.ema.shadow[name])
    assert torch.equal(straight.act.carry.z, resumed.act.carry.z)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_torchrun_matches_one_process_with_the_same_global_batch(tmp_path):
    meta = DatasetMeta("sudoku", 11, 16, augment="sudoku")
    save_dataset(tmp_path / "data", meta, {"train": random_set(), "test": random_set(32, 1)})
    (tmp_path / "data" / "data_config.json").write_text("{}")
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch\n"
        "from training.config import load_preset\n"
        "from training.data.dataset import load_split\n"
        "from training.data.sources import augmentation_for\n"
        "from training.data.dataset import load_meta\n"
        "from training.loop import Trainer\n"
        "from model.checkpoint import save_checkpoint\n"
        "torch.set_num_threads(1)\n"
        "data = sys.argv[1]\n"
        "p = load_preset('sudoku-4x4-tiny', ['train.threads=1', 'train.ema=false'])\n"
        "t = Trainer(p, load_split(data, 'train'), None, None, augmentation_for(load_meta(data)))\n"
        "for _ in range(4):\n"
        "    t.train_step()\n"
        "if t.dist.rank == 0:\n"
        "    save_checkpoint(t.model, t.config, sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
    ]
    for procs, out in ((1, "one"), (2, "two")):
        cmd = [*torchrun, "--nproc-per-node", str(procs), str(script), str(tmp_path / "data"), str(tmp_path / out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
    one = load_checkpoint(tmp_path / "one").model.state_dict()
    two = load_checkpoint(tmp_path / "two").model.state_dict()
    for name, tensor in one.items():
        assert torch.allclose(tensor, two[name], atol=1e-5), name
    torch.manual_seed(0)  # the trainer's seed: a fresh model is where both runs started
    start = build_model(load_checkpoint(tmp_path / "one").config).state_dict()
    assert not torch.allclose(start["net.layers.0.mlp.down_proj.weight"], one["net.layers.0.mlp.down_proj.weight"])

"""Resuming from the saved training state continues the run bit for bit on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint
from training.config import load_preset
from training.data import sudoku
from training.data.dataset import PuzzleSet, load_split
from training.loop import Trainer
from training.state import ACT_FIELDS, load_state, save_state

BATCH, FIRST, THEN = 8, 3, 4  # 24 examples: 3 steps per epoch, so the resumed part crosses an epoch boundary


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def three_id_sudoku(tmp_path: Path) -> PuzzleSet:
    """4x4 Sudoku whose examples use three rows of the puzzle table, so sparse row updates are part of the state."""
    root = sudoku.build(tmp_path / "sudoku", 24, 8, (6, 10), seed=11, side=4, workers=1)
    data = load_split(root, "train", mmap=False)
    return PuzzleSet(data.inputs, data.labels, (np.asarray(data.groups) % 3).astype(np.int32), data.groups)


@pytest.mark.parametrize("optimizer", ["adam_atan2", "adamw"])
def test_resume_continues_bit_for_bit(tmp_path: Path, optimizer: str) -> None:
    preset = load_preset(
        "sudoku-4x4-tiny",
        [
            f"data.cache_dir={tmp_path / 'data'}",
            "train.threads=1",
            f"train.global_batch_size={BATCH}",
            "train.max_steps=20",
            f"train.optimizer={optimizer!r}",
            "model.num_puzzle_ids=3",
            "model.halt_exploration_prob=0.5",
        ],
    )
    data = three_id_sudoku(tmp_path)

    def trainer() -> Trainer:
        return Trainer(preset, data, None, tmp_path / "run", sudoku.augment_batch, torch.device("cpu"))

    straight = trainer()
    for _ in range(FIRST + THEN):
        straight.train_step()

    first = trainer()
    for _ in range(FIRST):
        first.train_step()
    assert not first.act.halted.any() and bool((first.act.steps == FIRST).all())  # every slot is mid-puzzle
    save_state(first, tmp_path / "state")
    resumed = trainer()
    load_state(resumed, tmp_path / "state")
    assert resumed.step == FIRST
    for _ in range(THEN):
        resumed.train_step()

    assert resumed.step == straight.step
    assert (resumed.stream.epoch, resumed.stream.offset) == (straight.stream.epoch, straight.stream.offset)
    want, got = straight.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert not torch.equal(want["puzzle_emb"][1], torch.zeros_like(want["puzzle_emb"][1]))  # the table did train
    assert straight.ema is not None and resumed.ema is not None
    for key, value in straight.ema.shadow.items():
        assert torch.equal(value, resumed.ema.shadow[key]), f"ema {key}"
    assert torch.equal(straight.act.carry.y, resumed.act.carry.y)
    assert torch.equal(straight.act.carry.z, resumed.act.carry.z)
    for name in ACT_FIELDS:
        assert torch.equal(getattr(straight.act, name), getattr(resumed.act, name)), name
    want_opt, got_opt = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert want_opt.keys() == got_opt.keys()
    for idx, entry in want_opt.items():
        for key, value in entry.items():
            other = got_opt[idx][key]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), f"optimizer {idx}/{key}"


def test_state_moves_between_compiled_and_eager_models(tmp_path: Path) -> None:
    """`torch.compile` renames parameters (`net._orig_mod.…`); the state file keeps plain names both ways."""
    preset = load_preset(
        "sudoku-4x4-tiny",
        [f"data.cache_dir={tmp_path / 'data'}", f"train.global_batch_size={BATCH}", "model.num_puzzle_ids=3"],
    )
    data = three_id_sudoku(tmp_path)

    def trainer(compiled: bool) -> Trainer:
        made = Trainer(preset, data, None, tmp_path / "run", sudoku.augment_batch, torch.device("cpu"))
        if compiled:
            made.model.compile_networks()  # type: ignore[operator]  # wraps lazily: nothing compiles until a call
        return made

    eager = trainer(compiled=False)
    for _ in range(2):
        eager.train_step()
    save_state(eager, tmp_path / "eager")
    compiled = trainer(compiled=True)
    assert any("_orig_mod." in k for k in compiled.model.state_dict())
    load_state(compiled, tmp_path / "eager")
    save_state(compiled, tmp_path / "compiled")
    back = trainer(compiled=False)
    load_state(back, tmp_path / "compiled")

    for moved in (compiled, back):
        got = {k.replace("_orig_mod.", ""): v for k, v in moved.model.state_dict().items()}
        assert got.keys() == eager.model.state_dict().keys()
        for key, value in eager.model.state_dict().items():
            assert torch.equal(value, got[key]), key
        assert eager.ema is not None and moved.ema is not None
        shadow = {k.replace("_orig_mod.", ""): v for k, v in moved.ema.shadow.items()}
        for key, value in eager.ema.shadow.items():
            assert torch.equal(value, shadow[key]), f"ema {key}"


def test_a_checkpoint_counts_the_steps_of_each_precision_across_sittings(tmp_path: Path) -> None:
    """`auto` resolves per machine, so a run resumed elsewhere may change precision; the checkpoint says how much
    of it ran in each, and a state saved before the count existed reports its steps as unrecorded."""
    data = three_id_sudoku(tmp_path)

    def trainer(dtype: str) -> Trainer:
        preset = load_preset(
            "sudoku-4x4-tiny",
            [
                f"data.cache_dir={tmp_path / 'data'}",
                f"train.global_batch_size={BATCH}",
                f"train.dtype={dtype!r}",
                "model.num_puzzle_ids=3",
            ],
        )
        return Trainer(preset, data, None, tmp_path / "run", sudoku.augment_batch, torch.device("cpu"))

    first = trainer("float32")
    for _ in range(FIRST):
        first.train_step()
    save_state(first, tmp_path / "state")
    second = trainer("bfloat16")
    load_state(second, tmp_path / "state")
    for _ in range(2):
        second.train_step()
    training = load_checkpoint(second.save_weights(tmp_path / "weights")).config.training
    assert training["dtype"] == "bfloat16"
    assert training["steps_by_dtype"] == {"float32": FIRST, "bfloat16": 2}

    meta = json.loads((tmp_path / "state" / "state.json").read_text())
    del meta["steps_by_dtype"]
    (tmp_path / "state" / "state.json").write_text(json.dumps(meta))
    legacy = trainer("float32")
    load_state(legacy, tmp_path / "state")
    legacy.train_step()
    assert legacy.steps_by_dtype == {"unrecorded": FIRST, "float32": 1}

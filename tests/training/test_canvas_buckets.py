"""Training a size-agnostic ARC model on tasks of every size: batches of one canvas each, slots restarted when the
canvas changes, a resumable stream, per-canvas evaluation, and a data cache that survives new DataConfig fields."""

from __future__ import annotations

import fcntl
import json
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import Preset, load_preset
from training.data.arc import build
from training.data.dataset import PuzzleSet, load_split
from training.data.sources import build_or_load
from training.loop import Trainer
from training.sampler import BatchStream
from training.scoring import evaluate_by_canvas, evaluate_model
from training.state import load_state, save_state

BATCH = 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _task(rng: np.random.Generator, side: int) -> dict[str, object]:
    def pair() -> dict[str, object]:
        grid = rng.integers(0, 10, (side, side - 1))
        return {"input": grid.tolist(), "output": (9 - grid).tolist()}

    return {"train": [pair() for _ in range(3)], "test": [pair()]}


@pytest.fixture
def arc_sets(tmp_path: Path) -> tuple[Path, PuzzleSet, PuzzleSet]:
    """Tasks of sides 4..20 on canvases 8, 16 and 24: three buckets."""
    rng = np.random.default_rng(0)
    (tmp_path / "src" / "training").mkdir(parents=True)
    for i, side in enumerate([4, 5, 6, 9, 10, 14, 17, 20]):
        (tmp_path / "src" / "training" / f"t{i:07d}.json").write_text(json.dumps(_task(rng, side)))
    root = build(tmp_path / "ds", source=str(tmp_path / "src"), num_aug=3, test_set="training", canvas=8, seed=1)
    return root, load_split(root, "train", mmap=False), load_split(root, "test", mmap=False)


def tiny_arc(tmp_path: Path, num_ids: int, *overrides: str) -> Preset:
    return load_preset(
        "arc-any-cpu",
        [
            f"data.cache_dir={tmp_path / 'cache'}",
            "model.seq_len=64",
            "model.hidden_size=16",
            "model.num_heads=2",
            "model.h_cycles=1",
            "model.l_cycles=1",
            f"model.num_puzzle_ids={num_ids}",
            "model.halt_exploration_prob=0.5",
            f"train.global_batch_size={BATCH}",
            "train.threads=1",
            *overrides,
        ],
    )


def test_every_batch_holds_one_canvas_and_the_stream_resumes(arc_sets: tuple[Path, PuzzleSet, PuzzleSet]) -> None:
    _, train, _ = arc_sets
    canvases = np.asarray(train.extras["canvas"])
    assert set(canvases.tolist()) == {8, 16, 24}
    stream = BatchStream(train, BATCH, seed=3, bucket_run=2)
    seen = []
    for _ in range(12):
        batch = stream.next()
        side = int(np.sqrt(batch.inputs.shape[1]))
        assert side in (8, 16, 24) and batch.labels.shape == batch.inputs.shape
        seen.append(side)
    assert len(set(seen)) == 3
    resumed = BatchStream(train, BATCH, seed=3, bucket_run=2, epoch=stream.epoch, offset=stream.offset)
    for _ in range(5):
        a, b = stream.next(), resumed.next()
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.puzzle_ids, b.puzzle_ids)


def test_slots_restart_on_a_new_canvas_and_a_resumed_run_matches(
    arc_sets: tuple[Path, PuzzleSet, PuzzleSet], tmp_path: Path
) -> None:
    root, train, test = arc_sets
    num_ids = int(json.loads((root / "meta.json").read_text())["num_puzzle_ids"])
    preset = tiny_arc(tmp_path, num_ids, "train.bucket_run=1")  # a canvas change at nearly every step

    def trainer() -> Trainer:
        return Trainer(preset, train, test, tmp_path / "run", None, torch.device("cpu"))

    straight = trainer()
    lengths = []
    for _ in range(8):
        before = straight.act.inputs.shape[1]
        straight.train_step()
        after = straight.act.inputs.shape[1]
        lengths.append(after)
        if after != before:  # a new canvas: every slot started its puzzle at this step
            assert bool((straight.act.steps == 1).all())
    assert len(set(lengths)) > 1

    # The state leaves the slots out (they restart at every canvas change anyway): a resumed run equals a straight
    # one whose slots were restarted at the save.
    restarted, first = trainer(), trainer()
    for _ in range(5):
        restarted.train_step()
        first.train_step()
    save_state(first, tmp_path / "state")
    assert not any(key.startswith("act/") for key in safe_open_keys(tmp_path / "state" / "tensors.safetensors"))
    restarted.act = restarted.fresh_act_state()
    resumed = trainer()
    load_state(resumed, tmp_path / "state")
    assert bool(resumed.act.halted.all())
    for _ in range(3):
        restarted.train_step()
        resumed.train_step()
    for key, value in restarted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert torch.equal(restarted.act.carry.y, resumed.act.carry.y)

    result = straight.evaluate()
    assert set(result["exact_by_canvas"]) == {"8", "16", "24"} and result["puzzles"] == len(test)


def safe_open_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_evaluation_by_canvas_weighs_each_canvas_by_its_puzzles(
    arc_sets: tuple[Path, PuzzleSet, PuzzleSet], tmp_path: Path
) -> None:
    root, train, test = arc_sets
    preset = tiny_arc(tmp_path, int(json.loads((root / "meta.json").read_text())["num_puzzle_ids"]))
    model = Trainer(preset, train, test, tmp_path / "run", None, torch.device("cpu")).ema_model()
    result = evaluate_by_canvas(model, test)
    from training.data.dataset import by_canvas

    parts = [evaluate_model(model, part) for _, part in by_canvas(test)]
    cells = sum(p["cell_accuracy"] * p["puzzles"] for p in parts) / len(test)
    assert result["cell_accuracy"] == pytest.approx(cells)
    assert len(evaluate_by_canvas(model, test, limit=5)["exact_by_canvas"]) >= 1
    assert evaluate_by_canvas(model, test, limit=5)["puzzles"] == 5


def test_a_cache_built_before_a_field_was_added_or_renamed_is_not_rebuilt(tmp_path: Path) -> None:
    preset = load_preset("sudoku-4x4-tiny", [f"data.cache_dir={tmp_path / 'cache'}", "data.n_train=16"])
    build_or_load(preset)
    stamp = tmp_path / "cache" / "data_config.json"
    old = json.loads(stamp.read_text())
    del old["min_canvas"]  # as written before the field existed
    old["arc_canvas"] = 0  # a field since renamed
    stamp.write_text(json.dumps(old))
    marker = tmp_path / "cache" / "train" / "inputs.npy"
    mtime = marker.stat().st_mtime_ns
    build_or_load(preset)
    assert marker.stat().st_mtime_ns == mtime
    changed = load_preset("sudoku-4x4-tiny", [f"data.cache_dir={tmp_path / 'cache'}", "data.n_train=24"])
    assert asdict(changed.data)["n_train"] == 24
    build_or_load(changed)  # a real change still rebuilds
    assert marker.stat().st_mtime_ns != mtime


def test_a_run_waits_while_another_builds_the_same_dataset(tmp_path: Path) -> None:
    """Two runs of one preset started together must not build into one directory at once (one read the other's
    half-written arrays); the later one waits for the lock the builder holds, then loads the finished set."""
    preset = load_preset("sudoku-4x4-tiny", [f"data.cache_dir={tmp_path / 'cache'}", "data.n_train=16"])
    loaded: list[int] = []
    with open(tmp_path / ".cache.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiter = threading.Thread(target=lambda: loaded.append(len(build_or_load(preset)[1])))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not (tmp_path / "cache" / "data_config.json").exists()
    waiter.join(timeout=60)
    assert loaded == [16] and (tmp_path / "cache" / "data_config.json").is_file()


def test_the_preset_sets_how_many_batches_of_one_canvas_come_in_a_row(
    arc_sets: tuple[Path, PuzzleSet, PuzzleSet], tmp_path: Path
) -> None:
    root, train, test = arc_sets
    num_ids = int(json.loads((root / "meta.json").read_text())["num_puzzle_ids"])
    made = Trainer(tiny_arc(tmp_path, num_ids, "train.bucket_run=3"), train, test, tmp_path / "run", None)
    assert made.stream.bucket_run == 3  # how the runs are cut: test_every_batch_holds_one_canvas_and_the_stream_resumes

"""The deep-supervision training loop: one step by hand, ACT slot bookkeeping, a tiny real run, the batch stream."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint
from training import loop, run
from training.config import Preset, load_preset
from training.data import sudoku
from training.data.dataset import PuzzleSet, load_split
from training.loop import Trainer
from training.losses import act_loss
from training.metrics import MetricsLog, curves
from training.sampler import Batch, BatchStream
from training.state import load_state, save_state

BATCH = 8


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny_preset(tmp_path: Path, *overrides: str) -> Preset:
    return load_preset(
        "sudoku-4x4-tiny",
        [f"data.cache_dir={tmp_path / 'data'}", "train.threads=1", f"train.global_batch_size={BATCH}", *overrides],
    )


def sudoku_4x4(tmp_path: Path, n_train: int = 32) -> PuzzleSet:
    root = sudoku.build(tmp_path / "sudoku", n_train, 8, (6, 10), seed=3, side=4, workers=1)
    return load_split(root, "train", mmap=False)


def tensors(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(batch.inputs).long(),
        torch.as_tensor(batch.labels).long(),
        torch.as_tensor(batch.puzzle_ids).long(),
    )


def test_one_training_step_matches_hand_computed_loss_and_update(tmp_path: Path) -> None:
    preset = tiny_preset(tmp_path)
    cfg = preset.train
    train = sudoku_4x4(tmp_path)
    trainer = Trainer(preset, train, None, tmp_path / "run", device=torch.device("cpu"))
    model = copy.deepcopy(trainer.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # By hand: every slot starts halted, so the first global batch is what the model sees, from the initial state.
    inputs, labels, ids = tensors(BatchStream(train, BATCH, cfg.seed).next())
    vectors = model.puzzle_emb[ids].clone().requires_grad_(True)
    out = model.step(model.initial_carry(BATCH), inputs, puzzle_vectors=vectors)
    loss = act_loss(out.logits, labels, out.q_halt)
    (loss.total / BATCH).backward()

    stats = trainer.train_step()

    assert stats["lm_loss"] == pytest.approx(loss.lm.item() / BATCH, rel=1e-6)
    assert stats["q_halt_loss"] == pytest.approx(loss.q_halt.item() / BATCH, rel=1e-6)
    # As in the reference, the step is counted before it is scheduled: the first one runs at lr / warmup.
    lr = cfg.lr / cfg.lr_warmup_steps
    assert stats["lr"] == pytest.approx(lr)
    # First Adam-atan2 step: m = (1-b1) g, sqrt(v / bc2) = |g|, so p <- p (1 - lr wd) - lr/(1-b1) atan2((1-b1) g, |g|).
    for name, p in trainer.model.named_parameters():
        g = dict(model.named_parameters())[name].grad
        assert g is not None, name
        expected = before[name] * (1 - lr * cfg.weight_decay) - lr / (1 - cfg.beta1) * torch.atan2(
            (1 - cfg.beta1) * g, g.abs()
        )
        assert torch.allclose(p.detach(), expected, rtol=0, atol=1e-7), name
    # The shared puzzle row takes one sign-SGD step on the summed gradient of the whole batch.
    emb_lr = cfg.puzzle_emb_lr / cfg.lr_warmup_steps
    assert vectors.grad is not None
    assert torch.allclose(trainer.model.puzzle_emb[0], -emb_lr * torch.sign(vectors.grad.sum(0)), atol=1e-9)


def test_a_non_finite_step_updates_nothing_and_a_run_of_them_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(tiny_preset(tmp_path), sudoku_4x4(tmp_path), None, tmp_path / "run", device=torch.device("cpu"))
    trainer.train_step()
    trainer.train_step()  # mid-way through the slots' supervision steps: their carry is not fresh
    weights = {n: p.detach().clone() for n, p in trainer.model.state_dict().items()}
    assert trainer.ema is not None
    ema = {n: t.clone() for n, t in trainer.ema.shadow.items()}

    real_step = trainer.step_fn

    def poisoned(*args: object, **kwargs: object) -> object:
        out = real_step(*args, **kwargs)  # type: ignore[operator]
        return out._replace(logits=out.logits * float("nan"))

    monkeypatch.setattr(trainer, "step_fn", poisoned)
    trainer.train_step()
    assert all(torch.equal(weights[n], t) for n, t in trainer.model.state_dict().items())  # table included
    assert all(torch.equal(ema[n], t) for n, t in trainer.ema.shadow.items())
    assert trainer.act.halted.all()  # every slot restarts from a fresh carry
    assert (trainer.skipped_steps, trainer.bad_steps, trainer.step) == (1, 1, 3)

    monkeypatch.setattr(trainer, "step_fn", real_step)
    trainer.train_step()
    assert trainer.bad_steps == 0 and not torch.equal(weights["lm_head.weight"], trainer.model.lm_head.weight)

    monkeypatch.setattr(trainer, "step_fn", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite steps in a row"):
        for _ in range(100):
            trainer.train_step()
    assert trainer.bad_steps == loop.MAX_BAD_STEPS


def test_compiling_on_a_cpu_without_a_compiler_fails_up_front_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ here
    with pytest.raises(RuntimeError, match=r"no g\+\+ on PATH.*--set train.compile=off"):
        Trainer(
            tiny_preset(tmp_path, "train.compile=on"), sudoku_4x4(tmp_path), None, tmp_path, device=torch.device("cpu")
        )


def test_running_slots_keep_their_puzzle_until_the_step_limit(tmp_path: Path) -> None:
    preset = tiny_preset(tmp_path)
    train = sudoku_4x4(tmp_path)
    trainer = Trainer(preset, train, None, tmp_path / "run", device=torch.device("cpu"))
    assert trainer.model.q_head.bias[0].item() == -5.0  # "continue" everywhere: only the step limit halts
    limit = preset.model.halt_max_steps
    mirror = BatchStream(train, BATCH, preset.train.seed)

    batches = [tensors(mirror.next()) for _ in range(2 * limit + 1)]
    for k in range(2 * limit + 1):
        trainer.train_step()
        act = trainer.act
        first = batches[(k // limit) * limit]  # the rows taken when the slots were last refilled
        assert torch.equal(act.inputs, first[0]) and torch.equal(act.labels, first[1]), f"step {k + 1}"
        assert torch.equal(act.puzzle_ids, first[2])
        assert act.steps.tolist() == [k % limit + 1] * BATCH
        assert act.halted.tolist() == [k % limit + 1 == limit] * BATCH
    # The carry persists between optimizer steps: it is not the initial state for a running slot.
    assert not torch.equal(act.carry.y, trainer.model.initial_carry(BATCH).y)


def test_halted_slots_are_refilled_and_running_slots_keep_their_puzzle(tmp_path: Path) -> None:
    # Q head says "halt" everywhere, exploration always draws a minimum step: slots halt at different times.
    preset = tiny_preset(tmp_path, "model.halt_exploration_prob=1.0")
    train = sudoku_4x4(tmp_path)
    trainer = Trainer(preset, train, None, tmp_path / "run", device=torch.device("cpu"))
    with torch.no_grad():
        trainer.model.q_head.bias.fill_(5.0)
    mirror = BatchStream(train, BATCH, preset.train.seed)
    seen_refill = seen_keep = 0
    prev = trainer.act
    for k in range(10):
        new_inputs, new_labels, new_ids = tensors(mirror.next())
        trainer.train_step()
        act = trainer.act
        for i in range(BATCH):
            if prev.halted[i]:
                seen_refill += 1
                assert torch.equal(act.inputs[i], new_inputs[i]), (k, i)
                assert torch.equal(act.labels[i], new_labels[i]) and act.puzzle_ids[i] == new_ids[i]
                assert act.steps[i] == 1
            else:
                seen_keep += 1
                assert torch.equal(act.inputs[i], prev.inputs[i]), (k, i)
                assert torch.equal(act.labels[i], prev.labels[i]) and act.puzzle_ids[i] == prev.puzzle_ids[i]
                assert act.steps[i] == prev.steps[i] + 1
            assert act.steps[i] >= 2 or not act.halted[i]  # exploration's minimum is at least 2
        prev = act
    assert seen_refill > BATCH and seen_keep > BATCH


def test_tiny_run_learns_and_writes_metrics_plot_and_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "weights"
    code = run.main(
        [
            "--preset",
            "sudoku-4x4-tiny",
            "--set",
            f"data.cache_dir={tmp_path / 'data'}",
            "--set",
            "train.threads=1",
            "--set",
            "train.max_steps=150",
            "--set",
            "train.eval_every_steps=150",
            "--run-dir",
            str(run_dir),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--log-every",
            "25",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 150 and summary["preset"] == "sudoku-4x4-tiny"

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [25, 50, 75, 100, 125, 150]
    assert all(math.isfinite(r["lm_loss"]) for r in train)
    assert train[-1]["lm_loss"] < 0.7 * train[0]["lm_loss"]
    assert train[-1]["accuracy"] > train[0]["accuracy"] + 0.2
    assert len(evals) == 1 and evals[0]["step"] == 150 and evals[0]["puzzles"] == 64
    assert evals[0]["cell_accuracy"] > 0.6  # copying the givens alone scores about half the cells
    assert (run_dir / "metrics.png").stat().st_size > 0
    assert (run_dir / "state" / "state.json").is_file()

    ckpt = load_checkpoint(run_dir / "checkpoint")
    assert ckpt.config.seq_len == 16 and ckpt.config.family == "sudoku"
    assert ckpt.config.training["preset"] == "sudoku-4x4-tiny"
    assert ckpt.config.training["dtype"] == "float32"  # the tiny preset pins it; `auto` would depend on the CPU
    copied = load_checkpoint(out)
    assert copied.sha256 == ckpt.sha256
    assert (out / "training_curves.png").stat().st_size > 0


def grouped_set(variants_per_group: list[int]) -> PuzzleSet:
    """One example per variant; puzzle ids are unique per variant and the input's first token names it."""
    groups = np.repeat(np.arange(len(variants_per_group)), variants_per_group)
    ids = np.arange(len(groups))
    inputs = np.zeros((len(groups), 4), dtype=np.uint8)
    inputs[:, 0] = ids
    return PuzzleSet(inputs, inputs + 1, ids.astype(np.int32), groups.astype(np.int32))


def jitter(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return inputs + rng.integers(0, 3, size=inputs.shape, dtype=np.uint8), labels


def test_batch_stream_is_deterministic_given_seed_epoch_and_offset() -> None:
    data = grouped_set([1 + g % 3 for g in range(12)])
    a = BatchStream(data, 4, seed=5, augment=jitter)
    b = BatchStream(data, 4, seed=5, augment=jitter)
    seq_a = [a.next() for _ in range(9)]
    seq_b = [b.next() for _ in range(9)]
    for x, y in zip(seq_a, seq_b, strict=True):
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.labels, y.labels)
        assert np.array_equal(x.puzzle_ids, y.puzzle_ids)
    # A stream started at (epoch 1, offset 4) continues exactly where the first one was: its 5th batch.
    resumed = BatchStream(data, 4, seed=5, augment=jitter, epoch=1, offset=4)
    for expected in seq_a[4:]:
        got = resumed.next()
        assert np.array_equal(got.inputs, expected.inputs) and np.array_equal(got.puzzle_ids, expected.puzzle_ids)
    other = BatchStream(data, 4, seed=6, augment=jitter)
    assert any(not np.array_equal(other.next().puzzle_ids, x.puzzle_ids) for x in seq_a[:3])


def test_batch_stream_visits_every_group_once_per_epoch() -> None:
    variants = [1 + g % 3 for g in range(12)]
    data = grouped_set(variants)
    group_of = np.asarray(data.groups)
    stream = BatchStream(data, 4, seed=0)
    assert stream.examples_per_epoch() == 12
    seen_variants: set[int] = set()
    for epoch in range(20):
        groups = []
        for _ in range(3):
            batch = stream.next()
            groups += group_of[batch.puzzle_ids].tolist()
            seen_variants.update(batch.puzzle_ids.tolist())
            assert stream.epoch == epoch
        assert sorted(groups) == list(range(12)), f"epoch {epoch}"
    assert seen_variants == set(range(len(group_of)))  # each group's variants are all drawn over time


def test_batch_stream_drops_the_last_partial_batch_of_an_epoch() -> None:
    data = grouped_set([1] * 12)
    stream = BatchStream(data, 5, seed=0)
    first = [stream.next() for _ in range(2)]
    assert stream.epoch == 0
    third = stream.next()
    assert stream.epoch == 1 and stream.offset == 5
    assert len(set(np.concatenate([b.puzzle_ids for b in first]).tolist())) == 10
    assert len(set(third.puzzle_ids.tolist())) == 5


def test_plot_draws_per_side_curves_of_mixed_size_evaluations(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.write({"kind": "train", "step": 1, "lm_loss": 1.0, "accuracy": 0.5})
    for step, (small, large) in ((100, (0.2, 0.0)), (200, (0.6, 0.1))):
        by_side = {"9": small, "15": large}
        log.write({"kind": "eval", "step": step, "exact_accuracy": (small + large) / 2, "exact_by_side": by_side})
    panels = {title: lines for title, _, lines in curves(log.records())}
    assert panels["eval accuracy"]["exact 9x9"] == ([100, 200], [0.2, 0.6])
    assert panels["eval accuracy"]["exact 15x15"] == ([100, 200], [0.0, 0.1])
    assert panels["eval accuracy"]["exact_accuracy"] == ([100, 200], [0.1, 0.35])
    assert panels["loss"] == {"lm_loss": ([1], [1.0])}
    log.plot()
    assert log.plot_path.stat().st_size > 0


def test_a_resumed_log_drops_the_lines_after_the_saved_step_and_a_fresh_one_starts_empty(tmp_path: Path) -> None:
    first = MetricsLog(tmp_path)
    for step in (25, 50, 75):  # saved at 50; 75 was logged before the run stopped
        first.write({"kind": "train", "step": step, "lm_loss": 1.0 / step})
    first.write({"kind": "eval", "step": 50, "exact_accuracy": 0.5})
    resumed = MetricsLog(tmp_path, resume_step=50)
    assert [(r["kind"], r["step"]) for r in resumed.records()] == [("train", 25), ("train", 50), ("eval", 50)]
    resumed.write({"kind": "train", "step": 75, "lm_loss": 0.01})
    assert [r["step"] for r in resumed.records() if r["kind"] == "train"] == [25, 50, 75]
    assert MetricsLog(tmp_path).records() == []


def test_bf16_autocast_steps_update_the_weights(tmp_path: Path) -> None:
    # The GPU default; on a CPU with AMX it is also twice as fast as fp32 (benchmarks.train).
    preset = tiny_preset(tmp_path, "train.dtype=bfloat16")
    trainer = Trainer(preset, sudoku_4x4(tmp_path), None, tmp_path / "run", device=torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    losses = [trainer.train_step()["lm_loss"] for _ in range(6)]
    assert trainer.bad_steps == 0 and all(math.isfinite(v) for v in losses)
    for name, p in trainer.model.named_parameters():
        if p.requires_grad and name != "q_head.weight":  # the Q head's weight starts at 0 and may stay tiny
            assert p.dtype == torch.float32 and not torch.equal(p, before[name]), name


def test_init_from_starts_at_a_checkpoints_weights_and_records_it(tmp_path: Path) -> None:
    train = sudoku_4x4(tmp_path)
    first = Trainer(tiny_preset(tmp_path, "train.seed=1"), train, None, tmp_path / "a", device=torch.device("cpu"))
    for _ in range(3):
        first.train_step()
    source = first.save_weights(tmp_path / "stage1")

    second = Trainer(
        tiny_preset(tmp_path, f"train.init_from={source}"), train, None, tmp_path / "b", device=torch.device("cpu")
    )
    saved = load_checkpoint(source)
    for name, tensor in saved.model.state_dict().items():  # the EMA copy that was saved, not the seed-0 init
        assert torch.equal(second.model.state_dict()[name], tensor), name
    assert second.optimizer.state_dict()["state"] == {}  # a new stage: fresh moments
    record = load_checkpoint(second.save_weights(tmp_path / "stage2")).config.training["init_from"]
    assert record == {"path": str(source), "sha256": saved.sha256}


def test_a_resumed_stage_keeps_its_init_record_after_the_starting_checkpoint_is_gone(tmp_path: Path) -> None:
    """A second stage often ships over the weights it started from; resuming must not need them again."""
    train = sudoku_4x4(tmp_path)
    first = Trainer(tiny_preset(tmp_path), train, None, tmp_path / "a", device=torch.device("cpu"))
    source = first.save_weights(tmp_path / "stage1")
    sha = load_checkpoint(source).sha256
    preset = tiny_preset(tmp_path, f"train.init_from={source}")
    second = Trainer(preset, train, None, tmp_path / "b", device=torch.device("cpu"))
    second.train_step()
    save_state(second, tmp_path / "b" / "state")
    shutil.rmtree(source)

    resumed = Trainer(preset, train, None, tmp_path / "b", device=torch.device("cpu"), resuming=True)
    load_state(resumed, tmp_path / "b" / "state")
    for name, tensor in second.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    record = load_checkpoint(resumed.save_weights(tmp_path / "stage2")).config.training["init_from"]
    assert record == {"path": str(source), "sha256": sha}


def test_init_from_a_checkpoint_of_another_architecture_names_the_file_and_the_difference(tmp_path: Path) -> None:
    train = sudoku_4x4(tmp_path)
    other = Trainer(tiny_preset(tmp_path, "model.l_cycles=1"), train, None, tmp_path / "a", device=torch.device("cpu"))
    source = other.save_weights(tmp_path / "shallow")  # same tensor shapes, another recursion
    with pytest.raises(CheckpointError, match=r"shallow.*l_cycles: 1 there"):
        Trainer(
            tiny_preset(tmp_path, f"train.init_from={source}"), train, None, tmp_path / "b", device=torch.device("cpu")
        )


def test_a_stage_may_train_a_checkpoint_with_a_longer_act_horizon(tmp_path: Path) -> None:
    """The horizon schedules the ACT loop; the weights and what one step computes are the same."""
    train = sudoku_4x4(tmp_path)
    first = Trainer(tiny_preset(tmp_path), train, None, tmp_path / "a", device=torch.device("cpu"))
    source = first.save_weights(tmp_path / "stage1")
    preset = tiny_preset(tmp_path, f"train.init_from={source}", "model.halt_max_steps=9")
    second = Trainer(preset, train, None, tmp_path / "b", device=torch.device("cpu"))
    for name, tensor in load_checkpoint(source).model.state_dict().items():
        assert torch.equal(second.model.state_dict()[name], tensor), name
    for _ in range(6):  # past the first stage's horizon of 4: no slot is forced to halt there
        second.train_step()
    assert int(second.act.steps.max()) > first.config.halt_max_steps
    assert load_checkpoint(second.save_weights(tmp_path / "stage2")).config.halt_max_steps == 9


def test_a_time_limit_ends_the_run_early_evaluated_and_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "weights"
    argv = ["--preset", "sudoku-4x4-tiny", "--set", f"data.cache_dir={tmp_path / 'data'}", "--set", "train.threads=1"]
    argv += ["--set", "train.max_steps=1000000", "--set", "train.eval_every_steps=1000000", "--time-limit", "1"]
    argv += ["--run-dir", str(run_dir), "--out", str(out), "--device", "cpu", "--no-progress"]
    assert run.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < summary["steps"] < 1_000_000
    assert summary["puzzles"] == 64  # the final evaluation ran
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [summary["steps"]]
    assert load_checkpoint(out).config.training["preset"] == "sudoku-4x4-tiny"
    assert json.loads((run_dir / "state" / "state.json").read_text())["step"] == summary["steps"]


def test_stop_at_ends_the_run_at_that_step_on_the_full_runs_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped at its best step is reproduced by `--stop-at`: same steps, same learning rates as the
    uninterrupted run up to there, evaluated and saved at the stop."""

    def train(name: str, *extra: str) -> tuple[dict[str, object], list[dict[str, object]]]:
        run_dir = tmp_path / name
        argv = ["--preset", "sudoku-4x4-tiny", "--set", f"data.cache_dir={tmp_path / 'data'}"]
        argv += ["--set", "train.threads=1", "--set", "train.max_steps=8", "--set", "train.eval_every_steps=100"]
        argv += ["--set", "train.lr_warmup_steps=2", "--log-every", "1", "--run-dir", str(run_dir)]
        argv += ["--device", "cpu", "--no-progress", *extra]
        assert run.main(argv) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return summary, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    full_summary, full = train("full")
    stopped_summary, stopped = train("stopped", "--stop-at", "3", "--out", str(tmp_path / "weights"))
    assert (full_summary["steps"], stopped_summary["steps"]) == (8, 3)
    lrs = {r["step"]: r["lr"] for r in full if r["kind"] == "train"}
    assert [(r["step"], r["lr"]) for r in stopped if r["kind"] == "train"] == [(s, lrs[s]) for s in (1, 2, 3)]
    assert [r["step"] for r in stopped if r["kind"] == "eval"] == [3]
    assert json.loads((tmp_path / "stopped" / "state" / "state.json").read_text())["step"] == 3
    assert load_checkpoint(tmp_path / "weights").config.training["preset"] == "sudoku-4x4-tiny"

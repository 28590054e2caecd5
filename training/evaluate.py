"""Evaluate a checkpoint on held-out puzzles, with adaptive halting and with a fixed number of steps.

    python -m training.evaluate --weights weights/sudoku-9x9 --data generate:sudoku:1000:30:40 [--halt adaptive]

One pass runs every puzzle for `--max-steps` steps (default: the horizon the card's threshold was calibrated
over, else the checkpoint's `halt_max_steps`, as the server does; the reference evaluates at 16) and records, per
puzzle, the answer at the first step whose halting probability reaches the threshold (adaptive; the checkpoint's
calibrated one from `training.calibrate`, else 0.5) and the answer after the last step (`never`), so both figures
come from the same computation. The last line of stdout is JSON.

`--views K` also runs each Sudoku or maze under the first K of the square's 8 symmetries (a rotated or mirrored
puzzle is still a puzzle of the same kind, and training saw all 8), maps every answer back and takes the one most
views agree on, ties broken by the mean halting probability: the reference's ARC voting applied to one puzzle.
It costs K times the steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.device import resolve_device
from model.precision import autocast, dtype_name, resolve_dtype
from model.puzzles.augment import vote
from model.puzzles.dihedral import DIHEDRAL_INVERSE, NUM_DIHEDRAL, dihedral_rows
from training.data.dataset import PuzzleSet

log = logging.getLogger(__name__)


@torch.inference_mode()
def run_steps(
    model: nn.Module,
    inputs: torch.Tensor,
    puzzle_ids: torch.Tensor,
    max_steps: int,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (step, predicted tokens, halting logit) for steps 1..max_steps of a fresh batch."""
    # A `conv` model steps grids of any size, so its carry is sized from the inputs; other models know one size.
    tokens = inputs[0].numel()
    sized = {} if tokens == model.config.seq_len else {"num_tokens": tokens}  # type: ignore[union-attr]
    carry = model.initial_carry(inputs.shape[0], inputs.device, **sized)  # type: ignore[operator]
    for step in range(1, max_steps + 1):
        with autocast(inputs.device, dtype):
            out = model.step(carry, inputs, puzzle_ids)  # type: ignore[operator]
        carry = out.carry
        yield step, out.logits.argmax(-1), model.halting_logit(out.q_halt, out.q_continue).float()  # type: ignore[operator]


def evaluate_model(
    model: nn.Module,
    data: PuzzleSet,
    batch_size: int = 256,
    device: torch.device | None = None,
    max_steps: int | None = None,
    dtype: torch.dtype = torch.float32,
    limit: int = 0,
    progress: bool = False,
    keep_predictions: bool = False,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Exact and per-cell accuracy after `max_steps` (halt never) and at the adaptive halting step."""
    device = device or next(model.parameters()).device
    max_steps = max_steps or model.config.halt_max_steps  # type: ignore[union-attr]
    n = min(len(data), limit) if limit else len(data)
    sums = {"exact": 0, "cells": 0, "cells_total": 0, "ad_exact": 0, "ad_cells": 0, "steps": 0}
    preds_never, preds_adaptive, q_adaptive, q_never, exact_rows = [], [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=n, desc="eval", unit="puzzle", disable=not progress, leave=False, file=sys.stderr)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        inputs, labels, ids = data.tensors(lo, hi, device)
        b = hi - lo
        halted_at = torch.zeros(b, dtype=torch.long, device=device)
        adaptive = torch.zeros_like(labels)
        q_at = torch.zeros(b, device=device)
        pred, q_halt = adaptive, q_at
        for step, pred, q_halt in run_steps(model, inputs, ids, max_steps, dtype):
            newly = (halted_at == 0) & ((torch.sigmoid(q_halt) >= threshold) | (step == max_steps))
            adaptive[newly] = pred[newly]
            q_at[newly] = torch.sigmoid(q_halt[newly])
            halted_at[newly] = step
        valid = labels != 0
        for key, p in (("", pred), ("ad_", adaptive)):
            right = ((p == labels) & valid).sum(-1)
            exact = right == valid.sum(-1)
            sums[key + "exact"] += int(exact.sum())
            sums[key + "cells"] += int(right.sum())
            if not key:
                exact_rows.append(exact.cpu().numpy())
        sums["cells_total"] += int(valid.sum())
        sums["steps"] += int(halted_at.sum())
        if keep_predictions:
            preds_never.append(pred.cpu().numpy())
            preds_adaptive.append(adaptive.cpu().numpy())
            q_adaptive.append(q_at.cpu().numpy())
            q_never.append(torch.sigmoid(q_halt).cpu().numpy())
        bar.update(b)
    bar.close()
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {
        "puzzles": n,
        "exact_accuracy": sums["exact"] / max(1, n),
        "cell_accuracy": sums["cells"] / max(1, sums["cells_total"]),
        "adaptive_exact_accuracy": sums["ad_exact"] / max(1, n),
        "adaptive_cell_accuracy": sums["ad_cells"] / max(1, sums["cells_total"]),
        "mean_steps": sums["steps"] / max(1, n),
        "max_steps": max_steps,
        "halt_threshold": threshold,
        "seconds": round(elapsed, 2),
    }
    sides = np.asarray(data.extras["side"][:n]) if "side" in data.extras else np.zeros(0)
    if len(np.unique(sides)) > 1:  # a mixed-size maze set: the headline alone would hide the hardest size
        right_rows = np.concatenate(exact_rows)
        result["exact_by_side"] = {str(v): float(right_rows[sides == v].mean()) for v in np.unique(sides)}
    if keep_predictions:
        result["predictions"] = np.concatenate(preds_never) if preds_never else np.zeros((0, 0))
        result["adaptive_predictions"] = np.concatenate(preds_adaptive) if preds_adaptive else np.zeros((0, 0))
        result["adaptive_q"] = np.concatenate(q_adaptive) if q_adaptive else np.zeros(0)
        result["q"] = np.concatenate(q_never) if q_never else np.zeros(0)  # halting probability after the last step
    return result


def turned_set(data: PuzzleSet, tid: int) -> PuzzleSet:
    """The same puzzles (and labels) under dihedral symmetry `tid` of the square."""
    n = len(data)
    inputs, labels = np.asarray(data.inputs), np.asarray(data.labels)
    rows = dihedral_rows(inputs, np.full(n, tid)), dihedral_rows(labels, np.full(n, tid))
    return PuzzleSet(*rows, data.puzzle_ids, data.groups, data.extras)


def turn_back(answers: np.ndarray, tid: int) -> np.ndarray:
    """Answers [..., N, L] given under symmetry `tid`, in the puzzles' own orientation."""
    flat = answers.reshape(-1, answers.shape[-1])
    return dihedral_rows(flat, np.full(len(flat), DIHEDRAL_INVERSE[tid])).reshape(answers.shape)


def vote_views(answers: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per puzzle, the answer most views gave, ties broken by mean halting probability.

    `answers` [V, N, L] are already mapped back to the puzzle's own orientation, `probs` [V, N] their sigmoid(q_halt).
    """
    views, n, length = answers.shape
    voted = np.empty((n, length), dtype=answers.dtype)
    for i in range(n):
        voted[i] = vote([(answers[v, i], float(probs[v, i])) for v in range(views)])[0]
    return voted


def evaluate_views(
    model: nn.Module,
    data: PuzzleSet,
    views: int,
    halt: str = "adaptive",
    limit: int = 0,
    keep_predictions: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate under the first `views` dihedral symmetries and vote (see the module docstring).

    Returns the voted figures, the per-view exact accuracies and the plain (identity view) result under
    "single_view"; `mean_steps` counts the steps of all views, which is what the answer costs.
    """
    if not 1 <= views <= NUM_DIHEDRAL:
        raise ValueError(f"views must be 1..{NUM_DIHEDRAL}, got {views}")
    start = time.perf_counter()
    n = min(len(data), limit) if limit else len(data)
    data = data.subset(np.arange(n))
    labels = np.asarray(data.labels)
    key = ("adaptive_predictions", "adaptive_q") if halt == "adaptive" else ("predictions", "q")
    answers, probs, per_view, steps = [], [], [], 0.0
    single: dict[str, Any] = {}
    for tid in range(views):
        result = evaluate_model(model, turned_set(data, tid), keep_predictions=True, **kwargs)
        answers.append(turn_back(result[key[0]], tid))
        probs.append(result[key[1]])
        per_view.append(result["adaptive_exact_accuracy"] if halt == "adaptive" else result["exact_accuracy"])
        steps += result["mean_steps"] if halt == "adaptive" else result["max_steps"]
        single = single or headline(result, halt)
    voted = vote_views(np.stack(answers), np.stack(probs))
    valid = labels != 0
    right = ((voted == labels) & valid).sum(-1)
    exact = right == valid.sum(-1)
    out: dict[str, Any] = {
        "halt": halt,
        "views": views,
        "exact_accuracy": float(exact.mean()) if n else 0.0,
        "cell_accuracy": float(right.sum() / max(1, valid.sum())),
        "mean_steps": steps,
        "exact_by_view": per_view,
        "single_view": {k: v for k, v in single.items() if k not in ("puzzles", "seconds")},
        "puzzles": n,
        "seconds": round(time.perf_counter() - start, 2),
    }
    sides = np.asarray(data.extras["side"]) if "side" in data.extras else np.zeros(0)
    if len(np.unique(sides)) > 1:
        out["exact_by_side"] = {str(v): float(exact[sides == v].mean()) for v in np.unique(sides)}
    if keep_predictions:
        out["predictions"] = voted
    return out


def headline(result: dict[str, Any], halt: str) -> dict[str, Any]:
    """The summary line: `exact_accuracy` etc. refer to the chosen halting mode, the other mode alongside."""
    never = {"exact_accuracy": result["exact_accuracy"], "cell_accuracy": result["cell_accuracy"]}
    adaptive = {
        "exact_accuracy": result["adaptive_exact_accuracy"],
        "cell_accuracy": result["adaptive_cell_accuracy"],
    }
    chosen = adaptive if halt == "adaptive" else never
    return {
        "halt": halt,
        **chosen,
        "mean_steps": result["mean_steps"] if halt == "adaptive" else result["max_steps"],
        "never": never,
        "adaptive": {**adaptive, "mean_steps": result["mean_steps"], "halt_threshold": result["halt_threshold"]},
        "puzzles": result["puzzles"],
        "seconds": result["seconds"],
    }


def record_metrics(weights: Path, name: str, summary: dict[str, Any]) -> None:
    """Merge an evaluation into the checkpoint's metrics.json, which /models reports as the card's accuracy."""
    path = weights / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = {k: v for k, v in summary.items() if k != "weights"}
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    from model.checkpoint import card_max_steps, card_threshold, load_checkpoint, read_card_metrics
    from training.data.sources import load_eval_data
    from training.evaluate_arc import add_arc_arguments, run_arc

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument(
        "--data",
        required=True,
        help="a built dataset dir, a CSV file (Sudoku-Extreme / Maze-Hard format), or a generator spec "
        "generate:sudoku:N:GMIN:GMAX[:SEED] / generate:maze:N:SIDE:MINPATH[:SEED[:LOOPS]]",
    )
    parser.add_argument("--halt", choices=["adaptive", "never"], default="adaptive")
    parser.add_argument(
        "--halt-threshold",
        type=float,
        help="adaptive halting probability (default: the one calibrated for --views, else for one view, else 0.5)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help="supervision steps per puzzle (default: the card's calibrated horizon, else halt_max_steps)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N puzzles")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="compute precision (auto: bf16 on a GPU or a CPU with bf16 hardware, else fp32, as in training)",
    )
    parser.add_argument(
        "--views",
        type=int,
        default=1,
        help="Sudoku and mazes: vote over the first K (1..8) symmetries of the square; costs K times the steps",
    )
    parser.add_argument(
        "--record", metavar="NAME", help="also store the figures under NAME in WEIGHTS/metrics.json (model card data)"
    )
    add_arc_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.views <= NUM_DIHEDRAL:
        parser.error(f"--views must be 1..{NUM_DIHEDRAL}, got {args.views}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    ckpt = load_checkpoint(args.weights)
    dtype = resolve_dtype(args.dtype, device)
    if args.views != 1 and ckpt.config.family not in ("sudoku", "maze"):
        parser.error(f"--views votes over symmetries of Sudoku and maze grids, not {ckpt.config.family} puzzles")
    if args.arc_mode:
        return run_arc(args, ckpt, device, dtype)
    model = ckpt.model.to(device)
    data = load_eval_data(args.data, ckpt.config)
    card = read_card_metrics(args.weights)
    threshold = args.halt_threshold or card_threshold(card, args.views)
    max_steps = args.max_steps or card_max_steps(card, args.views) or ckpt.config.halt_max_steps
    common = {
        "batch_size": args.batch_size,
        "device": device,
        "dtype": dtype,
        "limit": args.limit,
        "max_steps": max_steps,
    }
    if args.views == 1:
        figures = headline(evaluate_model(model, data, progress=True, threshold=threshold, **common), args.halt)
    else:
        figures = evaluate_views(model, data, args.views, args.halt, threshold=threshold, progress=True, **common)
    precision = dtype_name(dtype)
    summary = {"weights": str(Path(args.weights)), "data": args.data, "dtype": precision, "max_steps": max_steps}
    summary.update(figures)
    if args.record:
        record_metrics(Path(args.weights), args.record, summary)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

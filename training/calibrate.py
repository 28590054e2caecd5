"""Calibrate a checkpoint's halting threshold: the lowest one that costs (almost) no accuracy against the best.

    python -m training.calibrate --weights weights/sudoku-9x9 --data generate:sudoku:1000:30:40:777

Why: the Q head is trained with a BCE against "the current answer is exactly right", and a small model's head
is overconfident in the first steps. Measured on the shipped Sudoku model (500 held-out 30-40-givens puzzles),
halting at probability 0.5 lost 8.4 points of exact accuracy against running all 16 steps; at 0.95 it lost none
and still used 7x fewer steps. The threshold is a serving decision, not a change to the model: this command
sweeps thresholds over one pass of `halt_max_steps` steps, keeps the lowest whose adaptive exact accuracy is
within `--tolerance` of the best (that of `never` or of any swept threshold), and stores it with the sweep table
as `halting` in WEIGHTS/metrics.json, where the server and `training.evaluate` read it. Calibrate on puzzles
other than the ones the card reports.

`--views K` calibrates the threshold for answers voted over K symmetries of the square (`"views": K` in a
request, `training.evaluate --views K`): every view halts at its own first step over the threshold, the views
are voted, and the sweep scores the vote and counts the steps of all views. A vote forgives a view that halted
too early, so its threshold can be lower than one view's; it is stored as `halting_views{K}`. Calibrate in the
precision the model is served in (`--dtype`).

`--max-steps N` sweeps over N steps instead of `halt_max_steps` and stores N beside the threshold: requests that
do not set `max_steps` then run to N. A model can keep improving past the horizon it trained with (maze-15x15:
45.8% exact at its 8 steps, 49.3% at 16 on 1,000 held-out 15x15 mazes), and a threshold only holds for the horizon it
was swept over.
The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.puzzles.dihedral import NUM_DIHEDRAL
from training.data.dataset import PuzzleSet
from training.evaluate import run_steps, turn_back, turned_set, vote_views

log = logging.getLogger(__name__)

GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)


@torch.inference_mode()
def trace_answers(
    model: nn.Module,
    data: PuzzleSet,
    batch_size: int = 256,
    limit: int = 0,
    dtype: torch.dtype = torch.float32,
    max_steps: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per step (1..max_steps, default `halt_max_steps`) and puzzle: the predicted tokens (steps, puzzles, length)
    and the halting probability (steps, puzzles)."""
    device = next(model.parameters()).device
    max_steps = max_steps or model.config.halt_max_steps  # type: ignore[union-attr]
    n = min(len(data), limit) if limit else len(data)
    answers, probs = [], []
    for lo in range(0, n, batch_size):
        inputs, _, ids = data.tensors(lo, min(n, lo + batch_size), device)
        steps = list(run_steps(model, inputs, ids, max_steps, dtype))
        answers.append(np.stack([pred.to(torch.uint8).cpu().numpy() for _, pred, _ in steps]))  # vocab < 256
        probs.append(np.stack([torch.sigmoid(q).cpu().numpy() for _, _, q in steps]))
    return np.concatenate(answers, axis=1), np.concatenate(probs, axis=1)


def exact(answers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether each answer [..., N, L] matches its puzzle's labels [N, L] on every scored (non-PAD) cell."""
    return ((answers == labels) | (labels == 0)).all(-1)


def trace(
    model: nn.Module,
    data: PuzzleSet,
    batch_size: int = 256,
    limit: int = 0,
    dtype: torch.dtype = torch.float32,
    max_steps: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per step and puzzle: is the answer exactly right, and the halting probability. Both (steps, puzzles)."""
    answers, probs = trace_answers(model, data, batch_size, limit, dtype, max_steps)
    return exact(answers, np.asarray(data.labels)[: answers.shape[1]]), probs


def trace_views(
    model: nn.Module,
    data: PuzzleSet,
    views: int,
    limit: int = 0,
    dtype: torch.dtype = torch.float32,
    max_steps: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`trace_answers` under the first `views` symmetries, answers turned back: (views, steps, puzzles, length)
    and (views, steps, puzzles)."""
    n = min(len(data), limit) if limit else len(data)
    data = data.subset(np.arange(n))
    traced = [trace_answers(model, turned_set(data, tid), dtype=dtype, max_steps=max_steps) for tid in range(views)]
    answers = np.stack([turn_back(a, tid) for tid, (a, _) in enumerate(traced)])
    return answers, np.stack([p for _, p in traced])


def sweep(correct: np.ndarray, probs: np.ndarray, grid: tuple[float, ...] = GRID) -> list[dict[str, float]]:
    """Adaptive exact accuracy and mean steps for each threshold (a puzzle halts at its first step >= t)."""
    n = correct.shape[1]
    rows = []
    for t in grid:
        first = first_over(probs, t)
        rows.append(_row(t, correct[first, np.arange(n)], first + 1))
    return rows


def _row(t: float, right: np.ndarray, steps: np.ndarray) -> dict[str, float]:
    """One line of a sweep: per-puzzle exactness and steps spent, averaged."""
    return {
        "threshold": t,
        "exact_accuracy": round(float(right.mean()), 4),
        "mean_steps": round(float(steps.mean()), 3),
    }


def first_over(probs: np.ndarray, t: float) -> np.ndarray:
    """The step index (axis -2 of `probs` [..., steps, puzzles]) each puzzle halts at: its first over `t`, else the
    last."""
    passed = probs >= t
    return np.where(passed.any(-2), passed.argmax(-2), probs.shape[-2] - 1)


def sweep_views(
    answers: np.ndarray, probs: np.ndarray, labels: np.ndarray, grid: tuple[float, ...] = GRID
) -> list[dict[str, float]]:
    """`sweep` for answers voted over views: each view halts at its own first step over t, then the vote.

    `answers` (views, steps, puzzles, length) are in the puzzles' own orientation, `probs` (views, steps,
    puzzles); `mean_steps` adds up the views' steps, which is what a voted answer costs.
    """
    views, _, n, _ = answers.shape
    v, i = np.arange(views)[:, None], np.arange(n)[None, :]
    rows = []
    for t in grid:
        first = first_over(probs, t)  # (views, puzzles)
        voted = vote_views(answers[v, first, i], probs[v, first, i])
        rows.append(_row(t, exact(voted, labels), (first + 1).sum(0)))
    return rows


def choose(rows: list[dict[str, float]], never: float, tolerance: float) -> float:
    """The lowest threshold within `tolerance` of the best exact accuracy, `never`'s or a swept threshold's; the
    most accurate one if none is. Measuring against the best, not against `never`, matters where a later step
    can spoil a right answer: on the maze models a threshold of 0.8-0.9 beat all 8 steps by 1-5 points, and
    "within half a point of never" picked 0.5-0.7 and gave those points away."""
    best = max([never, *(row["exact_accuracy"] for row in rows)])
    for row in rows:
        if row["exact_accuracy"] >= best - tolerance:
            return row["threshold"]
    return max(rows, key=lambda r: (r["exact_accuracy"], -r["mean_steps"]))["threshold"]


def calibrate(
    model: nn.Module,
    data: PuzzleSet,
    tolerance: float,
    limit: int = 0,
    views: int = 1,
    dtype: torch.dtype = torch.float32,
    max_steps: int = 0,
) -> dict[str, Any]:
    """Sweep the thresholds over `max_steps` steps (default `halt_max_steps`) and choose one; the result records
    the horizon, which the server and `training.evaluate` then run requests to."""
    max_steps = max_steps or model.config.halt_max_steps  # type: ignore[union-attr]
    if views == 1:
        correct, probs = trace(model, data, limit=limit, dtype=dtype, max_steps=max_steps)
        rows = sweep(correct, probs)
        never = float(correct[-1].mean())
    else:
        answers, vprobs = trace_views(model, data, views, limit, dtype, max_steps)
        labels = np.asarray(data.labels)[: answers.shape[2]]
        rows = sweep_views(answers, vprobs, labels)
        never = float(exact(vote_views(answers[:, -1], vprobs[:, -1]), labels).mean())
    result: dict[str, Any] = {
        "threshold": choose(rows, never, tolerance),
        "max_steps": max_steps,
        "tolerance": tolerance,
        "never_exact_accuracy": round(never, 4),
        "puzzles": min(len(data), limit) if limit else len(data),
        "sweep": rows,
    }
    if views != 1:
        result = {"views": views, **result}
    return result


def main(argv: list[str] | None = None) -> int:
    from model.checkpoint import halting_key, load_checkpoint
    from model.precision import dtype_name, resolve_dtype
    from training.data.sources import load_eval_data

    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint directory")
    parser.add_argument("--data", required=True, help="held-out puzzles: dataset dir, CSV file or generator spec")
    parser.add_argument(
        "--tolerance", type=float, default=0.005, help="exact accuracy the threshold may lose against the best"
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first N puzzles")
    parser.add_argument(
        "--views", type=int, default=1, help="calibrate for answers voted over the first K (1..8) symmetries"
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="compute precision of the trace; auto picks what the server's auto picks on this machine",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="horizon to sweep over and to serve with (default: the checkpoint's halt_max_steps)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the result without writing metrics.json")
    args = parser.parse_args(argv)
    if not 1 <= args.views <= NUM_DIHEDRAL:
        parser.error(f"--views must be 1..{NUM_DIHEDRAL}, got {args.views}")
    if args.max_steps < 0:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    ckpt = load_checkpoint(args.weights)
    if ckpt.config.family == "arc":
        parser.error("ARC answers are voted over variants; calibrate on Sudoku or maze checkpoints")
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    data = load_eval_data(args.data, ckpt.config)
    result = {
        "data": args.data,
        "dtype": dtype_name(dtype),
        **calibrate(ckpt.model, data, args.tolerance, args.limit, args.views, dtype, args.max_steps),
    }
    for row in result["sweep"]:
        log.info(
            "threshold %.2f: exact %.4f, mean steps %.2f", row["threshold"], row["exact_accuracy"], row["mean_steps"]
        )
    if not args.dry_run:
        path = Path(args.weights) / "metrics.json"
        card = json.loads(path.read_text()) if path.is_file() else {}
        card[halting_key(args.views)] = result
        path.write_text(json.dumps(card, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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

from training.data.dataset import PuzzleSet
from training.evaluate import run_steps

log = logging.getLogger(__name__)

GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)


@torch.inference_mode()
def trace(model: nn.Module, data: PuzzleSet, batch_size: int = 256, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per step and puzzle: is the answer exactly right, and the halting probability. Both (steps, puzzles)."""
    device = next(model.parameters()).device
    max_steps = model.config.halt_max_steps  # type: ignore[union-attr]
    n = min(len(data), limit) if limit else len(data)
    correct, probs = [], []
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        inputs, labels, ids = data.tensors(lo, hi, device)
        ignore = labels == 0
        steps = list(run_steps(model, inputs, ids, max_steps))
        correct.append(np.stack([((pred == labels) | ignore).all(-1).cpu().numpy() for _, pred, _ in steps]))
        probs.append(np.stack([torch.sigmoid(q).cpu().numpy() for _, _, q in steps]))
    return np.concatenate(correct, axis=1), np.concatenate(probs, axis=1)


def sweep(correct: np.ndarray, probs: np.ndarray, grid: tuple[float, ...] = GRID) -> list[dict[str, float]]:
    """Adaptive exact accuracy and mean steps for each threshold (a puzzle halts at its first step >= t)."""
    n = correct.shape[1]
    rows = []
    for t in grid:
        passed = probs >= t
        first = np.where(passed.any(0), passed.argmax(0), correct.shape[0] - 1)
        rows.append(
            {
                "threshold": t,
                "exact_accuracy": round(float(correct[first, np.arange(n)].mean()), 4),
                "mean_steps": round(float((first + 1).mean()), 3),
            }
        )
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


def calibrate(model: nn.Module, data: PuzzleSet, tolerance: float, limit: int = 0) -> dict[str, Any]:
    correct, probs = trace(model, data, limit=limit)
    rows = sweep(correct, probs)
    never = float(correct[-1].mean())
    return {
        "threshold": choose(rows, never, tolerance),
        "tolerance": tolerance,
        "never_exact_accuracy": round(never, 4),
        "puzzles": int(correct.shape[1]),
        "sweep": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from model.checkpoint import load_checkpoint
    from training.data.sources import load_eval_data

    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint directory")
    parser.add_argument("--data", required=True, help="held-out puzzles: dataset dir, CSV file or generator spec")
    parser.add_argument(
        "--tolerance", type=float, default=0.005, help="exact accuracy the threshold may lose against the best"
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first N puzzles")
    parser.add_argument("--dry-run", action="store_true", help="print the result without writing metrics.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    ckpt = load_checkpoint(args.weights)
    if ckpt.config.family == "arc":
        parser.error("ARC answers are voted over variants; calibrate on Sudoku or maze checkpoints")
    result = {
        "data": args.data,
        **calibrate(ckpt.model, load_eval_data(args.data, ckpt.config), args.tolerance, args.limit),
    }
    for row in result["sweep"]:
        log.info(
            "threshold %.2f: exact %.4f, mean steps %.2f", row["threshold"], row["exact_accuracy"], row["mean_steps"]
        )
    if not args.dry_run:
        path = Path(args.weights) / "metrics.json"
        card = json.loads(path.read_text()) if path.is_file() else {}
        card["halting"] = result
        path.write_text(json.dumps(card, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

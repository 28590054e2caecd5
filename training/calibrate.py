"""Calibrate a checkpoint's halting threshold: the lowest one that costs (almost) no accuracy against the best.

    python -m training.calibrate --weights weights/sudoku-9x9 --data generate:sudoku:1000:30:40:777

Why: the Q head is trained with a BCE against "the current answer is exactly right", and a small model's head
is overconfident in the first steps. Measured on the shipped Sudoku model (500 held-out 30-40-givens puzzles),
halting at probability 0.5 lost 8.4 points of exact accuracy against running all 16 steps; at 0.95 it lost none
and still used 7x fewer steps. The threshold is a serving decision, not a change to the model: this command
sweeps thresholds over one pass of `halt_max_steps` steps, keeps the lowest whose adaptive exact accuracy is
within `--tolerance` of the best (that of `never` or of any swept threshold) and that pays for any accuracy it
gives up with at least 5% fewer steps (`choose`), and stores it with the sweep table as `halting` in
WEIGHTS/metrics.json, where the server and `training.evaluate` read it. Calibrate on puzzles
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

`--horizons 16,32,64` chooses the horizon too, from one trace of the longest: each horizon gets its own threshold
sweep (the trace cut there), and the shortest horizon whose chosen threshold is within `--tolerance` of the best
horizon's accuracy is stored, with the table as `horizons`. Longer horizons cost steps only on the puzzles that
are still unsolved (a verified answer halts), which is where a model that keeps improving past its training
horizon earns them: the hard Sudoku model solved 91.3% of 300 22-27-given puzzles in 16 steps, 94.0% in 64.

`--alone` stores the result as `halting_alone`, the calibration of a single view that no further view backs up
(`"budget": {"steps": 0}`, `training.evaluate --budget 0`); other requests keep `halting`. The two want different
horizons: the same hard puzzles solved in one view by 64 steps (90.0%) were solved by the server's default, a
16-step first view and more views within 256 steps, to 99.5% at fewer steps on average.
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

from inference.halting import HaltingPolicy, HaltReason, Rules, first_halts, halting_key
from inference.views import choose_all, invert_view, vote_views
from model.puzzles.dihedral import NUM_DIHEDRAL
from model.trm import TRM
from training.data.dataset import PuzzleSet
from training.scoring import check_trace, data_canvas, puzzle_rules, run_steps, turned_set

log = logging.getLogger(__name__)

GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)


@torch.inference_mode()
def trace_answers(
    model: TRM,
    data: PuzzleSet,
    batch_size: int = 256,
    limit: int = 0,
    dtype: torch.dtype = torch.float32,
    max_steps: int = 0,
    rules: Rules | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per step (1..max_steps, default `halt_max_steps`) and puzzle: the answer tokens (steps, puzzles, length),
    settled on the user's cells by `rules` as the server does, and the halting probability (steps, puzzles)."""
    device = next(model.parameters()).device
    max_steps = max_steps or model.config.halt_max_steps
    n = min(len(data), limit) if limit else len(data)
    answers, probs = [], []
    for lo in range(0, n, batch_size):
        inputs, _, ids = data.tensors(lo, min(n, lo + batch_size), device)
        questions = inputs.cpu().numpy().reshape(len(inputs), -1)
        steps = list(run_steps(model, inputs, ids, max_steps, dtype))
        preds = [pred.to(torch.uint8).cpu().numpy().reshape(len(inputs), -1) for _, pred, _ in steps]  # vocab < 256
        answers.append(np.stack([p if rules is None else rules.settle(questions, p) for p in preds]))
        probs.append(np.stack([torch.sigmoid(q).cpu().numpy() for _, _, q in steps]))
    return np.concatenate(answers, axis=1), np.concatenate(probs, axis=1)


def exact(answers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether each answer [..., N, L] matches its puzzle's labels [N, L] on every scored (non-PAD) cell."""
    right: np.ndarray = ((answers == labels) | (labels == 0)).all(-1)
    return right


def trace_views(
    model: TRM,
    data: PuzzleSet,
    views: int,
    limit: int = 0,
    dtype: torch.dtype = torch.float32,
    max_steps: int = 0,
    rules: Rules | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`trace_answers` under the first `views` symmetries, answers turned back: (views, steps, puzzles, length)
    and (views, steps, puzzles)."""
    n = min(len(data), limit) if limit else len(data)
    data = data.subset(np.arange(n))
    family = model.config.family
    traced = [
        trace_answers(model, turned_set(data, tid, family), dtype=dtype, max_steps=max_steps, rules=rules)
        for tid in range(views)
    ]
    answers = np.stack([invert_view(a, tid, family) for tid, (a, _) in enumerate(traced)])
    return answers, np.stack([p for _, p in traced])


def sweep(
    answers: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    verified: np.ndarray | None = None,
    grid: tuple[float, ...] = GRID,
) -> list[dict[str, float]]:
    """Exact accuracy and mean steps where an adaptive policy with each threshold halts (`first_halts`, the rule
    the server's scheduler applies), over one trace: answers [steps, N, L], probs and verified [steps, N]."""
    correct = exact(answers, labels)
    n = correct.shape[1]
    rows = []
    for t in grid:
        at, _ = first_halts(HaltingPolicy(t, len(probs)), probs, verified)
        rows.append(_row(t, correct[at, np.arange(n)], at + 1))
    return rows


def _row(t: float, right: np.ndarray, steps: np.ndarray) -> dict[str, float]:
    """One line of a sweep: per-puzzle exactness and steps spent, averaged."""
    return {
        "threshold": t,
        "exact_accuracy": round(float(right.mean()), 4),
        "mean_steps": round(float(steps.mean()), 3),
    }


def sweep_views(
    answers: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    verified: np.ndarray | None = None,
    grid: tuple[float, ...] = GRID,
) -> list[dict[str, float]]:
    """`sweep` for answers over views, chosen as the server chooses (`inference.views.choose_all`): a verified
    view wins and stops the others, else each view halts at its own step and the views are voted.

    `answers` (views, steps, puzzles, length) are in the puzzles' own orientation, `probs` and `verified` (views,
    steps, puzzles); `mean_steps` adds up the views' steps, which is what the answer costs.
    """
    views, steps, n, _ = answers.shape
    i = np.arange(n)
    rows = []
    for t in grid:
        policy = HaltingPolicy(t, steps)
        picked, picked_probs, picked_ok, spent = [], [], [], []
        for v in range(views):
            at, why = first_halts(policy, probs[v], None if verified is None else verified[v])
            picked.append(answers[v, at, i])
            picked_probs.append(probs[v, at, i])
            picked_ok.append(np.array([r is HaltReason.VERIFIED for r in why]))
            spent.append(at + 1)
        chosen, cost = choose_all(np.stack(picked), np.stack(picked_probs), np.stack(picked_ok), np.stack(spent))
        rows.append(_row(t, exact(chosen, labels), cost))
    return rows


MIN_SAVING = 0.05
"""The share of the most accurate threshold's steps a lower threshold must save to give up any accuracy for it."""


def choose(rows: list[dict[str, float]], never: float, tolerance: float) -> float:
    """The lowest threshold within `tolerance` of the best exact accuracy, `never`'s or a swept threshold's, that
    either loses nothing against the most accurate threshold or saves at least `MIN_SAVING` of its steps; the most
    accurate one if none is. Measuring against the best, not against `never`, matters where a later step can spoil
    a right answer: on the maze models a threshold of 0.8-0.9 beat all 8 steps by 1-5 points, and "within half a
    point of never" picked 0.5-0.7 and gave those points away. The saving matters where every puzzle halts early
    anyway: on 1,000 30-40-given puzzles the finished hard Sudoku model was 99.5% right at 0.85 and 100% at 0.97,
    for 1.208 against 1.213 mean steps, and half a point is too much to pay for 0.4% of the steps."""
    most = max(rows, key=lambda r: (r["exact_accuracy"], -r["mean_steps"]))
    best = max(never, most["exact_accuracy"])
    for row in rows:
        saves = row["mean_steps"] <= (1 - MIN_SAVING) * most["mean_steps"]
        if row["exact_accuracy"] >= best - tolerance and (row["exact_accuracy"] >= most["exact_accuracy"] or saves):
            return row["threshold"]
    return most["threshold"]


def horizon_sweep(
    answers: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    verified: np.ndarray | None,
    horizons: tuple[int, ...],
    tolerance: float,
) -> list[dict[str, float]]:
    """Per horizon (at most the trace's length), the threshold `choose` takes over the trace cut there, with its
    exact accuracy and mean steps."""
    rows = []
    for h in sorted(horizons):
        cut = sweep(answers[:h], probs[:h], labels, None if verified is None else verified[:h])
        t = choose(cut, float(exact(answers[h - 1], labels).mean()), tolerance)
        rows.append({"max_steps": h, **next(row for row in cut if row["threshold"] == t)})
    return rows


def choose_horizon(rows: list[dict[str, float]], tolerance: float) -> int:
    """The shortest horizon whose accuracy is within `tolerance` of the best horizon's."""
    best = max(row["exact_accuracy"] for row in rows)
    return int(next(row["max_steps"] for row in rows if row["exact_accuracy"] >= best - tolerance))


def calibrate(
    model: TRM,
    data: PuzzleSet,
    tolerance: float,
    limit: int = 0,
    views: int = 1,
    dtype: torch.dtype = torch.float32,
    max_steps: int = 0,
    rules: Rules | None = None,
    horizons: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Sweep the thresholds over `max_steps` steps (default `halt_max_steps`) and choose one; the result records
    the horizon, which the server and `training.evaluate` then run requests to. With `rules` (the codec) answers are
    settled and checked, and the sweep halts as the server does by default: at a verified answer, or by the Q head.
    With `horizons` (one view only) the horizon is chosen among them as well, in place of `max_steps`."""
    if horizons and views != 1:
        raise ValueError("horizons are chosen for one view only")
    max_steps = max(horizons) if horizons else max_steps or model.config.halt_max_steps
    n = min(len(data), limit) if limit else len(data)
    labels, inputs = np.asarray(data.labels)[:n], np.asarray(data.inputs)[:n]
    horizon_rows: list[dict[str, float]] = []
    if views == 1:
        answers, probs = trace_answers(model, data, limit=limit, dtype=dtype, max_steps=max_steps, rules=rules)
        verified = check_trace(rules, inputs, answers)
        if horizons:
            horizon_rows = horizon_sweep(answers, probs, labels, verified, horizons, tolerance)
            max_steps = choose_horizon(horizon_rows, tolerance)
            answers, probs = answers[:max_steps], probs[:max_steps]
            verified = None if verified is None else verified[:max_steps]
        rows = sweep(answers, probs, labels, verified)
        never = float(exact(answers[-1], labels).mean())
    else:
        vanswers, vprobs = trace_views(model, data, views, limit, dtype, max_steps, rules)
        # The answers are turned back already, so each is checked against the puzzle in its own orientation.
        checked = [check_trace(rules, inputs, a) for a in vanswers]
        vverified = None if any(c is None for c in checked) else np.stack(checked)  # type: ignore[arg-type]
        rows = sweep_views(vanswers, vprobs, labels, vverified)
        never = float(exact(vote_views(vanswers[:, -1], vprobs[:, -1]), labels).mean())
    result: dict[str, Any] = {
        "threshold": choose(rows, never, tolerance),
        "max_steps": max_steps,
        "tolerance": tolerance,
        "never_exact_accuracy": round(never, 4),
        "puzzles": min(len(data), limit) if limit else len(data),
        "sweep": rows,
    }
    if horizons:
        result["horizons"] = horizon_rows
    if views != 1:
        result = {"views": views, **result}
    return result


def main(argv: list[str] | None = None) -> int:
    from model.checkpoint import load_checkpoint
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
    parser.add_argument(
        "--horizons",
        default="",
        help="comma list of horizons to choose the served one from (one view; replaces --max-steps)",
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="calibrate the single view of requests without a budget for more views (stored as halting_alone)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the result without writing metrics.json")
    args = parser.parse_args(argv)
    try:
        horizons = tuple(int(h) for h in args.horizons.split(",") if h.strip())
    except ValueError:
        parser.error(f"--horizons must be a comma list of step counts, got {args.horizons!r}")
    if any(h < 1 for h in horizons):
        parser.error(f"--horizons must be at least 1 each, got {args.horizons!r}")
    if horizons and (args.views != 1 or args.max_steps):
        parser.error("--horizons chooses the horizon for one view: drop --views and --max-steps")
    if not 1 <= args.views <= NUM_DIHEDRAL:
        parser.error(f"--views must be 1..{NUM_DIHEDRAL}, got {args.views}")
    if args.alone and args.views != 1:
        parser.error("--alone calibrates a single view: drop --views")
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
        **calibrate(
            ckpt.model,
            data,
            args.tolerance,
            args.limit,
            args.views,
            dtype,
            args.max_steps,
            puzzle_rules(ckpt.config, data),
            horizons,
        ),
    }
    for row in result.get("horizons", []):
        log.info(
            "horizon %d: threshold %.2f, exact %.4f, mean steps %.2f",
            row["max_steps"],
            row["threshold"],
            row["exact_accuracy"],
            row["mean_steps"],
        )
    for row in result["sweep"]:
        log.info(
            "threshold %.2f: exact %.4f, mean steps %.2f", row["threshold"], row["exact_accuracy"], row["mean_steps"]
        )
    if not args.dry_run:
        path = Path(args.weights) / "metrics.json"
        card = json.loads(path.read_text()) if path.is_file() else {}
        card[halting_key(args.views, data_canvas(ckpt.config, data), args.alone)] = result
        path.write_text(json.dumps(card, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

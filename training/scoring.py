"""Scoring a checkpoint on held-out puzzles the way the server runs them: one view, views, or within a budget.

Every function runs the model for the policy's whole horizon and then replays the server's rules over the trace
(`inference.halting.first_halts`, `inference.views.choose_all`, `inference.escalation.escalate_all`), with the
codec settling each answer on the user's cells as the scheduler does, so the figures are the server's by
construction. `python -m training.evaluate` (the CLI) and `training.evaluate_arc` build on these.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from inference.escalation import Escalation, escalate_all
from inference.halting import (
    DEFAULT_HALT_THRESHOLD,
    HaltingPolicy,
    HaltReason,
    Rules,
    first_halts,
)
from inference.views import apply_view, check_views, choose_all, invert_view
from model.config import TRMConfig
from model.precision import autocast
from model.puzzles import get_codec
from model.trm import TRM
from training.data.dataset import PuzzleSet, by_canvas

log = logging.getLogger(__name__)


@torch.inference_mode()
def run_steps(
    model: TRM,
    inputs: torch.Tensor,
    puzzle_ids: torch.Tensor,
    max_steps: int,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (step, predicted tokens, halting logit) for steps 1..max_steps of a fresh batch."""
    # A `conv` model steps grids of any size, so its carry is sized from the inputs; other models know one size.
    tokens = inputs[0].numel()
    sized = {} if tokens == model.config.seq_len else {"num_tokens": tokens}
    carry = model.initial_carry(inputs.shape[0], inputs.device, **sized)
    for step in range(1, max_steps + 1):
        with autocast(inputs.device, dtype):
            out = model.step(carry, inputs, puzzle_ids)
        carry = out.carry
        yield step, out.logits.argmax(-1), model.halting_logit(out.q_halt, out.q_continue).float()


def evaluate_model(
    model: TRM,
    data: PuzzleSet,
    batch_size: int = 256,
    device: torch.device | None = None,
    policy: HaltingPolicy | None = None,
    dtype: torch.dtype = torch.float32,
    limit: int = 0,
    progress: bool = False,
    keep_predictions: bool = False,
    rules: Rules | None = None,
) -> dict[str, Any]:
    """Exact and per-cell accuracy after `policy.max_steps` (halt never) and where `policy` halts each puzzle.

    Every puzzle runs all the steps; `inference.halting.first_halts` then asks the policy after each step, as the
    server's scheduler does, so both figures come from one computation. `rules` is the puzzle family's codec, as
    in the server: every step's answer keeps the user's cells (`settle`), and an adaptive policy halts a puzzle at
    its first verified answer (`check_tokens`); without it only the Q head and the horizon halt. The default
    policy is the reference's rule (0.5 over `halt_max_steps`).
    """
    device = device or next(model.parameters()).device
    policy = policy or HaltingPolicy(DEFAULT_HALT_THRESHOLD, model.config.halt_max_steps)
    n = min(len(data), limit) if limit else len(data)
    sums = {"exact": 0, "cells": 0, "cells_total": 0, "ad_exact": 0, "ad_cells": 0, "steps": 0}
    reasons: dict[str, int] = {}
    preds_never, preds_adaptive, q_adaptive, q_never, exact_rows, steps_rows, verified_rows = [], [], [], [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=n, desc="eval", unit="puzzle", disable=not progress, leave=False, file=sys.stderr)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        inputs, labels, ids = data.tensors(lo, hi, device)
        questions = inputs.cpu().numpy().reshape(hi - lo, -1)
        answers, probs = [], []
        for _, pred, q_halt in run_steps(model, inputs, ids, policy.max_steps, dtype):
            answer = pred.cpu().numpy().reshape(hi - lo, -1)
            answers.append(answer if rules is None else rules.settle(questions, answer))
            probs.append(torch.sigmoid(q_halt).cpu().numpy())
        trace, prob_trace = np.stack(answers), np.stack(probs)  # (steps, b, length), (steps, b)
        verified = check_trace(rules if policy.checks_answers else None, questions, trace)
        at, why = first_halts(policy, prob_trace, verified)
        rows = np.arange(hi - lo)
        adaptive, q_at = trace[at, rows], prob_trace[at, rows]
        gold = labels.cpu().numpy()
        valid = gold != 0
        for key, p in (("", trace[-1]), ("ad_", adaptive)):
            right = ((p.reshape(gold.shape) == gold) & valid).sum(-1)
            exact = right == valid.sum(-1)
            sums[key + "exact"] += int(exact.sum())
            sums[key + "cells"] += int(right.sum())
            if not key:
                exact_rows.append(exact)
        sums["cells_total"] += int(valid.sum())
        sums["steps"] += int((at + 1).sum())
        steps_rows.append(at + 1)
        verified_rows.append(np.array([r is HaltReason.VERIFIED for r in why]))
        for reason in why:
            reasons[reason.value] = reasons.get(reason.value, 0) + 1
        if keep_predictions:
            preds_never.append(trace[-1])
            preds_adaptive.append(adaptive)
            q_adaptive.append(q_at)
            q_never.append(prob_trace[-1])
        bar.update(hi - lo)
    bar.close()
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {
        "puzzles": n,
        "exact_accuracy": sums["exact"] / max(1, n),
        "cell_accuracy": sums["cells"] / max(1, sums["cells_total"]),
        "adaptive_exact_accuracy": sums["ad_exact"] / max(1, n),
        "adaptive_cell_accuracy": sums["ad_cells"] / max(1, sums["cells_total"]),
        "mean_steps": sums["steps"] / max(1, n),
        "max_steps": policy.max_steps,
        "halt_threshold": policy.threshold,
        "halt_mode": policy.mode,
        "halted_by": reasons,
        "seconds": round(elapsed, 2),
    }
    result.update(by_side(data, np.concatenate(exact_rows) if exact_rows else np.zeros(0, dtype=bool)))
    if keep_predictions:
        result["predictions"] = np.concatenate(preds_never) if preds_never else np.zeros((0, 0))
        result["adaptive_predictions"] = np.concatenate(preds_adaptive) if preds_adaptive else np.zeros((0, 0))
        result["adaptive_q"] = np.concatenate(q_adaptive) if q_adaptive else np.zeros(0)
        result["q"] = np.concatenate(q_never) if q_never else np.zeros(0)  # halting probability after the last step
        result["steps"] = np.concatenate(steps_rows) if steps_rows else np.zeros(0, dtype=np.int64)
        result["verified"] = np.concatenate(verified_rows) if verified_rows else np.zeros(0, dtype=bool)
    return result


def evaluate_by_canvas(model: TRM, data: PuzzleSet, limit: int = 0, **options: Any) -> dict[str, Any]:
    """`evaluate_model` for a split whose examples carry their own canvas (size-agnostic ARC): each canvas scored
    on its own, the figures averaged over puzzles (cell accuracy too, so a canvas weighs by its puzzles, not by
    its cells), with `exact_by_canvas` beside them; `limit` takes evenly spaced examples of the whole split, so
    every task family is in a small evaluation. Any other split goes straight to `evaluate_model`."""
    if "canvas" not in data.extras:
        return evaluate_model(model, data, limit=limit, **options)
    if limit and limit < len(data):
        data = data.subset(np.linspace(0, len(data) - 1, limit).round().astype(np.int64))
    parts = [(c, evaluate_model(model, part, **options)) for c, part in by_canvas(data)]
    n = sum(r["puzzles"] for _, r in parts)
    averaged = ("exact_accuracy", "cell_accuracy", "adaptive_exact_accuracy", "adaptive_cell_accuracy", "mean_steps")
    result: dict[str, Any] = {k: sum(r[k] * r["puzzles"] for _, r in parts) / max(1, n) for k in averaged}
    result["puzzles"] = n
    result["seconds"] = round(sum(r["seconds"] for _, r in parts), 2)
    result["exact_by_canvas"] = {str(c): r["exact_accuracy"] for c, r in parts}
    return result


def by_side(data: PuzzleSet, exact: np.ndarray) -> dict[str, Any]:
    """`exact_by_side` for a mixed-size maze set (the headline alone would hide the hardest size), else nothing.
    `exact` holds one flag per puzzle of the first `len(exact)` in `data`."""
    if "side" not in data.extras:
        return {}
    sides = np.asarray(data.extras["side"][: len(exact)])
    if len(np.unique(sides)) < 2:
        return {}
    return {"exact_by_side": {str(v): float(exact[sides == v].mean()) for v in np.unique(sides)}}


def turned_set(data: PuzzleSet, tid: int, family: str) -> PuzzleSet:
    """The same puzzles (and labels) as view `tid` of their family shows them (`inference.views`)."""
    rows = apply_view(np.asarray(data.inputs), tid, family), apply_view(np.asarray(data.labels), tid, family)
    return PuzzleSet(*rows, data.puzzle_ids, data.groups, data.extras)


def evaluate_views(
    model: TRM,
    data: PuzzleSet,
    views: int,
    limit: int = 0,
    keep_predictions: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate under the first `views` dihedral symmetries and answer as the server does (`inference.views`).

    Under an adaptive policy with a rule check, the first verified view answers and the server stops the other
    views then, so their steps count only up to that step; otherwise the views are voted. Returns the chosen
    answers' figures, the per-view exact accuracies and the plain (identity view) result under "single_view";
    `mean_steps` counts the steps of all views, which is what the answer costs.
    """
    check_views(views)
    start = time.perf_counter()
    n = min(len(data), limit) if limit else len(data)
    data = data.subset(np.arange(n))
    labels = np.asarray(data.labels)
    policy: HaltingPolicy | None = kwargs.get("policy")
    adaptive = policy is None or policy.mode != "never"
    key = ("adaptive_predictions", "adaptive_q") if adaptive else ("predictions", "q")
    family = model.config.family
    results = [
        evaluate_model(model, turned_set(data, tid, family), keep_predictions=True, **kwargs) for tid in range(views)
    ]
    answers = np.stack([invert_view(r[key[0]], tid, family) for tid, r in enumerate(results)])
    probs = np.stack([r[key[1]] for r in results])
    steps = np.stack([r["steps"] if adaptive else np.full(n, r["max_steps"]) for r in results])
    verified = np.stack([r["verified"] for r in results])
    chosen, cost = choose_all(answers, probs, verified, steps)
    valid = labels != 0
    right = ((chosen.reshape(labels.shape) == labels) & valid).sum(-1)
    exact = right == valid.sum(-1)
    per_view = [r["adaptive_exact_accuracy"] if adaptive else r["exact_accuracy"] for r in results]
    out: dict[str, Any] = {
        "halt": "adaptive" if adaptive else "never",
        "views": views,
        "exact_accuracy": float(exact.mean()) if n else 0.0,
        "cell_accuracy": float(right.sum() / max(1, valid.sum())),
        "mean_steps": float(cost.mean()) if n else 0.0,
        "verified_views": int(verified.any(0).sum()),
        "exact_by_view": per_view,
        "single_view": {k: v for k, v in headline(results[0]).items() if k not in ("puzzles", "seconds")},
        "puzzles": n,
        "seconds": round(time.perf_counter() - start, 2),
    }
    out.update(by_side(data, exact))
    if keep_predictions:
        out["predictions"] = chosen
    return out


def evaluate_escalated(
    model: TRM,
    data: PuzzleSet,
    escalation: Escalation,
    views: int = 1,
    limit: int = 0,
    keep_predictions: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """What the server answers with a step budget (`inference.escalation`): the first round of `views`, then, for
    the puzzles none of whose views was verified, as many more views as the budget covers.

    Only the puzzles that escalate are run under the further views, so easy sets cost little more than one view.
    `mean_steps` and `p95_steps` count every view's steps, which is what each answer cost.
    """
    return evaluate_budgets(model, data, [escalation], views, limit, keep_predictions, **kwargs)[0]


def evaluate_budgets(
    model: TRM,
    data: PuzzleSet,
    escalations: list[Escalation],
    views: int = 1,
    limit: int = 0,
    keep_predictions: bool = False,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """`evaluate_escalated` for several budgets from one computation (the accuracy/compute curve)."""
    check_views(views)
    start = time.perf_counter()
    n = min(len(data), limit) if limit else len(data)
    data = data.subset(np.arange(n))
    labels = np.asarray(data.labels).reshape(n, -1)
    policy: HaltingPolicy = kwargs.get("policy") or HaltingPolicy(DEFAULT_HALT_THRESHOLD, model.config.halt_max_steps)
    total = max(views, *(e.views for e in escalations))
    family = model.config.family
    answers = np.zeros((total, *labels.shape), dtype=np.int64)
    probs, steps = np.zeros((total, n)), np.zeros((total, n), dtype=np.int64)
    verified = np.zeros((total, n), dtype=bool)

    def run(tid: int, rows: np.ndarray) -> dict[str, Any]:
        result = evaluate_model(model, turned_set(data.subset(rows), tid, family), keep_predictions=True, **kwargs)
        answers[tid, rows] = invert_view(result["adaptive_predictions"], tid, family).reshape(len(rows), -1)
        probs[tid, rows], steps[tid, rows] = result["adaptive_q"], result["steps"]
        verified[tid, rows] = result["verified"]
        return result

    first = [run(tid, np.arange(n)) for tid in range(views)]
    unsolved = np.flatnonzero(~verified[:views].any(0))
    if len(unsolved) and any(e.next_views(views, 0, policy.max_steps) for e in escalations):
        for tid in range(views, total):
            run(tid, unsolved)
    seconds = round(time.perf_counter() - start, 2)
    valid = labels != 0
    out = []
    for escalation in escalations:
        chosen, cost, tried = escalate_all(escalation, views, policy.max_steps, answers, probs, verified, steps)
        right = ((chosen == labels) & valid).sum(-1)
        exact = right == valid.sum(-1)
        result: dict[str, Any] = {
            "halt": policy.mode,
            "views": views,
            "budget_steps": escalation.budget,
            "exact_accuracy": float(exact.mean()) if n else 0.0,
            "cell_accuracy": float(right.sum() / max(1, valid.sum())),
            "mean_steps": float(cost.mean()) if n else 0.0,
            "median_steps": float(np.median(cost)) if n else 0.0,
            "p95_steps": float(np.percentile(cost, 95)) if n else 0.0,
            "mean_views_tried": float(tried.mean()) if n else 0.0,
            "escalated": float((tried > views).mean()) if n else 0.0,
            "first_round": {k: v for k, v in headline(first[0]).items() if k not in ("puzzles", "seconds")},
            "puzzles": n,
            "seconds": seconds,
        }
        result.update(by_side(data, exact))
        if keep_predictions:
            result["predictions"], result["steps"], result["views_tried"] = chosen, cost, tried
        out.append(result)
    return out


def headline(result: dict[str, Any], halt: str | None = None) -> dict[str, Any]:
    """The summary line: `exact_accuracy` etc. refer to the chosen halting mode (default: the policy's), the
    other alongside."""
    halt = halt or ("never" if result.get("halt_mode") == "never" else "adaptive")
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
        "adaptive": {
            **adaptive,
            "mean_steps": result["mean_steps"],
            "halt_threshold": result["halt_threshold"],
            "halt_mode": result.get("halt_mode"),
            "halted_by": result.get("halted_by"),
        },
        "puzzles": result["puzzles"],
        "seconds": result["seconds"],
    }


def record_metrics(weights: Path, name: str, summary: dict[str, Any]) -> None:
    """Merge an evaluation into the checkpoint's metrics.json, which /models reports as the card's accuracy."""
    path = weights / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[name] = {k: v for k, v in summary.items() if k != "weights"}
    path.write_text(json.dumps(data, indent=2) + "\n")


def data_canvas(config: TRMConfig, data: PuzzleSet) -> int | None:
    """The canvas a size-agnostic maze model runs `data` on when it is not the model's own (the key of its
    per-canvas calibration, `inference.halting.Calibration`); None for every other model and for its own."""
    side = math.isqrt(int(data.inputs.shape[1]))
    return side if config.mixer == "conv" and config.family == "maze" and side != config.grid_side else None


def puzzle_rules(config: TRMConfig, data: PuzzleSet | None = None) -> Rules | None:
    """The codec that settles and checks answers as the server's does (None where none fits): the checkpoint's, or
    for a size-agnostic model the one of the canvas `data` is laid out on."""
    try:
        return get_codec(config.family, config.seq_len if data is None else int(data.inputs.shape[1]))
    except ValueError:
        return None


def check_trace(rules: Rules | None, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray | None:
    """The rule check of every traced step's answers [steps, N, L] to `inputs` [N, L]: [steps, N], or None."""
    if rules is None:
        return None
    checks = [rules.check_tokens(inputs, step) for step in answers]
    return None if any(c is None for c in checks) else np.stack(checks)  # type: ignore[arg-type]

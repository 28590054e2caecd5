"""The accuracy/compute curve of the inference layer: exact accuracy against model steps per puzzle.

    python -m benchmarks.inference_curve [--set "NAME=WEIGHTS@SPEC" ...] [--budgets 0,48,80,128] [--threads 1]
        [--json benchmarks/results/inference_curve.json] [--png docs/inference_curve.png]

For each held-out set it runs the checkpoint the way the server would and scores every mode:

* q_head: the halting head alone (the paper's inference, `"halt": "q_head"`);
* verified: adaptive halting with the rule check, no escalation (`"budget": {"steps": 0}`);
* budget N: verified halting, then more views within N steps over all views (`"budget": {"steps": N}`).

Each point gives exact accuracy, mean, median and p95 model steps per puzzle (all views counted). The figures
come from `training.evaluate`'s functions, which replay the server's rules (`inference.halting`,
`inference.escalation`), so each point is what a request with those fields gets; the command of every point is
written beside it. The PNG plots accuracy against mean steps, one line per set.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from inference.escalation import Escalation
from inference.halting import Calibration
from inference.views import views_for
from model.checkpoint import load_checkpoint, read_card_metrics
from training.data.sources import load_eval_data
from training.scoring import evaluate_budgets, evaluate_model, headline, puzzle_rules

log = logging.getLogger("benchmarks.inference_curve")

DEFAULT_SETS = {
    "Sudoku, 30-40 givens": "weights/sudoku-9x9@generate:sudoku:200:30:40:9001",
    "Sudoku, 22-27 givens": "weights/sudoku-9x9@generate:sudoku:200:22:27:9002",
    "Sudoku, 21-22 givens": "weights/sudoku-9x9@generate:sudoku:200:21:22:9003",
    "maze 15x15": "weights/maze-15x15@generate:maze:100:15:26:9004",
}
"""Held-out sets (seeds none of the cards or calibrations used) as NAME: WEIGHTS@SPEC."""


def measure(weights: Path, spec: str, budgets: list[int]) -> list[dict[str, Any]]:
    """Every mode's point on one held-out set."""
    ckpt = load_checkpoint(weights)
    data = load_eval_data(spec, ckpt.config)
    calibration = Calibration.from_card(read_card_metrics(weights), ckpt.config)
    rules = puzzle_rules(ckpt.config)
    base = f"python -m training.evaluate --weights {weights} --data {spec} --dtype float32"
    q_head = headline(evaluate_model(ckpt.model, data, policy=calibration.policy(mode="q_head"), rules=rules))
    points = [{"mode": "q_head", "command": f"{base} --halt q_head", **q_head, "p95_steps": None}]
    escalations = [Escalation(b, views_for(ckpt.config.family)) for b in budgets]
    runs = evaluate_budgets(ckpt.model, data, escalations, policy=calibration.policy(), rules=rules)
    for budget, run in zip(budgets, runs, strict=True):
        mode = "verified" if budget == 0 else f"budget {budget}"
        points.append({"mode": mode, "command": f"{base} --budget {budget}", **run})
    return points


def plot(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        xs = [p["mean_steps"] for p in points]
        ys = [100 * p["exact_accuracy"] for p in points]
        ax.plot(xs, ys, marker="o", label=name)
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(p["mode"], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("mean model steps per puzzle (all views)")
    ax.set_ylabel("exact accuracy, %")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def table(curves: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| set | mode | exact | mean steps | median | p95 | views tried | escalated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, points in curves.items():
        for p in points:
            p95 = "" if p.get("p95_steps") is None else f"{p['p95_steps']:.0f}"
            median = "" if p.get("median_steps") is None else f"{p['median_steps']:.0f}"
            lines.append(
                f"| {name} | {p['mode']} | {100 * p['exact_accuracy']:.1f}% | {p['mean_steps']:.2f} | {median} | "
                f"{p95} | {p.get('mean_views_tried', 1):.2f} | {100 * p.get('escalated', 0):.1f}% |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=WEIGHTS@SPEC")
    parser.add_argument("--budgets", default="0,48,80,128,256")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/inference_curve.json"))
    parser.add_argument("--png", type=Path, default=Path("docs/inference_curve.png"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = dict(item.split("=", 1) for item in args.sets) if args.sets else DEFAULT_SETS
    budgets = [int(b) for b in args.budgets.split(",")]
    curves: dict[str, list[dict[str, Any]]] = {}
    for name, spec in sets.items():
        log.info("%s: %s", name, spec)
        weights, _, data = spec.partition("@")
        curves[name] = measure(Path(weights), data, budgets)
        log.info("%s", table({name: curves[name]}))
    plot(curves, args.png)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    slim = {n: [{k: v for k, v in p.items() if not k.startswith("never")} for p in ps] for n, ps in curves.items()}
    args.json.write_text(json.dumps({"sets": sets, "budgets": budgets, "curves": slim}, indent=2) + "\n")
    sys.stdout.write(table(curves) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

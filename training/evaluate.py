"""Evaluate a checkpoint on held-out puzzles exactly as the server would answer them.

    python -m training.evaluate --weights weights/sudoku-9x9 --data generate:sudoku:1000:30:40 [--halt adaptive]
        [--views K] [--budget STEPS] [--max-steps N] [--halt-threshold P] [--record NAME]

Each puzzle runs its policy's whole horizon (the card's calibrated one, else `halt_max_steps`); the server's rules
are then replayed over the trace (`training.scoring`, `inference/`): with `--halt adaptive`, the default, a puzzle
halts at its first answer that passes the rule check or when its halting head reaches the calibrated threshold,
and one whose views all end unverified tries more views within `--budget` steps (the server's default budget;
with `--budget 0` a single view runs to the card's calibration for a view alone, `halting_alone`, as the server's);
`--halt q_head` is the paper's halting head alone, `--halt never` runs every step. The figures at the last step
(`never`) come from the same computation. `--views K` starts with the first K symmetries of the square. ARC
checkpoints take `--arc-mode` (see `training.evaluate_arc`). The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from inference.escalation import DEFAULT_BUDGET_STEPS, Escalation
from inference.halting import HALT_MODES, Calibration
from inference.views import views_for
from model.device import resolve_device
from model.precision import dtype_name, resolve_dtype
from model.puzzles.dihedral import NUM_DIHEDRAL
from training.evaluate_arc import add_arc_arguments, run_arc
from training.scoring import (
    data_canvas,
    evaluate_escalated,
    evaluate_model,
    evaluate_views,
    headline,
    puzzle_rules,
    record_metrics,
)

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    from model.checkpoint import load_checkpoint, read_card_metrics
    from training.data.sources import load_eval_data

    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument(
        "--data",
        required=True,
        help="a built dataset dir, a CSV file (Sudoku-Extreme / Maze-Hard format), or a generator spec "
        "generate:sudoku:N:GMIN:GMAX[:SEED] / generate:sudoku-hard:N:GMIN:GMAX:FLOOR[:SEED] / "
        "generate:maze:N:SIDE:MINPATH[:SEED[:LOOPS]]",
    )
    parser.add_argument(
        "--halt",
        choices=list(HALT_MODES),
        default="adaptive",
        help="adaptive: verified answers and the Q head halt (the server's default); q_head: the Q head alone; "
        "never: all steps",
    )
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
        "--budget",
        type=int,
        default=DEFAULT_BUDGET_STEPS,
        metavar="STEPS",
        help="Sudoku and mazes under adaptive halting: steps over all views a puzzle whose answer fails the rule "
        f"check may spend on more views, as the server's budget (default {DEFAULT_BUDGET_STEPS}; 0: none)",
    )
    parser.add_argument(
        "--record", metavar="NAME", help="also store the figures under NAME in WEIGHTS/metrics.json (model card data)"
    )
    add_arc_arguments(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.views <= NUM_DIHEDRAL:
        parser.error(f"--views must be 1..{NUM_DIHEDRAL}, got {args.views}")
    if args.budget < 0:
        parser.error(f"--budget must be 0 or more steps, got {args.budget}")
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
    calibration = Calibration.from_card(read_card_metrics(args.weights), ckpt.config)
    canvas = data_canvas(ckpt.config, data)
    policy = calibration.policy(
        args.views,
        args.halt,
        threshold=args.halt_threshold,
        max_steps=args.max_steps,
        canvas=canvas,
        budget=args.budget,
    )
    common = {
        "batch_size": args.batch_size,
        "device": device,
        "dtype": dtype,
        "limit": args.limit,
        "policy": policy,
        "rules": puzzle_rules(ckpt.config, data),
    }
    escalation = None
    if args.budget and policy.checks_answers and common["rules"] is not None:
        escalation = Escalation(args.budget, views_for(ckpt.config.family))
    if escalation is not None:
        figures = evaluate_escalated(model, data, escalation, args.views, **common)
    elif args.views == 1:
        figures = headline(evaluate_model(model, data, progress=True, **common))
    else:
        figures = evaluate_views(model, data, args.views, progress=True, **common)
    precision = dtype_name(dtype)
    summary = {"weights": str(Path(args.weights)), "data": args.data, "dtype": precision}
    summary["max_steps"] = policy.max_steps
    summary.update(figures)
    if args.record:
        record_metrics(Path(args.weights), args.record, summary)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

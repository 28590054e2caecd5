"""Extrapolation of a size-agnostic maze model: exact shortest paths by supervision step on held-out people mazes,
from one trace per size, and a halting calibration per canvas.

    python -m benchmarks.maze_extrapolation --weights weights/maze-any --seed 2026 --case 45:45:30:64 [--case ...]
        [--json benchmarks/results/maze_extrapolation.json] [--png weights/maze-any/extrapolation.png]
    python -m benchmarks.maze_extrapolation --weights weights/maze-any --seed 777 --case 45:45:12:64 --calibrate

Why one trace: `training.evaluate` runs a whole horizon and scores its last step and where the policy halts, so a
curve over horizons would take one evaluation per horizon, and a 61x61 maze costs about half a second a step on
one thread. Here each maze of a case (`H:W:N:K`, drawn by `training.data.mazes_people.held_out`, ring included, the
spec `generate:maze-people:N:H:W:SEED` of `training.evaluate`) runs K steps once, in batches of about
`CHUNK_TOKENS` cells (on a 48x48 canvas, 4 mazes a batch step 1.75x faster than 8), and every step is scored:
`exact_by_step` (all steps to that horizon, `--halt never`), `verified_by_step` (an answer passed the rule check by
then, what halting on verification alone reaches), `by_maze` (each maze's generator, loops, rooms, path length and
the first step its answer verified: which kinds of maze a size fails on) and, per horizon, the threshold sweep of
`training.calibrate` (adaptive halting as the server does it, one view, no budget).

`--calibrate` stores the calibration of the case's canvas in WEIGHTS/metrics.json in `training.calibrate`'s
layout (`halting_canvasN`, or `halting` on the model's own canvas): the shortest horizon whose best sweep row is
within `--tolerance` of the best over all horizons (bigger mazes need more steps, and a longer horizon costs only
the mazes still unverified), and the threshold `training.calibrate.choose` picks there. It reads the sweep of the
same trace, so calibrating on the mazes a card reports picks the threshold in sample; another seed avoids that at
the cost of a second trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from inference.halting import halting_key
from model.checkpoint import load_checkpoint
from model.puzzles.maze import PATH
from model.trm import TRM
from training.calibrate import choose, exact, sweep, trace_answers
from training.data.mazes_people import held_out_styles
from training.data.sources import load_eval_data
from training.scoring import check_trace, data_canvas, puzzle_rules

log = logging.getLogger("benchmarks.maze_extrapolation")

CHUNK_TOKENS = 8192
"""Cells per traced batch: small enough to stay in the CPU's caches (see `server.engine.step_chunks`)."""
HORIZONS = (4, 8, 16, 24, 32, 48, 64, 96, 128)
"""Horizons the sweep is scored at (those up to a case's K, and K itself)."""


def parse_case(text: str) -> tuple[int, int, int, int]:
    """`H:W:N:K` -> (height, width, mazes, steps)."""
    fields = [int(x) for x in text.split(":")]
    if len(fields) != 4 or min(fields) < 1:
        raise ValueError(f"case {text!r}: expected H:W:N:K, positive integers")
    h, w, n, k = fields
    return h, w, n, k


def measure(model: TRM, height: int, width: int, n: int, steps: int, seed: int) -> dict[str, Any]:
    """Trace `n` held-out mazes of `height` x `width` for `steps` steps and score every step and horizon."""
    spec = f"generate:maze-people:{n}:{height}:{width}:{seed}"
    data = load_eval_data(spec, model.config)
    rules = puzzle_rules(model.config, data)
    canvas = math.isqrt(int(data.inputs.shape[1]))
    batch = max(1, CHUNK_TOKENS // (canvas * canvas))
    start = time.perf_counter()
    answers, probs = trace_answers(model, data, batch_size=batch, max_steps=steps, rules=rules)
    seconds = time.perf_counter() - start
    labels, inputs = np.asarray(data.labels), np.asarray(data.inputs)
    verified = check_trace(rules, inputs, answers)
    if verified is None:
        raise ValueError("maze answers have a rule check; got none")
    correct = exact(answers, labels)  # (steps, n)
    horizons = sorted({h for h in HORIZONS if h < steps} | {steps})
    return {
        "data": spec,
        "canvas": canvas,
        "canvas_key": data_canvas(model.config, data),
        "mazes": n,
        "steps": steps,
        "seconds": round(seconds, 1),
        "seconds_per_maze_step": round(seconds / (n * steps), 4),
        "exact_by_step": [round(float(x), 4) for x in correct.mean(1)],
        "verified_by_step": [round(float(x), 4) for x in np.maximum.accumulate(verified, 0).mean(1)],
        "verified_mazes": [int(i) for i in np.flatnonzero(verified.any(0))],
        "by_maze": by_maze(held_out_styles(n, height, width, True, seed), labels, verified),
        "sweeps": {
            str(h): {
                "never_exact_accuracy": round(float(correct[h - 1].mean()), 4),
                "sweep": sweep(answers[:h], probs[:h], labels, verified[:h]),
            }
            for h in horizons
        },
    }


def by_maze(styles: list[dict[str, Any]], labels: np.ndarray, verified: np.ndarray) -> list[dict[str, Any]]:
    """Per maze: its style, its shortest path's length and the first step (1-based) whose answer verified, or
    None."""
    first = np.where(verified.any(0), verified.argmax(0) + 1, 0)
    return [
        {
            "generator": style["generator"],
            "loops": round(float(style["loops"]), 4),
            "rooms": int(style["rooms"]),
            "doors": bool(style["doors"]),
            "path": int((labels[i] == PATH).sum()),
            "verified_at": int(first[i]) or None,
        }
        for i, style in enumerate(styles)
    ]


def by_kind(mazes: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """(verified, mazes) for perfect mazes, mazes with loops, and mazes with open rooms."""
    counts: dict[str, tuple[int, int]] = {}
    for maze in mazes:
        kind = "rooms" if maze["rooms"] else "loops" if maze["loops"] > 0 else "perfect"
        done, total = counts.get(kind, (0, 0))
        counts[kind] = (done + (maze["verified_at"] is not None), total + 1)
    return counts


def calibration(result: dict[str, Any], tolerance: float, floor: int = 0) -> dict[str, Any]:
    """`training.calibrate`'s record for the case's canvas, with the horizon chosen as the module docstring says,
    and no shorter than `floor`, the longest horizon of a smaller calibrated canvas: a bigger maze never gets
    fewer steps than a smaller one."""
    best_by_horizon = {
        int(h): max([s["never_exact_accuracy"], *(row["exact_accuracy"] for row in s["sweep"])])
        for h, s in result["sweeps"].items()
    }
    best = max(best_by_horizon.values())
    floor = min(floor, max(best_by_horizon))
    horizon = min(h for h, acc in best_by_horizon.items() if acc >= best - tolerance and h >= floor)
    chosen = result["sweeps"][str(horizon)]
    return {
        "data": result["data"],
        "dtype": "float32",
        "threshold": choose(chosen["sweep"], chosen["never_exact_accuracy"], tolerance),
        "max_steps": horizon,
        "tolerance": tolerance,
        "never_exact_accuracy": chosen["never_exact_accuracy"],
        "puzzles": result["mazes"],
        "sweep": chosen["sweep"],
        "best_by_horizon": {str(h): acc for h, acc in best_by_horizon.items()},
    }


def smaller_horizon(card: dict[str, Any], canvas: int, own: int) -> int:
    """The longest one-view horizon calibrated on a canvas smaller than `canvas` (`own` is the model's canvas,
    whose record is `halting`); 0 when none is."""
    prefix = "halting_canvas"
    horizons = [0]
    for key, record in card.items():
        digits = key[len(prefix) :] if key.startswith(prefix) else ""
        side = own if key == "halting" else int(digits) if digits.isdigit() else None
        if side is not None and side < canvas and isinstance(record, dict):
            horizons.append(int(record.get("max_steps") or 0))
    return max(horizons)


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Exact accuracy (halt never) against supervision steps, one line per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, result in sorted(results.items(), key=lambda kv: (kv[1]["canvas"], kv[0])):
        curve = result["exact_by_step"]
        ax.plot(range(1, len(curve) + 1), [100 * x for x in curve], label=f"{name} ({result['mazes']})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("supervision steps (all run, no halting)")
    ax.set_ylabel("exact shortest paths (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, title="drawn size (mazes)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.maze_extrapolation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--case", action="append", required=True, help="H:W:N:K (repeatable)")
    parser.add_argument("--seed", type=int, default=2026, help="held_out seed (the training data uses another)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/maze_extrapolation.json"))
    parser.add_argument("--png", type=Path, default=None, help="also plot every case in --json here")
    parser.add_argument("--calibrate", action="store_true", help="store each case's canvas calibration")
    parser.add_argument("--tolerance", type=float, default=0.005)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    ckpt = load_checkpoint(args.weights)
    model = ckpt.model.eval()
    stored: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    cases: dict[str, Any] = stored.setdefault("cases", {})
    stored["weights"] = str(args.weights)
    stored["sha256"] = ckpt.sha256
    for text in args.case:
        h, w, n, k = parse_case(text)
        result = measure(model, h, w, n, k, args.seed)
        name = f"{h}x{w}" + ("" if args.seed == 2026 else f"@{args.seed}")
        cases[name] = result
        log.info(
            "%s on %dx%d: exact at step K %.3f, verified by K %.3f, %.3f s per maze-step",
            name,
            result["canvas"],
            result["canvas"],
            result["exact_by_step"][-1],
            result["verified_by_step"][-1],
            result["seconds_per_maze_step"],
        )
        log.info("%s verified by kind (verified, mazes): %s", name, by_kind(result["by_maze"]))
        if args.calibrate:
            path = args.weights / "metrics.json"
            card = json.loads(path.read_text()) if path.is_file() else {}
            floor = smaller_horizon(card, result["canvas"], model.config.grid_side)
            card[halting_key(1, result["canvas_key"])] = calibration(result, args.tolerance, floor)
            path.write_text(json.dumps(card, indent=2) + "\n")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stored, indent=2) + "\n")
    if args.png is not None:
        plot({k: v for k, v in cases.items() if "@" not in k}, args.png, f"{args.weights.name}: held-out people mazes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

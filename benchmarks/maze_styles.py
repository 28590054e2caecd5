"""Mazes as people draw them, through the server: exact shortest paths by generator, size and ring.

    python -m benchmarks.maze_styles [--sizes 9,15] [--per-generator 12] [--ring both] [--budget 128]
                                     [--json benchmarks/results/maze_styles.json]

Each maze comes from one of five classic generators (`training.data.mazes_people`: recursive backtracker, Prim,
Kruskal, Wilson, hunt-and-kill), perfect, drawn with or without a solid wall ring, and is sent to `POST /solve` of
the real app over the shipped weights, as a user would send it (rows of '#', ' ', 'S', 'G'). An answer counts when
the server's own rule check passes (`verified`): a shortest S-G path marked on open cells, the maze otherwise
unchanged. The sizes are the drawn grid's, ring included.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from model.puzzles.maze import tokens_to_chars
from server.app import create_app
from server.settings import Settings
from training.data.mazes_people import GENERATORS, generate


def mazes(side: int, per_generator: int, ring: bool, seed: int) -> list[tuple[str, list[str]]]:
    out = []
    for k, name in enumerate(GENERATORS):
        questions, _, _ = generate(per_generator, side, generator=name, ring=ring, unique=False, seed=seed + k)
        out += [(name, tokens_to_chars(q.reshape(side, side))) for q in questions]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.maze_styles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--sizes", default="9,15")
    parser.add_argument("--per-generator", type=int, default=12)
    parser.add_argument("--ring", choices=["yes", "no", "both"], default="both")
    parser.add_argument("--budget", type=int, default=None, help="budget.steps of each request (default: server's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=5150)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/maze_styles.json"))
    args = parser.parse_args(argv)
    rings = {"yes": [True], "no": [False], "both": [True, False]}[args.ring]
    settings = Settings(weights_dir=args.weights_dir, threads=args.threads, log_level="warning", request_timeout_s=600)
    rows: list[dict[str, Any]] = []
    with TestClient(create_app(settings)) as client:
        for side in (int(s) for s in args.sizes.split(",")):
            for ring in rings:
                if side < 3 + 2 * ring:
                    continue
                tally: dict[str, list[bool]] = defaultdict(list)
                steps: list[int] = []
                model = ""
                for name, grid in mazes(side, args.per_generator, ring, args.seed + side):
                    body: dict[str, Any] = {"puzzle": "maze", "grid": grid}
                    if args.budget is not None:
                        body["budget"] = {"steps": args.budget}
                    response = client.post("/solve", json=body)
                    answer = response.json()
                    ok = response.status_code == 200 and answer["verified"] is True
                    tally[name].append(ok)
                    if response.status_code == 200:
                        steps.append(answer.get("steps_total", answer["steps_used"]))
                        model = answer["model"]
                total = [ok for oks in tally.values() for ok in oks]
                row = {
                    "side": side,
                    "ring": ring,
                    "model": model,
                    "mazes": len(total),
                    "exact": sum(total) / len(total),
                    "by_generator": {k: sum(v) / len(v) for k, v in tally.items()},
                    "mean_steps": sum(steps) / max(1, len(steps)),
                }
                rows.append(row)
                sys.stdout.write(json.dumps(row) + "\n")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    sys.stdout.write(
        "| drawn size | ring | model | mazes | exact | mean steps (all views) |\n|---|---|---|---|---|---|\n"
    )
    for r in rows:
        ring = "yes" if r["ring"] else "no"
        sys.stdout.write(
            f"| {r['side']}x{r['side']} | {ring} | {r['model']} | {r['mazes']} | {100 * r['exact']:.1f}% | "
            f"{r['mean_steps']:.1f} |\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

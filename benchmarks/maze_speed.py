"""Inference speed of the size-agnostic maze model against the paper's TRM-Att 30x30, at one batch size.

    python -m benchmarks.maze_speed [--batch 64] [--dtypes float32,bfloat16] [--json benchmarks/results/maze_speed.json]

Both models are built from their presets with random weights (speed does not depend on what they learned) and
timed on one supervision step of a fresh batch, in eager torch and in the row chunks the server's CPU engine runs
(`--chunk-tokens`, 0 for one pass), on the canvas each would run a maze on:
the size-agnostic model (`maze-any-cpu`) on the canvas `inference.canvas` picks for the maze side (16 for 15x15,
40 for 30x30, with the wall margin), the paper's `maze-hard` model on its 30x30 grid. Puzzles/s counts a full
16-step horizon for both, the paper's evaluation; a model that halts earlier or later moves that figure, so the
per-step throughput (puzzle-steps/s) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.model import cpu_model, write_results
from inference.canvas import canvas_for
from model.factory import build_model
from model.precision import autocast
from model.trm import TRM, Carry
from server.engine import step_chunks
from server.settings import CPU_CHUNK_TOKENS
from training.config import load_preset

log = logging.getLogger("benchmarks.maze_speed")

HORIZON = 16
CASES = (("maze-any-cpu", 15), ("maze-any-cpu", 30), ("maze-hard", 30))


def step_seconds(model: TRM, tokens: int, batch: int, dtype: torch.dtype, repeats: int, chunk_tokens: int) -> float:
    """Median wall time of one supervision step over `repeats` steps, after one untimed step, in the row chunks
    the server's CPU engine uses (`server.engine.step_chunks`)."""
    inputs = torch.randint(1, 5, (batch, tokens))
    vectors = torch.zeros(batch, model.config.hidden_size)
    sized = {} if tokens == model.config.seq_len else {"num_tokens": tokens}
    times = []
    with torch.inference_mode():
        carry = model.initial_carry(batch, **sized)
        for i in range(repeats + 1):
            start = time.perf_counter()
            with autocast(torch.device("cpu"), dtype):
                y, z, *_ = step_chunks(model, carry, inputs, vectors, chunk_tokens)
            carry = Carry(y, z)
            if i:
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(batch: int, dtypes: list[str], repeats: int, chunk_tokens: int) -> list[dict[str, Any]]:
    rows = []
    for preset_name, side in CASES:
        config = load_preset(preset_name).model
        canvas = canvas_for(side, config.grid_side) if config.mixer == "conv" else config.grid_side
        if config.mixer != "conv" and side > canvas:
            raise ValueError(f"{preset_name} cannot run {side}x{side} mazes")
        torch.manual_seed(0)
        model = build_model(replace(config, num_puzzle_ids=1)).eval()
        params = sum(p.numel() for p in model.parameters())
        for name in dtypes:
            dtype = getattr(torch, name)
            seconds = step_seconds(model, canvas * canvas, batch, dtype, repeats, chunk_tokens)
            row = {
                "model": preset_name,
                "mixer": config.mixer,
                "parameters": params,
                "maze_side": side,
                "canvas": canvas,
                "batch": batch,
                "dtype": name,
                "chunk_tokens": chunk_tokens,
                "step_s": round(seconds, 4),
                "puzzle_steps_per_s": round(batch / seconds, 2),
                "puzzles_per_s_at_16_steps": round(batch / seconds / HORIZON, 3),
            }
            log.info("%s", json.dumps(row))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per cell (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument(
        "--chunk-tokens", type=int, default=CPU_CHUNK_TOKENS, help="cells per pass, as the server (0: one pass)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    rows = measure(args.batch, dtypes, args.repeats, args.chunk_tokens)
    paper = {r["dtype"]: r["puzzles_per_s_at_16_steps"] for r in rows if r["model"] == "maze-hard"}
    lines = [
        "| model | maze | canvas | dtype | step s | puzzle-steps/s | puzzles/s (16 steps) | vs paper 30x30 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["puzzles_per_s_at_16_steps"] / paper[r["dtype"]] if paper.get(r["dtype"]) else float("nan")
        lines.append(
            f"| {r['model']} ({r['mixer']}, {r['parameters'] / 1e6:.2f}M) | {r['maze_side']}x{r['maze_side']} | "
            f"{r['canvas']}x{r['canvas']} | {r['dtype']} | {r['step_s']} | {r['puzzle_steps_per_s']} | "
            f"{r['puzzles_per_s_at_16_steps']} | {ratio:.1f}x |"
        )
    table = "\n".join(lines)
    logging.getLogger().info("\n%s", table)
    if args.json is not None:
        write_results({"cpu": cpu_model(), "threads": torch.get_num_threads(), "rows": rows}, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""TRM vs HRM at matched compute: trained on the same generated Sudoku data, evaluated on the same held-out puzzles.

    python -m benchmarks.compare_models [--steps 600] [--eval 500] [--threads 1] [--out-dir runs/compare]
                                        [--trm DIR] [--hrm DIR] [--trm-preset sudoku-cpu] [--hrm-preset hrm-sudoku-cpu]
                                        [--json benchmarks/results/compare_models.json]

Each model is trained by the project's own entry point (`training.run.main`, as `make train` runs it) from its
preset with `train.max_steps=--steps`, or loaded from a checkpoint directory given with `--trm` / `--hrm`. Both
presets must have the same `[data]` section and both train from ONE dataset directory (`--data-dir`, default the
TRM preset's cache, which `make train` builds too), so the two models see the same puzzles. The default presets
match compute per supervision step: the same 2-layer block, called 10 times per step by both architectures.

Both are then scored by `training.evaluate.evaluate_model` on the same `--eval` generated puzzles (a generator seed
the training data does not use), with adaptive halting (the checkpoint's calibrated threshold, else 0.5) and with
halt=never, and one inference supervision step at batch 64 is timed for each, in interleaved slices so background
load hits both alike. Prints one side-by-side table; writes it beside the JSON as `.txt`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.model import WARMUP_STEPS, Step, cpu_model, timed, torch_step, write_results
from inference.halting import Calibration
from model.checkpoint import Checkpoint, load_checkpoint, read_card_metrics
from model.device import resolve_device
from model.trm import TRM, count_trainable_parameters
from training import run
from training.config import Preset, load_preset
from training.data.dataset import PuzzleSet
from training.data.sources import load_eval_data
from training.scoring import evaluate_model

log = logging.getLogger("benchmarks.compare_models")

ARCHS = ("trm", "hrm")
STEP_BATCH = 64  # the batch the step time is measured at: the serving slot count and sudoku-cpu's training batch


def same_data(presets: dict[str, Preset]) -> dict[str, Any]:
    """The `[data]` section both presets share (where it is cached aside); an error if they differ."""
    sections = {arch: {k: v for k, v in asdict(p.data).items() if k != "cache_dir"} for arch, p in presets.items()}
    if sections["trm"] != sections["hrm"]:
        diff = sorted(k for k in sections["trm"] if sections["trm"][k] != sections["hrm"].get(k))
        raise ValueError(
            f"presets {presets['trm'].name} and {presets['hrm'].name} train on different data (data.{diff}); "
            "a comparison needs one [data] section"
        )
    return sections["trm"]


def train_model(preset: str, overrides: list[str], run_dir: Path, device: str) -> dict[str, Any]:
    """Train with `python -m training.run` in process; returns the summary line it prints (stdout keeps the table)."""
    argv = ["--preset", preset, "--run-dir", str(run_dir), "--device", device]
    for item in overrides:
        argv += ["--set", item]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run.main(argv)
    if code != 0:
        raise RuntimeError(f"training {preset} exited with {code}")
    return dict(json.loads(out.getvalue().strip().splitlines()[-1]))


def training_record(weights: Path) -> dict[str, Any]:
    """Steps and training wall time from the metrics.jsonl of the checkpoint's run directory, when there is one.

    The last `train` row's `elapsed` is the loop's time to its final step, before the closing evaluation and save.
    """
    for path in (weights / "metrics.jsonl", weights.parent / "metrics.jsonl"):
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            train_rows = [r for r in rows if r.get("kind") == "train"]
            if train_rows:
                return {"steps": train_rows[-1]["step"], "wall_seconds": train_rows[-1].get("elapsed")}
    return {"steps": None, "wall_seconds": None}


def inference_step(model: TRM, data: PuzzleSet, batch: int) -> Step:
    """One supervision step on `batch` held-out puzzles, each call feeding its carry into the next as serving does."""
    rows = np.resize(np.arange(len(data)), batch)  # repeats puzzles when there are fewer than `batch`
    tokens = torch.as_tensor(np.asarray(data.inputs)[rows], device=model.y_init.device).long()
    vectors = model.puzzle_emb[torch.zeros(batch, dtype=torch.long)]
    carry = model.initial_carry(batch)
    return torch_step(model.step, (tokens, vectors, carry.y, carry.z))


def step_times_ms(
    models: dict[str, TRM], data: PuzzleSet, batch: int, seconds: float, repeats: int
) -> dict[str, float]:
    """Median milliseconds per inference step of each model; the models' timing slices interleave."""
    steps = {arch: inference_step(model, data, batch) for arch, model in models.items()}
    times: dict[str, list[float]] = {arch: [] for arch in steps}
    for step in steps.values():
        for _ in range(WARMUP_STEPS):
            step()
    for _ in range(repeats):
        for arch, step in steps.items():
            times[arch] += timed(step, seconds / repeats)[0]
    return {arch: round(1000 * statistics.median(t), 3) for arch, t in times.items()}


def describe(arch: str, ckpt: Checkpoint, source: str, record: dict[str, Any]) -> dict[str, Any]:
    """The static half of a row: what the model is and how it was trained."""
    summary = run.dry_run(Preset(ckpt.name, ckpt.config))
    return {
        "arch": arch,
        "preset": ckpt.config.training.get("preset", ""),
        "source": source,
        "weights": str(ckpt.path),
        "trainable_parameters": count_trainable_parameters(ckpt.model),
        "net_calls_per_step": summary["net_calls_per_step"],
        "grad_net_calls_per_step": summary["grad_net_calls_per_step"],
        "train_steps": record["steps"],
        "train_wall_seconds": record["wall_seconds"],
        "train_data": ckpt.config.training.get("data", ""),
    }


def fmt(value: Any, spec: str = "") -> str:
    return "n/a" if value is None else format(value, spec)


def format_table(results: dict[str, Any]) -> str:
    ev = results["eval"]
    lines = [
        f"TRM vs HRM, training data {results['train_data'] or 'as loaded'}; {ev['puzzles']} held-out puzzles "
        f"({ev['spec']}); "
        f"step = one inference supervision step at batch {results['step_batch']}; {results['device']} "
        f"{results['cpu']}, {results['threads']} threads, torch {results['torch']}",
        "| arch | preset | params | net calls/step | train steps | train wall s | step ms | exact (adaptive) "
        "| cells (adaptive) | mean steps | exact (halt never) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["models"].values():
        lines.append(
            f"| {row['arch']} | {row['preset']} | {row['trainable_parameters']:,} | {row['net_calls_per_step']} | "
            f"{fmt(row['train_steps'])} | {fmt(row['train_wall_seconds'], '.1f')} | {row['step_ms']:.2f} | "
            f"{row['adaptive_exact_accuracy']:.3f} | {row['adaptive_cell_accuracy']:.3f} | {row['mean_steps']:.2f} | "
            f"{row['exact_accuracy']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps (train.max_steps) of each model")
    parser.add_argument("--eval", type=int, default=500, help="held-out puzzles to evaluate both models on")
    parser.add_argument("--eval-seed", type=int, default=12345, help="generator seed of the held-out puzzles")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training, evaluation and timing")
    parser.add_argument(
        "--out-dir", type=Path, default=Path("runs/compare"), help="run directories <out-dir>/{trm,hrm}"
    )
    parser.add_argument("--data-dir", type=Path, help="shared training dataset (default: the TRM preset's cache)")
    parser.add_argument("--trm", type=Path, help="load this TRM checkpoint directory instead of training one")
    parser.add_argument("--hrm", type=Path, help="load this HRM checkpoint directory instead of training one")
    parser.add_argument("--trm-preset", default="sudoku-cpu")
    parser.add_argument("--hrm-preset", default="hrm-sudoku-cpu")
    parser.add_argument("--step-seconds", type=float, default=3.0, help="wall seconds of step timing per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/compare_models.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))

    presets = {"trm": load_preset(args.trm_preset), "hrm": load_preset(args.hrm_preset)}
    for arch, preset in presets.items():
        if preset.model.arch != arch:
            raise ValueError(f"--{arch}-preset {preset.name} builds arch {preset.model.arch!r}, not {arch!r}")
    data = same_data(presets)
    data_dir = args.data_dir or presets["trm"].cache_dir
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.eval_every_steps={args.steps}",  # evaluate (and save the checkpoint) once, at the end
        "train.eval_samples=64",  # the trainer's own evaluation only gates the save; ours below is the measure
        f"train.threads={args.threads}",
        "train.compile=off",  # the same eager code path for both (the trainer compiles only TRM's `net`)
        f"data.cache_dir={data_dir}",
    ]

    checkpoints: dict[str, Checkpoint] = {}
    rows: dict[str, dict[str, Any]] = {}
    for arch, preset in presets.items():
        given: Path | None = getattr(args, arch)
        if given is None:
            run_dir = args.out_dir / arch
            log.info("training %s (%s) for %d steps in %s", arch, preset.name, args.steps, run_dir)
            summary = train_model(preset.name, overrides, run_dir, args.device)
            log.info("trained %s: %s", arch, summary)
            weights, source = run_dir / "checkpoint", "trained"
        else:
            weights, source = given, "loaded"
        record = training_record(weights)
        ckpt = load_checkpoint(weights)
        if ckpt.config.arch != arch:
            raise ValueError(f"{weights} holds arch {ckpt.config.arch!r}, not {arch!r}")
        checkpoints[arch] = ckpt
        rows[arch] = describe(arch, ckpt, source, record)
    if checkpoints["trm"].config.seq_len != checkpoints["hrm"].config.seq_len:
        raise ValueError("the two checkpoints solve different puzzle sizes")

    spec = f"generate:sudoku:{args.eval}:{data['givens_min']}:{data['givens_max']}:{args.eval_seed}"
    held_out = load_eval_data(spec, checkpoints["trm"].config)
    models = {arch: ckpt.model.to(device) for arch, ckpt in checkpoints.items() if isinstance(ckpt.model, TRM)}
    step_ms = step_times_ms(models, held_out, STEP_BATCH, args.step_seconds, repeats=3)
    for arch, ckpt in checkpoints.items():
        # The Q head alone: the comparison is of the two models' own halting, not of the rule check.
        policy = Calibration.from_card(read_card_metrics(ckpt.path), ckpt.config).policy(mode="q_head")
        result = evaluate_model(models[arch], held_out, device=device, policy=policy)
        rows[arch].update(
            step_ms=step_ms[arch],
            adaptive_exact_accuracy=result["adaptive_exact_accuracy"],
            adaptive_cell_accuracy=result["adaptive_cell_accuracy"],
            mean_steps=result["mean_steps"],
            exact_accuracy=result["exact_accuracy"],  # halt never: every puzzle runs halt_max_steps
            cell_accuracy=result["cell_accuracy"],
            max_steps=result["max_steps"],
            halt_threshold=policy.threshold,
            eval_seconds=result["seconds"],
        )

    results: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "threads": args.threads,
        "torch": torch.__version__,
        "steps": args.steps,
        "step_batch": STEP_BATCH,
        "train_data": str(data_dir) if any(r["source"] == "trained" for r in rows.values()) else None,
        "data": data,
        "eval": {"spec": spec, "puzzles": len(held_out)},
        "models": rows,
    }
    table = format_table(results)
    sys.stdout.write(table + "\n")
    write_results(results, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train a TRM checkpoint from a preset.

    python -m training.run --preset sudoku-cpu [--set train.lr=3e-4 ...] [--out weights/sudoku-9x9]
    python -m training.run --preset sudoku-extreme-mlp --dry-run
    torchrun --nproc-per-node 4 -m training.run --preset maze-hard

The run directory (default runs/<preset>) receives metrics.jsonl, metrics.png, the latest EMA checkpoint and
the resumable state; `--resume` continues from it. `--out` copies the final checkpoint to a weights directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from model.device import resolve_device
from model.factory import build_model
from model.trm import count_trainable_parameters
from training.config import Preset, available_presets, load_preset

if TYPE_CHECKING:
    from training.loop import Trainer

log = logging.getLogger("training.run")


def dry_run(preset: Preset) -> dict[str, object]:
    """Build the preset's model and describe it without touching data."""
    model = build_model(preset.model)
    cfg = preset.model
    summary: dict[str, object] = {
        "preset": preset.name,
        "trainable_parameters": count_trainable_parameters(model),
        "puzzle_table_rows": cfg.num_puzzle_ids,
        "net_calls_per_step": cfg.h_cycles * (cfg.l_cycles + 1),
        "grad_net_calls_per_step": 2 if cfg.arch == "hrm" else cfg.l_cycles + 1,
        "sequence_length": cfg.total_len,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True, help=f"name ({', '.join(available_presets())}) or TOML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and parameter count")
    parser.add_argument("--run-dir", type=Path, help="default runs/<preset>")
    parser.add_argument("--out", type=Path, help="copy the final checkpoint here (e.g. weights/sudoku-9x9)")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/state")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log-every", type=int, default=25, help="optimizer steps per metrics.jsonl line")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="end the run after this many seconds of training, evaluated and saved as at its last step (0: none)",
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=0,
        metavar="STEP",
        help="end the run at this optimizer step, evaluated and saved as at its last step; the learning-rate "
        "schedule still runs to train.max_steps, so this reproduces a run stopped early at that step (0: none)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    preset = load_preset(args.preset, args.overrides)
    if args.dry_run:
        sys.stdout.write(json.dumps(preset.to_dict(), indent=2) + "\n")
        sys.stdout.write(json.dumps(dry_run(preset)) + "\n")
        return 0
    return train(preset, args)


def out_of_time(trainer: Trainer, start: float, limit: float) -> bool:
    """Whether `limit` seconds have passed since `start` (never, for 0). Under torchrun the ranks agree: one
    rank past the limit stops them all, so no rank waits forever in a collective the others left."""
    if limit <= 0:
        return False
    late = torch.tensor([float(time.time() - start >= limit)], device=trainer.device)
    return bool(trainer.dist.sum_(late).item() > 0)


def train(preset: Preset, args: argparse.Namespace) -> int:
    # Imported here so a dry run needs neither data builders nor the loop.
    from training.data.sources import augmentation_for, build_or_load, fit_to_data
    from training.loop import Trainer, summarize
    from training.metrics import MetricsLog
    from training.state import load_state, save_state

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    run_dir: Path = args.run_dir or Path("runs") / preset.name
    run_dir.mkdir(parents=True, exist_ok=True)
    meta, train_data, test_data = build_or_load(preset)
    try:
        preset = fit_to_data(preset, meta)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    trainer = Trainer(preset, train_data, test_data, run_dir, augmentation_for(meta), device, resuming=args.resume)
    main_rank = trainer.dist.rank == 0
    if args.resume:
        load_state(trainer, run_dir / "state")
        log.info("resumed at step %d", trainer.step)
    if main_rank:  # the only rank that writes the log, so the only one that may trim it
        metrics = MetricsLog(run_dir, resume_step=trainer.step if args.resume else None)
        (run_dir / "preset.json").write_text(json.dumps(preset.to_dict(), indent=2))
        log.info(
            "%s: %d trainable parameters, %d train examples, %d steps (%d per epoch), eval every %d",
            preset.name,
            trainer.trainable_parameters,
            len(train_data),
            trainer.total_steps,
            trainer.steps_per_epoch,
            trainer.eval_every,
        )

    end = min(trainer.total_steps, args.stop_at) if args.stop_at > 0 else trainer.total_steps
    bar = tqdm(
        total=end,
        initial=trainer.step,
        desc=preset.name,
        unit="step",
        dynamic_ncols=True,
        disable=args.no_progress or not main_rank,
        mininterval=2.0,
    )
    window: list[dict[str, float]] = []
    start = time.time()
    last_eval: dict[str, object] = {}
    done = trainer.step >= end
    while not done:
        stats = trainer.train_step()
        window.append(stats)
        bar.update(1)
        done = trainer.step >= end or out_of_time(trainer, start, args.time_limit)
        if trainer.step % args.log_every == 0 or done:
            avg = summarize(window)
            window.clear()
            bar.set_postfix(
                loss=f"{avg['lm_loss']:.3f}",
                acc=f"{avg['accuracy']:.3f}",
                exact=f"{avg['exact_accuracy']:.3f}",
                steps=f"{avg['steps']:.1f}",
            )
            if main_rank:
                metrics.write({"kind": "train", "step": trainer.step, "elapsed": round(time.time() - start, 1), **avg})
        if trainer.step % trainer.eval_every == 0 or done:
            last_eval = trainer.evaluate()
            if main_rank:
                metrics.write({"kind": "eval", "step": trainer.step, **last_eval})
                trainer.save_weights(run_dir / "checkpoint")
                if preset.model.num_puzzle_ids > 1:  # ARC: the names of the puzzle-table rows travel with it
                    for name in ("identifiers.json", "test_puzzles.json"):
                        if (preset.cache_dir / name).is_file():
                            shutil.copy2(preset.cache_dir / name, run_dir / "checkpoint" / name)
                metrics.plot()
                tqdm.write(f"eval @ {trainer.step}: {json.dumps(last_eval)}", file=sys.stderr)
            save_state(trainer, run_dir / "state")
        elif trainer.cfg.save_every_steps and trainer.step % trainer.cfg.save_every_steps == 0:
            save_state(trainer, run_dir / "state")
    bar.close()
    if main_rank:
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "model.safetensors", "identifiers.json", "test_puzzles.json"):
                if (run_dir / "checkpoint" / name).is_file():
                    shutil.copy2(run_dir / "checkpoint" / name, args.out / name)
            shutil.copy2(run_dir / "metrics.png", args.out / "training_curves.png")
        summary = {
            "preset": preset.name,
            "steps": trainer.step,
            "wall_seconds": round(time.time() - start, 1),
            "trainable_parameters": trainer.trainable_parameters,
            **last_eval,
        }
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

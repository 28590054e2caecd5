"""Training throughput: optimizer steps per second and peak memory of a preset, per precision and compile setting.

    python -m benchmarks.train --preset sudoku-cpu [--variants float32/off,float32/on] [--steps 20] [--warmup 3]
    python -m benchmarks.train --preset sudoku-extreme-mlp --set data.builder=sudoku --set data.n_train=8192
                               [--json benchmarks/results/train.json]

It runs the real training step (`training.loop.Trainer.train_step`: deep supervision with the carry, ACT halting,
optimizer, EMA) on the preset's data, so the figures are what `python -m training.run` gets per step. Each variant
(`DTYPE/COMPILE`, e.g. `bfloat16/on`) builds a fresh trainer, runs `--warmup` steps (where `torch.compile` builds
its kernels; their wall time is reported as `warmup_s`), then times `--steps` steps. Memory is the peak CUDA
allocation over the timed steps on a GPU; on a CPU it is the process's peak resident size, which only grows, so
read it for the first variant only.

The paper presets read public CSVs that a fresh machine lacks; `--set data.builder=sudoku` (or `maze`) swaps in the
generator, which gives the same shapes, and the step time does not depend on what the puzzles say.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.model import cpu_model, write_results
from model.device import resolve_device
from training.config import Preset, load_preset
from training.data.dataset import DatasetMeta, PuzzleSet
from training.data.sources import augmentation_for, build_or_load, fit_to_data
from training.loop import Trainer

log = logging.getLogger("benchmarks.train")

DTYPES = ("float32", "bfloat16")
COMPILES = ("off", "on")


def parse_variants(text: str, device: torch.device) -> list[tuple[str, str]]:
    """`float32/off,bfloat16/on` as (dtype, compile) pairs; empty text gives the default matrix for the device."""
    if not text:
        # bf16 belongs on a CPU too: with bf16 in hardware (AMX, AVX512-BF16) it was about twice as fast as fp32 here.
        text = "float32/off,bfloat16/off,bfloat16/on" if device.type == "cuda" else "float32/off,float32/on,bfloat16/on"
    variants = []
    for item in text.split(","):
        dtype, _, compile_ = item.strip().partition("/")
        if dtype not in DTYPES or compile_ not in COMPILES:
            raise ValueError(f"variant {item!r}: want DTYPE/COMPILE with DTYPE in {DTYPES} and COMPILE in {COMPILES}")
        variants.append((dtype, compile_))
    return variants


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(
    preset: Preset, data: tuple[DatasetMeta, PuzzleSet], device: torch.device, warmup: int, steps: int
) -> dict[str, Any]:
    """Warm-up then timed optimizer steps of one trainer built from `preset` on `data` (its dataset, loaded once)."""
    meta, train_data = data
    preset = fit_to_data(preset, meta)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(preset, train_data, None, Path(run_dir), augmentation_for(meta), device)
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        warmup_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        window = []
        start = time.perf_counter()
        for _ in range(steps):
            window.append(trainer.train_step())  # each step ends in a host sync (its stats), so timing is honest
        seconds = (time.perf_counter() - start) / steps
        return {
            "seconds_per_step": round(seconds, 4),
            "steps_per_second": round(1 / seconds, 3),
            "examples_per_second": round(preset.train.global_batch_size / seconds, 1),
            "warmup_s": round(warmup_s, 1),
            "peak_memory_mib": round(peak_memory_mib(device), 1),
            "last_lm_loss": round(window[-1]["lm_loss"], 4),
            "skipped_updates": trainer.skipped_steps,  # non-finite steps: fast but useless, so they are shown
            "trainable_parameters": trainer.trainable_parameters,
        }


def format_table(results: dict[str, Any]) -> str:
    head = f"{results['preset']} on {results['device']}, global batch {results['global_batch_size']}"
    lines = [
        head,
        "",
        "| variant | s/step | steps/s | examples/s | warm-up s | peak MiB | updates skipped |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["variants"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | n/a ({row['error']}) | | | | | |")
            continue
        lines.append(
            f"| {row['variant']} | {row['seconds_per_step']:.3f} | {row['steps_per_second']:.2f} | "
            f"{row['examples_per_second']:.0f} | {row['warmup_s']:.1f} | {row['peak_memory_mib']:.0f} | "
            f"{row['skipped_updates']} of {results['warmup'] + results['steps']} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--variants", default="", help="comma list of DTYPE/COMPILE (default: per device)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here (and the table beside it as .txt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    try:
        device = resolve_device(args.device)
        variants = parse_variants(args.variants, device)
    except ValueError as exc:
        parser.error(str(exc))
    results: dict[str, Any] = {
        "preset": args.preset,
        "overrides": args.overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
        "variants": [],
    }
    # Variants differ only in [train], so they share one dataset.
    meta, train_data, _ = build_or_load(load_preset(args.preset, args.overrides))
    for dtype, compile_ in variants:
        preset = load_preset(args.preset, [*args.overrides, f"train.dtype={dtype}", f"train.compile={compile_}"])
        results["global_batch_size"] = preset.train.global_batch_size
        row: dict[str, Any] = {"variant": f"{dtype}/{compile_}"}
        log.info("%s: %s", preset.name, row["variant"])
        try:
            row.update(measure(preset, (meta, train_data), device, args.warmup, args.steps))
        except Exception as exc:  # one failing variant (no C++ compiler, out of memory) must not hide the others
            log.exception("variant %s failed", row["variant"])
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
        results["variants"].append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = format_table(results)
    sys.stdout.write(table + "\n")
    if args.json:
        write_results(results, table, args.json)
    return 0 if all("error" not in row for row in results["variants"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())

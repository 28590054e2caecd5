"""The GPU check in one command: environment, correctness, serving, training and a training burst, in a budget.

    python -m benchmarks.gpu --out DIR [--budget-s 480] [--weights-dir weights] [--only PART,...] [--cap PART=S]
    python -m benchmarks.gpu --smoke --out DIR      # the same code on a CPU at tiny sizes (part of the tests)
    make gpu-check                                  # installs what it needs, then writes benchmarks/results/gpu/

A GPU is lent for minutes at a time, so the check runs unattended and must bring back whatever it finished.
Each part runs in its own process group under its own time cap (`Plan.caps`; the burst gets whatever the
budget has left), writes every result the moment it has it, and is killed with everything it started (servers
included) at its cap; `DIR/report.json` and `DIR/report.md` are rewritten after every part. The parts:

1. environment: GPU, driver, CUDA, cuDNN, torch, ONNX Runtime and its providers.
2. correctness: every checkpoint under `--weights-dir`, run by the server's engine on the device in fp32 and bf16,
   against CPU fp32 (argmax agreement per supervision step); the ONNX engine (CUDA provider, IO binding) against
   the torch engine; the paper-size configurations with random weights, device against CPU.
3. serving: the real server on the device for the shipped Sudoku model and a random paper-size Sudoku TRM-MLP,
   continuous / static / sequential scheduling at each concurrency, other precisions and torch.compile at the
   target concurrency, and the raw batched model (the server's own engine with no HTTP: its ceiling).
4. training: steps/s and peak memory of the paper presets on generated data (`benchmarks.train`).
5. burst: `python -m training.run` for the time left; its checkpoint comes back in `DIR/burst`.

The targets (`report.md`, top): continuous >= 5x sequential at concurrency 64, server >= 0.85 of the raw model,
shipped checkpoints' CUDA-fp32 against CPU-fp32 agreement >= 0.999. A smoke run computes them too and marks
them as not applying, since a CPU is not what they are about.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks import gpu_checks as checks
from benchmarks.gpu_report import render, targets

log = logging.getLogger("benchmarks.gpu")

PARTS = ("environment", "correctness", "serving", "training", "burst")


def run_part(name: str, cap: float, argv: list[str], log_file: Path) -> tuple[str, float]:
    """Run one part in a new process group; at `cap` seconds the whole group is killed. Returns (status, s)."""
    start = time.perf_counter()
    with log_file.open("a") as sink:
        sink.write(f"\n==== {name} (cap {cap:.0f} s) ====\n")
        sink.flush()
        cmd = [sys.executable, "-m", "benchmarks.gpu", "--part", name, *argv]
        proc = subprocess.Popen(cmd, stdout=sink, stderr=sink, start_new_session=True)
        try:
            code = proc.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"timed out at its {cap:.0f} s cap", time.perf_counter() - start
        finally:
            with contextlib.suppress(ProcessLookupError):  # a part that ended may still have left a server behind
                os.killpg(proc.pid, signal.SIGKILL)
    status = "ok" if code == 0 else f"failed (exit {code}; see the log)"
    return status, time.perf_counter() - start


def run_one_part(args: argparse.Namespace, plan: checks.Plan) -> int:
    """The child side of `run_part`: one part, its results into `--part-file`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if plan.threads:
        torch.set_num_threads(plan.threads)
    record = checks.Record(args.part_file)
    scratch = args.scratch
    if args.part == "environment":
        checks.environment(record, plan)
    elif args.part == "correctness":
        checks.correctness(record, plan, args.weights_dir)
    elif args.part == "serving":
        checks.serving(record, plan, args.weights_dir, scratch)
    elif args.part == "training":
        checks.training(record, plan, scratch)
    elif args.part == "burst":
        checks.burst(record, plan, args.out, scratch, args.seconds, args.steps_per_s)
    return 0


def steps_per_second(training: dict[str, Any], preset: str) -> float | None:
    row = training.get(preset)
    return row.get("steps_per_second") if isinstance(row, dict) else None


def write_report(out: Path, report: dict[str, Any]) -> None:
    report["targets"] = targets(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render(report))


def parse_caps(items: list[str]) -> dict[str, float]:
    caps = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in PARTS or not value:
            raise ValueError(f"--cap {item!r}: want PART=SECONDS with PART in {', '.join(PARTS)}")
        caps[name] = float(value)
    return caps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for report.json, report.md, burst/")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (the test suite's run)")
    parser.add_argument("--budget-s", type=float, help="wall seconds for all parts (default 480; smoke 300)")
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of parts to run, in the usual order")
    parser.add_argument("--cap", action="append", default=[], metavar="PART=SECONDS", help="change a part's cap")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--part-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--steps-per-s", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = checks.Plan.smoke_plan() if args.smoke else checks.Plan()
    try:
        plan = replace(plan, caps={**plan.caps, **parse_caps(args.cap)})
        only = [p.strip() for p in args.only.split(",") if p.strip()]
        if unknown := sorted(set(only) - set(PARTS)):
            raise ValueError(f"--only: unknown parts {unknown}; choose from {', '.join(PARTS)}")
    except ValueError as exc:
        parser.error(str(exc))
    if args.part:
        return run_one_part(args, plan)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    budget = args.budget_s or (300.0 if args.smoke else 480.0)
    deadline = time.monotonic() + budget
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = args.out / "gpu-check.log"
    log_file.write_text("")
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.gpu", *(argv if argv is not None else sys.argv[1:])]),
        "smoke": args.smoke,
        "budget_s": budget,
        "plan": asdict(plan),
        "parts": {},
    }
    with tempfile.TemporaryDirectory(prefix="trm-gpu-check-") as tmp:
        scratch = Path(tmp)
        common = ["--out", str(args.out), "--weights-dir", str(args.weights_dir), "--scratch", str(scratch)]
        common += ["--smoke"] if args.smoke else []
        for cap_item in args.cap:
            common += ["--cap", cap_item]
        for name in PARTS:
            if name not in only:
                continue
            left = deadline - time.monotonic()
            cap = min(plan.caps.get(name, left), left)
            part_file = scratch / f"{name}.json"
            extra = ["--part-file", str(part_file)]
            if name == "burst":
                training = report["parts"].get("training", {}).get("result", {})
                rate = steps_per_second(training, plan.burst_preset)
                extra += ["--seconds", f"{cap:.0f}"] + (["--steps-per-s", str(rate)] if rate else [])
            if cap < (plan.burst_min_s if name == "burst" else 1.0):
                report["parts"][name] = {"status": f"skipped: {max(0.0, cap):.0f} s of the budget left"}
                write_report(args.out, report)
                continue
            log.info("%s: up to %.0f s", name, cap)
            status, seconds = run_part(name, cap, [*common, *extra], log_file)
            result = json.loads(part_file.read_text()) if part_file.is_file() else {}
            report["parts"][name] = {
                "status": status,
                "seconds": round(seconds, 1),
                "cap_s": round(cap),
                "result": result,
            }
            log.info("%s: %s in %.0f s", name, status, seconds)
            write_report(args.out, report)
    sys.stdout.write((args.out / "report.md").read_text())
    return (
        0
        if all(part["status"] == "ok" or part["status"].startswith("skipped") for part in report["parts"].values())
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())

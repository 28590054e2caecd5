"""Model benchmark: one supervision step under torch eager, torch.compile and ONNX Runtime, then the server per backend.

    python -m benchmarks.model [--weights-dir weights] [--models NAME ...] [--seconds 3] [--threads N]
                               [--skip-server] [--json benchmarks/results/model.json]

Part 1, the step: for every checkpoint and batch size (1, 8, 64) it times ONE supervision step (`TRM.step`, on
CPU) as the server runs it: eager under `torch.inference_mode`, the same step through `torch.compile`, the step
exported by `model/export_onnx.py` (the very file the server's ONNX backend loads) in an InferenceSession, and
eager and compiled again under bf16 autocast (the server's `--dtype bfloat16`; fast only on CPUs with bf16
instructions such as AVX512-BF16 or AMX, emulated and slow elsewhere). Each step's output carry is the next
step's input, as in serving. Every cell is warmed up first, then gets `--seconds` of wall time split into
`--repeats` slices; the backends' slices are interleaved, so a burst of background load hits all of them alike,
and the median slice's puzzle-steps/s is reported. torch and ONNX Runtime get the same number of intra-op
threads. A backend that fails (torch.compile needs a C++ compiler on CPU) is recorded with its error and shown
as n/a.

Part 2, the server: the real `python -m server` with `--backend torch`, the same with `--dtype bfloat16`, then
`--backend onnx`, on the Sudoku model, driven over HTTP by a closed loop of mixed-difficulty puzzles (the helpers
of benchmarks/serve.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import onnxruntime as ort
import torch

from benchmarks.serve import bench_settings, closed_loop, mixed_sudoku, start_server, stop_server
from model.checkpoint import Checkpoint, load_checkpoint
from model.export_onnx import OUTPUTS, Exporter, default_threads, example_inputs, export_step, make_session
from model.trm import TRM, Carry, count_trainable_parameters
from server.onnx_engine import onnx_path_for
from server.registry import find_checkpoints

log = logging.getLogger("benchmarks.model")

BACKENDS = ("eager", "compile", "onnx", "eager-bf16", "compile-bf16")
WARMUP_STEPS = 3  # the first calls pay for lazy allocation (and, under torch.compile, for compiling)

Step = Callable[[], None]
"""One supervision step that feeds its output carry into the next call."""


def torch_step(step_fn: Callable[..., Any], inputs: Sequence[torch.Tensor], bf16: bool = False) -> Step:
    """`step_fn` is `model.step` or its compiled version; the carry lives in the closure.

    With `bf16` the step runs under bf16 autocast as the server's `--dtype bfloat16` runs it (the carry stays fp32).
    """
    tokens, vectors, y, z = inputs
    carry = Carry(y, z)

    def step() -> None:
        nonlocal carry
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            carry = step_fn(carry, tokens, puzzle_vectors=vectors).carry

    return step


def onnx_step(session: Any, inputs: Sequence[torch.Tensor]) -> Step:
    """Feeds the session as server/onnx_engine.py does on CPU: numpy arrays in, y_out/z_out back in as y/z."""
    tokens, vectors, y, z = (t.numpy() for t in inputs)
    feeds = {"inputs": tokens, "puzzle_vectors": vectors, "y": y, "z": z}

    def step() -> None:
        y_out, z_out, *_ = session.run(list(OUTPUTS), feeds)
        feeds["y"], feeds["z"] = y_out, z_out

    return step


def error_text(exc: BaseException) -> str:
    """`Type: message`, cut short: torch.compile errors carry whole tracebacks in their message."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 1000 else text[:1000] + " ..."


def onnx_session(ckpt: Checkpoint, threads: int, exporter: Exporter, scratch: Path) -> tuple[Any, dict[str, Any]]:
    """The server's export (cached or beside the weights) for the default exporter, else a fresh one in `scratch`."""
    start = time.perf_counter()
    if exporter == "dynamo":
        path = onnx_path_for(ckpt)
    else:
        path = export_step(ckpt.model, scratch / f"{ckpt.name}.onnx", exporter=exporter)
    session = make_session(path, "cpu", threads)
    info = {"path": str(path), "exporter": exporter, "prepare_s": round(time.perf_counter() - start, 2)}
    return session, info


def build_steps(
    ckpt: Checkpoint,
    batch: int,
    session: Any,
    compile_backend: str,
    backends: Sequence[str] = BACKENDS,
    warmup: int = WARMUP_STEPS,
) -> tuple[dict[str, Step], dict[str, dict[str, Any]]]:
    """Warmed-up steps per backend (of `backends`), and a cell per backend holding its warm-up time or its error."""
    model = ckpt.model
    if not isinstance(model, TRM):
        raise TypeError(f"{ckpt.name}: expected a TRM/HRM model, got {type(model).__name__}")
    with torch.inference_mode():
        inputs = example_inputs(model, batch, torch.Generator().manual_seed(batch))
    # The whole step is compiled (the server's --compile wraps `model.net` only), dynamic=False as there. A reset
    # per cell keeps each cell's graphs out of the others' cache: dynamo caches per code object, so every model's
    # `step` shares one recompile limit, past which it would silently run eager.
    torch.compiler.reset()

    def compiled() -> Callable[..., Any]:
        return torch.compile(model.step, dynamic=False, backend=compile_backend)

    makers: dict[str, Callable[[], Step]] = {
        "eager": lambda: torch_step(model.step, inputs),
        "compile": lambda: torch_step(compiled(), inputs),
        "onnx": lambda: onnx_step(session, inputs),
        "eager-bf16": lambda: torch_step(model.step, inputs, bf16=True),
        "compile-bf16": lambda: torch_step(compiled(), inputs, bf16=True),
    }
    steps: dict[str, Step] = {}
    cells: dict[str, dict[str, Any]] = {}
    for name, make in makers.items():
        if name not in backends:
            continue
        if name == "onnx" and session is None:
            cells[name] = {"error": "no ONNX session (see the model's onnx entry)"}
            continue
        start = time.perf_counter()
        try:
            step = make()
            for _ in range(warmup):
                step()
        except Exception as exc:  # a backend that cannot run is a result, not a crash
            cells[name] = {"error": error_text(exc)}
            log.warning("%s batch %d: %s failed: %s", ckpt.name, batch, name, cells[name]["error"].splitlines()[0])
            continue
        steps[name] = step
        cells[name] = {"warmup_s": round(time.perf_counter() - start, 3)}
    return steps, cells


def timed(step: Step, budget: float) -> tuple[list[float], float]:
    """Per-call seconds of `step` run back to back for `budget` wall seconds (at least once), and the elapsed time."""
    times: list[float] = []
    start = time.perf_counter()
    end = start + budget
    while True:
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 >= end:
            return times, t1 - start


def measure_cell(
    ckpt: Checkpoint,
    batch: int,
    session: Any,
    seconds: float,
    repeats: int,
    compile_backend: str,
    backends: Sequence[str] = BACKENDS,
    warmup: int = WARMUP_STEPS,
) -> dict[str, dict[str, Any]]:
    """Puzzle-steps/s of each backend at one batch size; slices of the backends interleave. A step slower than a
    slice still runs once per slice, so `seconds` is a floor: big models get `repeats` timed calls."""
    steps, cells = build_steps(ckpt, batch, session, compile_backend, backends, warmup)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    times: dict[str, list[float]] = {name: [] for name in steps}
    elapsed: dict[str, float] = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in list(steps.items()):
            try:
                calls, wall = timed(step, seconds / repeats)
            except Exception as exc:  # a compiled step may still fail on a later call
                cells[name] = {"error": error_text(exc)}
                del steps[name]
                continue
            rates[name].append(batch * len(calls) / wall)
            times[name] += calls
            elapsed[name] += wall
    for name in steps:
        cells[name].update(
            puzzle_steps_per_s=round(statistics.median(rates[name]), 1),
            total_puzzle_steps_per_s=round(batch * len(times[name]) / elapsed[name], 1),
            step_ms_p50=round(1000 * statistics.median(times[name]), 3),
            calls=len(times[name]),
        )
    return cells


def measure_model(
    ckpt: Checkpoint,
    batches: Sequence[int],
    seconds: float,
    threads: int,
    repeats: int = 3,
    compile_backend: str = "inductor",
    exporter: Exporter = "dynamo",
) -> dict[str, Any]:
    """Every backend at every batch size for one checkpoint."""
    cfg = ckpt.config
    result: dict[str, Any] = {
        "arch": cfg.arch,
        "family": cfg.family,
        "hidden_size": cfg.hidden_size,
        "seq_len": cfg.total_len,
        "parameters": count_trainable_parameters(ckpt.model),
        "sha256": ckpt.sha256,
    }
    with tempfile.TemporaryDirectory(prefix="trm-bench-") as scratch:
        session = None
        try:
            session, result["onnx"] = onnx_session(ckpt, threads, exporter, Path(scratch))
        except Exception as exc:
            result["onnx"] = {"error": error_text(exc)}
            log.warning("%s: ONNX export or session failed: %s", ckpt.name, result["onnx"]["error"])
        result["batches"] = {}
        for batch in batches:
            cells = measure_cell(ckpt, batch, session, seconds, repeats, compile_backend)
            result["batches"][str(batch)] = cells
            log.info(
                "%s batch %d: %s", ckpt.name, batch, {k: v.get("puzzle_steps_per_s", "n/a") for k, v in cells.items()}
            )
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_models(
    weights_dir: Path,
    names: Sequence[str],
    batches: Sequence[int],
    seconds: float,
    threads: int,
    repeats: int = 3,
    compile_backend: str = "inductor",
    exporter: Exporter = "dynamo",
) -> dict[str, Any]:
    """Part 1 for every checkpoint under `weights_dir` (or the `names` among them), with the run's environment."""
    torch.set_num_threads(threads)
    results: dict[str, Any] = {
        "device": "cpu",
        "cpu": cpu_model(),
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "seconds_per_cell": seconds,
        "repeats": repeats,
        "compile_backend": compile_backend,
        "batches": list(batches),
        "models": {},
    }
    for path in find_checkpoints(weights_dir, list(names)):
        ckpt = load_checkpoint(path)
        results["models"][ckpt.name] = measure_model(
            ckpt, batches, seconds, threads, repeats, compile_backend, exporter
        )
    return results


def measure_server(
    weights_dir: Path,
    model: str,
    concurrency: int,
    seconds: float,
    threads: int,
    slots: int,
    backends: Sequence[str] = ("torch", "torch-bf16", "onnx"),
) -> dict[str, Any]:
    """Part 2: the real server per backend under a closed loop of `concurrency` Sudoku clients."""
    puzzles = mixed_sudoku(512, seed=777)
    result: dict[str, Any] = {
        "model": model,
        "concurrency": concurrency,
        "seconds": seconds,
        "slots": slots,
        "backends": {},
    }
    for backend in backends:
        try:
            engine, _, precision = backend.partition("-")  # "torch-bf16": the torch backend with --dtype bfloat16
            dtype = "bfloat16" if precision == "bf16" else "float32"  # not `auto`, which is bf16 on some CPUs
            settings = bench_settings(weights_dir, [model], threads=threads, slots=slots, backend=engine, dtype=dtype)
            proc, url = start_server(settings)
        except RuntimeError as exc:
            result["backends"][backend] = {"error": error_text(exc)}
            continue
        try:
            entries = httpx.get(f"{url}/models", timeout=10).json()["models"]
            provider = next((e["provider"] for e in entries if e["name"] == model), "?")
            # Discarded: the first requests pay for connection set-up and the HTTP stack's lazy paths.
            asyncio.run(closed_loop(url, puzzles, concurrency, min(2.0, seconds / 5), model))
            cell = asyncio.run(closed_loop(url, puzzles, concurrency, seconds, model))
            result["backends"][backend] = {"provider": provider, **cell}
            log.info("server %s: %s", backend, result["backends"][backend])
        except Exception as exc:  # one backend's failure still leaves the other's numbers
            result["backends"][backend] = {"error": error_text(exc)}
        finally:
            stop_server(proc)
    return result


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def format_tables(results: dict[str, Any]) -> str:
    """The step table (model x batch, a column per backend, best/eager) and the server table."""
    lines = [
        f"one supervision step, puzzle-steps/s (median of {results['repeats']} x "
        f"{results['seconds_per_cell'] / results['repeats']:.2f} s), {results['device']} {results['cpu']}, "
        f"{results['threads']} threads, torch {results['torch']}, onnxruntime {results['onnxruntime']}",
        f"| model | batch | {' | '.join(BACKENDS)} | best/eager |",
        "|---|---|" + "---|" * len(BACKENDS) + "---|",
    ]
    for name, model in results["models"].items():
        for batch, cells in model["batches"].items():
            rates = {b: cells.get(b, {}).get("puzzle_steps_per_s") for b in BACKENDS}
            best = max((b for b in BACKENDS if rates[b]), key=lambda b: rates[b] or 0.0, default=None)
            eager = rates["eager"]
            ratio = f"{(rates[best] or 0.0) / eager:.2f}x ({best})" if best and eager else "n/a"
            row = " | ".join(fmt(rates[b]) for b in BACKENDS)
            lines.append(f"| {name} | {batch} | {row} | {ratio} |")
    server = results.get("server")
    if server:
        lines += [
            "",
            f"server, {server['model']}, closed loop c={server['concurrency']}, {server['seconds']} s, "
            f"{server['slots']} slots",
            "| backend | provider | puzzles/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|",
        ]
        for backend, c in server["backends"].items():
            if "error" in c:
                lines.append(f"| {backend} | n/a | n/a | n/a | n/a | {c['error'].splitlines()[0][:80]} |")
            else:
                lines.append(
                    f"| {backend} | {c['provider']} | {c['puzzles_per_s']} | {c['p50_ms']} | {c['p99_ms']} | "
                    f"{c['errors']} |"
                )
    return "\n".join(lines)


def write_results(results: dict[str, Any], table: str, path: Path) -> None:
    """`path` (JSON) and the table beside it as `.txt`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".txt").write_text(table + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"))
    parser.add_argument("--models", nargs="*", default=[], help="checkpoint names (default: every one)")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="wall seconds per backend and batch")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved slices per cell; the median is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0 = all cores)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--server-model", default="sudoku-9x9")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--server-seconds", type=float, default=10.0)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/model.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The ONNX exporter's noise (missing torchvision ops, folded constants), as in model/export_onnx.py.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    for noisy in ("onnx_ir", "onnxscript", "httpx"):  # httpx logs every request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threads = args.threads or default_threads()

    batches = [int(b) for b in args.batches.split(",")]
    results = measure_models(
        args.weights_dir, args.models, batches, args.seconds, threads, args.repeats, args.compile_backend, args.exporter
    )
    if not args.skip_server:
        results["server"] = measure_server(
            args.weights_dir, args.server_model, args.concurrency, args.server_seconds, threads, args.slots
        )
    table = format_tables(results)
    sys.stdout.write(table + "\n")
    write_results(results, table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

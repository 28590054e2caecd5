"""The parts of the GPU check (`python -m benchmarks.gpu`): each one a function that fills a `Record`.

Every part reuses what the product runs: the server's `TorchEngine` and `OnnxEngine` for correctness, the real
`python -m server` process and `benchmarks.serve`'s load generator and raw-model ceiling for serving,
`benchmarks.train.measure` (the real training step) for training, and `python -m training.run` for the burst.
A part writes each result the moment it has it, so a part stopped at its time cap still reports what it did.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_report import SERVED
from benchmarks.model import cpu_model, error_text
from benchmarks.serve import bench_settings, closed_loop, mixed_sudoku, raw_model, start_server, stop_server
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import TRMConfig
from model.factory import build_model
from model.puzzles.arc import encode_grid
from server.engine import TorchEngine
from server.registry import find_checkpoints

log = logging.getLogger("benchmarks.gpu")

PAPER_PRESETS = ("sudoku-extreme-mlp", "sudoku-extreme-att", "maze-hard", "arc1", "hrm-maze-hard")
"""The paper's configurations, run with random weights: their sizes, not their accuracy, are what is checked.
`hrm-maze-hard` is the shape of the HRM authors' published maze and ARC checkpoints (two 4-layer networks, 1 + 900
positions), so its step time is what serving them costs on the device (`docs/published-checkpoints.md`)."""
POLICIES = ("continuous", "static", "sequential")
GENERATED_DATA = {
    # The paper presets read public CSVs a fresh machine lacks; the generators give the same shapes, and a
    # training step's time does not depend on what the puzzles say.
    "sudoku-extreme-mlp": ["data.builder=sudoku", "data.n_train=2048", "data.n_test=256", "data.givens_min=22"],
    "maze-hard": ["data.builder=maze", "data.n_train=1000", "data.n_test=64"],
    "arc1": ["data.num_aug=8"],
}


@dataclass(frozen=True)
class Plan:
    """Sizes of every part. The defaults are the GPU check; `smoke()` shrinks them so the same code runs on a CPU
    in seconds (the test suite runs it, so the GPU check cannot rot between the rare GPU loans)."""

    smoke: bool = False
    device: str = "cuda"
    threads: int = 0
    puzzles: int = 64
    steps: int = 16
    bf16_checkpoints: tuple[str, ...] | None = None
    """Checkpoints also run in bf16 (None: all). A CPU without bf16 hardware emulates it at seconds a step."""
    onnx_models: tuple[str, ...] = ("sudoku-9x9",)
    paper_batch: int = 4
    paper_steps: int = 2
    paper_overrides: tuple[str, ...] = ()
    slots: int = 256
    concurrency: tuple[int, ...] = (1, 8, 64, 256)
    target_concurrency: int = 64
    cell_s: float = 3.0
    raw_s: float = 4.0
    grace_s: float = 5.0
    serve_variants: tuple[tuple[str, bool], ...] = (("bfloat16", False), ("float32", False), ("bfloat16", True))
    """(dtype, compile) server settings; the first gets every policy and concurrency, the others continuous at
    `target_concurrency` (a compiled server recompiles for each new batch bucket, so it goes last)."""
    train_presets: tuple[str, ...] = ("sudoku-extreme-mlp", "maze-hard", "arc1")
    data_overrides: tuple[str, ...] = ()
    """Applied after `GENERATED_DATA`, by the training part and the burst alike, so the burst reuses the data."""
    train_overrides: tuple[str, ...] = ()
    train_variant: str = "bfloat16/on"
    train_steps: int = 50
    train_warmup: int = 3
    burst_preset: str = "sudoku-extreme-mlp"
    burst_overrides: tuple[str, ...] = ("train.eval_samples=256",)
    burst_min_s: float = 45.0
    burst_overhead_s: float = 30.0
    """Of the burst's time, what is not training: process start, data build, the final evaluation and save."""
    caps: dict[str, float] = field(
        default_factory=lambda: {"environment": 30, "correctness": 100, "serving": 170, "training": 140}
    )

    @classmethod
    def smoke_plan(cls) -> Plan:
        tiny_model = ("model.hidden_size=32", "model.num_heads=2", "model.h_cycles=1", "model.l_cycles=1")
        return cls(
            smoke=True,
            device="cpu",
            threads=1,
            puzzles=4,
            steps=2,
            bf16_checkpoints=("sudoku-9x9",),
            onnx_models=("sudoku-9x9",),
            paper_batch=1,
            paper_steps=1,
            paper_overrides=tiny_model,
            slots=8,
            concurrency=(1, 8),
            target_concurrency=8,
            cell_s=0.4,
            raw_s=0.4,
            grace_s=1.0,
            serve_variants=(("float32", False),),
            data_overrides=("data.n_train=16", "data.n_test=4", "data.arc_max_tasks=4"),
            train_overrides=(*tiny_model, "train.global_batch_size=8"),
            train_variant="float32/off",  # compiling on a CPU takes minutes: the smoke run checks the code path
            train_steps=2,
            train_warmup=1,
            burst_overrides=(*tiny_model, "train.global_batch_size=8"),
            burst_min_s=10.0,
            burst_overhead_s=16.0,
            # Caps well above the ~80 s a smoke run takes here (a first ONNX export alone is ~25 s on a busy core),
            # so a slower machine still finishes every part.
            caps={"environment": 30, "correctness": 120, "serving": 150, "training": 90, "burst": 26},
        )


class Record:
    """One part's results as nested JSON, rewritten to `path` after every entry (atomically, by rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, keys: tuple[str, ...], value: Any) -> None:
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


@contextmanager
def attempt(record: Record, keys: tuple[str, ...]) -> Iterator[None]:
    """Run one item; an exception is recorded under `keys` as its result instead of ending the part."""
    try:
        yield
    except Exception as exc:
        log.exception("%s failed", "/".join(keys))
        record.put(keys, {"error": error_text(exc)})


# ------------------------------------------------------------------------------------------------ environment
def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def nvidia_smi() -> dict[str, str]:
    if shutil.which("nvidia-smi") is None:
        return {"error": "nvidia-smi not on PATH"}
    query = "name,driver_version,memory.total,compute_cap"
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip()[:200]}
    return dict(zip(query.split(","), (v.strip() for v in out.stdout.splitlines()[0].split(",")), strict=False))


def environment(record: Record, plan: Plan) -> None:
    import onnxruntime as ort

    cuda = torch.cuda.is_available()
    record.put(("python",), platform.python_version())
    record.put(("torch",), torch.__version__)
    record.put(("cuda",), torch.version.cuda)
    record.put(("cudnn",), torch.backends.cudnn.version() if cuda else None)  # type: ignore[no-untyped-call]
    record.put(("onnxruntime",), package_version("onnxruntime-gpu", "onnxruntime"))
    record.put(("onnx_providers",), ort.get_available_providers())
    record.put(("cpu",), f"{cpu_model()}, {os.cpu_count()} cores")
    if not cuda:
        record.put(("gpu",), {"skipped": "no CUDA device: torch.cuda.is_available() is false"})
        return
    props = torch.cuda.get_device_properties(0)
    gpu = {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "bf16": torch.cuda.is_bf16_supported(),
    }
    record.put(("gpu",), {**gpu, "nvidia_smi": nvidia_smi()})


# ------------------------------------------------------------------------------------------------ correctness
def sample_tokens(config: TRMConfig, n: int, seed: int) -> np.ndarray:
    """`n` held-out inputs for a checkpoint, (n, seq_len) int64: generated puzzles of its family and size."""
    from training.data.sources import load_eval_data

    if config.family == "sudoku":
        data = load_eval_data(f"generate:sudoku:{n}:22:40:{seed}", config)
    elif config.family == "maze":
        side = config.grid_side
        data = load_eval_data(f"generate:maze:{n}:{side}:{side}:{seed}", config)
    else:
        side, rng = config.grid_side, np.random.default_rng(seed)
        grids = [rng.integers(0, 10, size=rng.integers(1, side + 1, size=2)) for _ in range(n)]
        return np.stack([encode_grid(g, side) for g in grids]).astype(np.int64)
    return np.asarray(data.inputs[:n], dtype=np.int64)


def trajectory(
    model: torch.nn.Module, config: TRMConfig, tokens: np.ndarray, device: str, dtype: torch.dtype, steps: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Answer tokens (steps, B, L), halting logits (steps, B) and ms a step, as the server's engine runs them."""
    engine = TorchEngine(model, config, len(tokens), torch.device(device), dtype)
    vector = engine.vector_for(0)
    for slot, row in enumerate(tokens):
        engine.load(slot, row, vector)
    slots = list(range(len(tokens)))
    start = time.perf_counter()
    results = [engine.step(slots) for _ in range(steps)]  # each step ends in a copy to the host: timing is honest
    ms = 1000 * (time.perf_counter() - start) / steps
    return np.stack([r.tokens for r in results]), np.stack([r.q_halt for r in results]), ms


def agreement(
    reference: tuple[np.ndarray, np.ndarray, float], other: tuple[np.ndarray, np.ndarray, float]
) -> dict[str, Any]:
    """Share of answer tokens equal to the reference's, per step, and the largest halting-logit gap."""
    per_step = (reference[0] == other[0]).mean(axis=(1, 2))
    return {
        "agreement": round(float(per_step.mean()), 6),
        "min_step_agreement": round(float(per_step.min()), 6),
        "per_step": [round(float(a), 6) for a in per_step],
        "max_q_gap": round(float(np.abs(reference[1] - other[1]).max()), 4),
        "step_ms": round(other[2], 2),
    }


def paper_config(name: str, overrides: tuple[str, ...] = ()) -> TRMConfig:
    from training.config import load_preset

    return replace(load_preset(name, list(overrides)).model, training={"preset": name, "weights": "random"})


def correctness(record: Record, plan: Plan, weights_dir: Path) -> None:
    bf16 = torch.bfloat16
    for path in find_checkpoints(weights_dir, []):
        with attempt(record, ("checkpoints", path.name)):
            config = load_checkpoint(path).config
            tokens = sample_tokens(config, plan.puzzles, seed=4242)
            ref = trajectory(load_checkpoint(path).model, config, tokens, "cpu", torch.float32, plan.steps)
            for label, dtype in (("fp32", torch.float32), ("bf16", bf16)):
                if dtype == bf16 and plan.bf16_checkpoints is not None and path.name not in plan.bf16_checkpoints:
                    continue
                run = trajectory(load_checkpoint(path).model, config, tokens, plan.device, dtype, plan.steps)
                record.put(("checkpoints", path.name, label), agreement(ref, run))
    for name in plan.onnx_models:
        with attempt(record, ("onnx", name)):
            record.put(("onnx", name), onnx_against_torch(weights_dir / name, plan))
    for name in PAPER_PRESETS:
        with attempt(record, ("paper", name)):
            config = paper_config(name, plan.paper_overrides)
            torch.manual_seed(0)
            model = build_model(config)
            device_copy = copy.deepcopy(model)
            gen = np.random.default_rng(0)
            tokens = gen.integers(1, config.vocab_size, size=(plan.paper_batch, config.seq_len)).astype(np.int64)
            ref = trajectory(model, config, tokens, "cpu", torch.float32, plan.paper_steps)
            run = trajectory(device_copy, config, tokens, plan.device, torch.float32, plan.paper_steps)
            finite = bool(np.isfinite(run[1]).all())
            record.put(("paper", name), {"hidden_size": config.hidden_size, "finite": finite, **agreement(ref, run)})


def onnx_against_torch(path: Path, plan: Plan) -> dict[str, Any]:
    """The server's ONNX engine (CUDA provider with IO binding on a GPU) against its torch engine, fp32 both."""
    from server.onnx_engine import OnnxEngine

    ckpt = load_checkpoint(path)
    tokens = sample_tokens(ckpt.config, plan.puzzles, seed=4242)
    device = torch.device(plan.device)
    torch_run = trajectory(ckpt.model, ckpt.config, tokens, plan.device, torch.float32, plan.steps)
    engine = OnnxEngine(load_checkpoint(path), len(tokens), device, plan.threads)
    vector = engine.vector_for(0)
    for slot, row in enumerate(tokens):
        engine.load(slot, row, vector)
    slots = list(range(len(tokens)))
    start = time.perf_counter()
    results = [engine.step(slots) for _ in range(plan.steps)]
    ms = 1000 * (time.perf_counter() - start) / plan.steps
    onnx_run = (np.stack([r.tokens for r in results]), np.stack([r.q_halt for r in results]), ms)
    io_binding = engine.on_gpu
    note = None if io_binding or plan.device == "cpu" else "CUDAExecutionProvider unavailable: ran on the CPU"
    return {"provider": engine.provider, "io_binding": io_binding, "note": note, **agreement(torch_run, onnx_run)}


# ------------------------------------------------------------------------------------------------ serving
def serving_weights(weights_dir: Path, scratch: Path, plan: Plan) -> Path:
    """A weights directory with the shipped Sudoku model and a random paper-size Sudoku TRM-MLP beside it."""
    out = scratch / "weights"
    out.mkdir(parents=True, exist_ok=True)
    link = out / SERVED[0]
    if not link.exists():
        link.symlink_to((weights_dir / SERVED[0]).resolve())
    config = paper_config("sudoku-extreme-mlp", plan.paper_overrides)
    torch.manual_seed(0)
    save_checkpoint(build_model(config), config, out / SERVED[1])
    return out


def serving(record: Record, plan: Plan, weights_dir: Path, scratch: Path) -> None:
    weights = serving_weights(weights_dir, scratch, plan)
    puzzles = mixed_sudoku(512, seed=777)
    for index, (dtype, compile_) in enumerate(plan.serve_variants):
        variant = f"{dtype}/{'compile' if compile_ else 'eager'}"
        settings = bench_settings(
            weights, list(SERVED), device=plan.device, dtype=dtype, compile=compile_, slots=plan.slots,
            threads=plan.threads,
        )  # fmt: skip
        for model in SERVED:
            with attempt(record, (variant, model, "raw")):
                record.put((variant, model, "raw"), raw_model(settings, model, puzzles, plan.raw_s))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        full = index == 0
        for policy in POLICIES if full else ("continuous",):
            with attempt(record, (variant, "server", policy)):
                proc, url = start_server(settings.model_copy(update={"scheduler_policy": policy}))
                try:
                    for model in SERVED:
                        asyncio.run(closed_loop(url, puzzles, 8, plan.cell_s / 3, model, grace=plan.grace_s))
                        for conc in plan.concurrency if full else (plan.target_concurrency,):
                            with attempt(record, (variant, model, policy, f"c{conc}")):
                                cell = asyncio.run(closed_loop(url, puzzles, conc, plan.cell_s, model, plan.grace_s))
                                record.put((variant, model, policy, f"c{conc}"), cell)
                finally:
                    stop_server(proc)


# ------------------------------------------------------------------------------------------------ training
def generated_data(plan: Plan, preset: str, scratch: Path) -> list[str]:
    """The `[data]` overrides of a preset here: generated puzzles, cached in `scratch` under the preset's name."""
    return [*GENERATED_DATA.get(preset, []), *plan.data_overrides, f"data.cache_dir={scratch / 'data' / preset}"]


def training(record: Record, plan: Plan, scratch: Path) -> None:
    from benchmarks.train import measure
    from training.config import load_preset
    from training.data.sources import build_or_load

    dtype, _, compile_ = plan.train_variant.partition("/")
    device = torch.device(plan.device)
    for name in plan.train_presets:
        with attempt(record, (name,)):
            overrides = [
                *generated_data(plan, name, scratch),
                *plan.train_overrides,
                f"train.dtype={dtype}",
                f"train.compile={compile_}",
            ]
            if plan.threads:
                overrides.append(f"train.threads={plan.threads}")
            preset = load_preset(name, overrides)
            start = time.perf_counter()
            meta, train_data, _ = build_or_load(preset)
            data_s = round(time.perf_counter() - start, 1)
            row = measure(preset, (meta, train_data), device, plan.train_warmup, plan.train_steps)
            record.put((name,), {"variant": plan.train_variant, "data_build_s": data_s, **row})
            if device.type == "cuda":
                torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ burst
def burst(record: Record, plan: Plan, out: Path, scratch: Path, seconds: float, steps_per_s: float | None) -> None:
    """Train `plan.burst_preset` for `seconds` with `python -m training.run`; the checkpoint lands in `out/burst`."""
    budget = seconds - plan.burst_overhead_s
    steps = max(10, int(budget * (steps_per_s or 1.0)))
    overrides = [
        *generated_data(plan, plan.burst_preset, scratch),
        *plan.burst_overrides,
        f"train.max_steps={steps}",
        f"train.lr_warmup_steps={max(1, steps // 10)}",
        f"train.eval_every_steps={steps}",
        *([f"train.threads={plan.threads}"] if plan.threads else []),
    ]
    cmd = [sys.executable, "-m", "training.run", "--preset", plan.burst_preset, "--device", plan.device]
    cmd += ["--run-dir", str(scratch / "burst-run"), "--out", str(out / "burst"), "--no-progress"]
    cmd += ["--time-limit", str(max(1.0, budget))]
    for item in overrides:
        cmd += ["--set", item]
    record.put(("command",), " ".join(cmd))
    record.put(("planned_steps",), steps)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, seconds - 2.0))
    if proc.returncode != 0:
        record.put(("error",), f"training.run exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
        return
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    record.put(("summary",), summary)
    record.put(("checkpoint",), str(out / "burst"))

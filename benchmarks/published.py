"""The HRM authors' published checkpoints at their published sizes, with random weights: convert, load, serve, step.

    python -m benchmarks.published [--work DIR] [--parts convert,load,serve,steps] [--json FILE]

Nothing is downloaded, here or at run time: each published checkpoint is stood in for by a file written in the
reference's layout and size (HRM_REFERENCE.md: `torch.save` of the compiled wrapper's state dict, bf16 initial
states, `all_config.yaml` beside it) with random weights. Sudoku-Extreme and Maze-30x30-Hard are the 27.3M-parameter
network with a one-row puzzle table; ARC-AGI-2 is the same network with a 1,045,829-row table (2.1 GB). Time and
memory do not depend on what the weights say.

1. convert: `python -m model.convert` of each file, in a process of its own: wall time, peak resident memory
   (VmHWM, which counts the pages of the memory-mapped files it read) and peak anonymous memory (sampled every
   20 ms: what the process allocated for itself, the figure "several copies in memory" is about).
2. load: `model.checkpoint.load_checkpoint` of each converted directory, as the server does, the same figures.
3. serve: a fresh `python -m server --weights-dir` over the converted maze and ARC models: time to ready, its
   memory, one 30x30 maze and one ARC task (named by `task_id`) answered.
4. steps: one supervision step (`benchmarks.model.measure_cell`, eager torch) of the paper-size HRM (1 + 81 and
   1 + 900 positions) and, beside it, the paper-size TRM-Att (16 + 81, 16 + 900), at batch 1, 8 and 64 in fp32, and
   under bf16 autocast where a step has at most `--bf16-max-positions` positions in all (a CPU without bf16
   instructions emulates it, several times slower than fp32).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import yaml

from benchmarks.model import cpu_model, measure_cell
from benchmarks.serve import bench_settings, start_server, stop_server
from model.checkpoint import Checkpoint, load_checkpoint
from model.factory import build_model
from model.trm import count_trainable_parameters

log = logging.getLogger("benchmarks.published")

HIDDEN, INNER, LAYERS = 512, 1536, 4
ARCH = {  # config/arch/hrm_v1.yaml, as all_config.yaml holds it
    "name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
    "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
    "halt_exploration_prob": 0.1,
    "halt_max_steps": 16,
    "H_cycles": 2,
    "L_cycles": 2,
    "H_layers": LAYERS,
    "L_layers": LAYERS,
    "hidden_size": HIDDEN,
    "num_heads": 8,
    "expansion": 4,
    "puzzle_emb_ndim": HIDDEN,
    "pos_encodings": "rope",
}
PUBLISHED = {  # name -> (dataset path in all_config.yaml, vocab, puzzle-table rows)
    "hrm-sudoku-extreme": ("data/sudoku-extreme-1k-aug-1000", 11, 1),
    "hrm-maze-30x30-hard": ("data/maze-30x30-hard-1k", 6, 1),
    "hrm-arc-2": ("data/arc-2-aug-1000", 12, 1_045_829),
}
VARIANTS_PER_TASK = 934  # about 1,045,828 rows / 1,120 ARC-AGI-2 tasks
STEP_PRESETS = ("hrm-sudoku-extreme", "hrm-maze-hard", "sudoku-extreme-att", "maze-hard")
ARC_TASK = {
    "train": [{"input": [[1, 0], [0, 0]], "output": [[1, 1], [1, 1]]}, {"input": [[0, 2]], "output": [[2, 2]]}],
    "test": [{"input": [[0, 0, 3], [0, 0, 0]]}],
}


# ------------------------------------------------------------------------------------------------ memory
def memory() -> dict[str, float]:
    """This process's resident memory in MiB: total, its peak, anonymous and file-backed (memory-mapped files)."""
    return proc_memory("self")


def proc_memory(pid: str | int) -> dict[str, float]:
    fields = {"VmRSS": "rss", "VmHWM": "peak_rss", "RssAnon": "anon", "RssFile": "file"}
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key] + "_mib"] = round(int(value.split()[0]) / 1024, 1)
    return out


class PeakAnon:
    """The largest anonymous resident memory seen while the block runs, sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, memory().get("anon_mib", 0.0))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakAnon:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, memory().get("anon_mib", 0.0))


# ------------------------------------------------------------------------------------------------ stand-ins
def write_reference(directory: Path, name: str, seed: int = 0) -> Path:
    """A stand-in for a published checkpoint: `checkpoint` + `all_config.yaml` in the reference layout."""
    data_path, vocab, rows = PUBLISHED[name]
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.empty(*shape).normal_(0.0, std, generator=g)

    prefix = "_orig_mod.model.inner."
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    state[prefix + "H_init"] = normal(HIDDEN, std=1.0).to(torch.bfloat16)
    state[prefix + "L_init"] = normal(HIDDEN, std=1.0).to(torch.bfloat16)
    state[prefix + "embed_tokens.embedding_weight"] = normal(vocab, HIDDEN, std=HIDDEN**-0.5)
    state[prefix + "lm_head.weight"] = normal(vocab, HIDDEN, std=HIDDEN**-0.5)
    state[prefix + "q_head.weight"] = normal(2, HIDDEN, std=HIDDEN**-0.5)
    state[prefix + "q_head.bias"] = torch.tensor([-5.0, 0.0])
    state[prefix + "puzzle_emb.weights"] = normal(rows, HIDDEN, std=0.02)
    for level in ("H_level", "L_level"):
        for i in range(LAYERS):
            p = f"{prefix}{level}.layers.{i}."
            state[p + "self_attn.qkv_proj.weight"] = normal(3 * HIDDEN, HIDDEN, std=HIDDEN**-0.5)
            state[p + "self_attn.o_proj.weight"] = normal(HIDDEN, HIDDEN, std=HIDDEN**-0.5)
            state[p + "mlp.gate_up_proj.weight"] = normal(2 * INNER, HIDDEN, std=HIDDEN**-0.5)
            state[p + "mlp.down_proj.weight"] = normal(HIDDEN, INNER, std=INNER**-0.5)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "checkpoint")
    config = {"arch": ARCH, "data_path": data_path, "global_batch_size": 768, "epochs": 100000, "lr": 1e-4}
    (directory / "all_config.yaml").write_text(yaml.safe_dump(config))
    return directory / "checkpoint"


def write_identifiers(path: Path, rows: int, seed: int = 0) -> list[str]:
    """An identifiers.json as the HRM ARC builder names rows: `<task>` for the original, `<task>_t<k>_<colours>`
    for each augmented variant; row 0 is `<blank>`."""
    rng = np.random.default_rng(seed)
    perms = rng.random((rows, 9)).argsort(axis=1) + 1
    names = ["<blank>"]
    for row in range(1, rows):
        task, variant = divmod(row - 1, VARIANTS_PER_TASK)
        tid = f"{task:08x}"
        colours = "0" + "".join(map(str, perms[row]))
        names.append(tid if variant == 0 else f"{tid}_t{variant % 8}_{colours}")
    path.write_text(json.dumps(names))
    return names


# ------------------------------------------------------------------------------------------------ children
def child(argv: list[str]) -> dict[str, Any]:
    """Run in a fresh process: `convert SRC DST [IDENTIFIERS]` or `load DST`; returns time and memory."""
    torch.set_num_threads(1)
    before = memory()
    start = time.perf_counter()
    with PeakAnon() as peak:
        if argv[0] == "convert":
            from model.convert import convert

            convert(Path(argv[1]), Path(argv[2]), identifiers=Path(argv[3]) if len(argv) > 3 else None)
        else:
            ckpt = load_checkpoint(Path(argv[1]))
            ckpt.model.puzzle_emb[-1].sum().item()  # one row read, as a request for one task reads its rows
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "start": before, "end": memory(), "peak_anon_mib": peak.peak_mib}


def run_child(*argv: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.published", "--child", *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------------------ parts
def convert_and_load(work: Path, parts: set[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, (_, _, rows) in PUBLISHED.items():
        ref, out = work / "reference" / name, work / "weights" / name
        entry: dict[str, Any] = {"puzzle_table_rows": rows}
        if "convert" in parts or not out.is_dir():
            start = time.perf_counter()
            src = write_reference(ref, name)
            entry["reference_file_mib"] = round(src.stat().st_size / 2**20, 1)
            entry["write_reference_s"] = round(time.perf_counter() - start, 1)
            extra = []
            if rows > 1:
                write_identifiers(ref / "identifiers.json", rows)
                extra = [str(ref / "identifiers.json")]
            entry["convert"] = run_child("convert", str(src), str(out), *extra)
            entry["converted_file_mib"] = round((out / "model.safetensors").stat().st_size / 2**20, 1)
            log.info("%s converted: %s", name, entry["convert"])
        if "load" in parts:
            entry["load"] = run_child("load", str(out))
            log.info("%s loaded: %s", name, entry["load"])
        results[name] = entry
    return results


def maze_30(seed: int = 0) -> list[str]:
    """A 30x30 maze in the Maze-Hard style (scattered wall cells, no ring) whose S reaches G."""
    from model.puzzles.maze import GOAL, OPEN, START, WALL, shortest_path, tokens_to_chars

    rng = np.random.default_rng(seed)
    while True:
        grid = np.where(rng.random((30, 30)) < 0.3, WALL, OPEN).astype(np.uint8)
        grid[0, 0], grid[29, 29] = START, GOAL
        if shortest_path(grid) is not None:
            return tokens_to_chars(grid)


def serve(work: Path, threads: int, slots: int) -> dict[str, Any]:
    """A fresh server over the converted maze and ARC models; one maze and one known ARC task."""
    settings = bench_settings(work / "weights", ["hrm-maze-30x30-hard", "hrm-arc-2"], threads=threads, slots=slots)
    start = time.perf_counter()
    proc, url = start_server(settings, ready_timeout=900.0)
    result: dict[str, Any] = {"ready_s": round(time.perf_counter() - start, 1), "slots": slots, "threads": threads}
    try:
        result["memory_ready"] = proc_memory(proc.pid)
        models = httpx.get(f"{url}/models", timeout=60).json()["models"]
        result["models"] = {m["name"]: {"arch": m["arch"], "known_tasks": m["known_tasks"]} for m in models}
        for label, body in (
            ("maze", {"puzzle": "maze", "grid": maze_30(), "max_steps": 2, "model": "hrm-maze-30x30-hard"}),
            ("arc", {"puzzle": "arc", "task": ARC_TASK, "task_id": "00000000", "max_steps": 1, "model": "hrm-arc-2"}),
        ):
            t0 = time.perf_counter()
            response = httpx.post(f"{url}/solve", json=body, timeout=1800)
            answer = response.json()
            result[label] = {
                "status": response.status_code,
                "wall_s": round(time.perf_counter() - t0, 1),
                "steps_used": answer.get("steps_used"),
                "compute_ms": answer.get("timing", {}).get("compute_ms"),
                "answer_rows": len(answer.get("solution") or []),
            }
            log.info("served %s: %s", label, result[label])
        result["memory_after"] = proc_memory(proc.pid)
    finally:
        stop_server(proc, timeout=120)
    return result


def steps(batches: list[int], bf16_max_positions: int, seconds: float) -> dict[str, Any]:
    """One supervision step of each paper-size configuration, fp32 and (small enough) bf16."""
    from training.config import load_preset

    results: dict[str, Any] = {}
    for preset in STEP_PRESETS:
        config = load_preset(preset, []).model
        torch.manual_seed(0)
        model = build_model(config).eval()
        ckpt = Checkpoint(preset, Path(preset), config, model, "random")
        entry: dict[str, Any] = {
            "arch": config.arch,
            "positions": config.total_len,
            "parameters": count_trainable_parameters(model),
            "network_calls_per_step": config.h_cycles * (config.l_cycles + 1),
            "layers_per_call": config.num_layers,
            "batches": {},
        }
        for batch in batches:
            backends = ["eager"] + (["eager-bf16"] if batch * config.total_len <= bf16_max_positions else [])
            cells = measure_cell(ckpt, batch, None, seconds, 1, "inductor", backends, warmup=1)
            entry["batches"][str(batch)] = cells
            log.info("%s batch %d: %s", preset, batch, cells)
        results[preset] = entry
    return results


# ------------------------------------------------------------------------------------------------ report
def format_tables(results: dict[str, Any]) -> str:
    lines = [f"published-size HRM checkpoints (random weights), {results['cpu']}, {results['cores']} cores"]
    for run in results.get("runs", []):
        lines.append(f"- {run['date']}: {', '.join(run['parts'])}; load average {run['loadavg']}")
    conv = results.get("checkpoints", {})
    if conv:
        base = next(iter(conv.values())).get("convert", {}).get("start", {}).get("anon_mib", "n/a")
        lines += [
            "",
            f"each in a fresh process, whose anonymous memory is {base} MiB (Python and torch) before it starts; "
            "peak RSS also counts the pages of memory-mapped files read",
            "| checkpoint | table rows | file MiB | convert s | convert peak anon MiB | convert peak RSS MiB "
            "| load s | load peak anon MiB | load peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, c in conv.items():
            cv, ld = c.get("convert", {}), c.get("load", {})
            lines.append(
                f"| {name} | {c['puzzle_table_rows']:,} | {c.get('converted_file_mib', 'n/a')} | "
                f"{cv.get('seconds', 'n/a')} | {cv.get('peak_anon_mib', 'n/a')} | "
                f"{cv.get('end', {}).get('peak_rss_mib', 'n/a')} | {ld.get('seconds', 'n/a')} | "
                f"{ld.get('peak_anon_mib', 'n/a')} | {ld.get('end', {}).get('peak_rss_mib', 'n/a')} |"
            )
    server = results.get("serve")
    if server:
        mem = server["memory_after"]
        lines += [
            "",
            f"server (maze + ARC-2 models, {server['slots']} slots, {server['threads']} thread): ready in "
            f"{server['ready_s']} s; resident {mem['rss_mib']} MiB ({mem['anon_mib']} anonymous, "
            f"{mem['file_mib']} mapped file pages)",
        ]
        for label in ("maze", "arc"):
            r = server[label]
            lines.append(f"- {label}: HTTP {r['status']}, {r['steps_used']} steps, {r['wall_s']} s")
    table = results.get("steps")
    if table:
        lines += [
            "",
            "one supervision step, ms (eager torch, 1 thread); puzzle-steps/s in brackets",
            "| model | params | positions | batch | fp32 | bf16 autocast |",
            "|---|---|---|---|---|---|",
        ]
        for name, m in table.items():
            for batch, cells in m["batches"].items():

                def cell(backend: str, cells: dict[str, Any] = cells, batch: str = batch) -> str:
                    c = cells.get(backend)
                    if c is None:
                        return "not run"
                    if "error" in c:
                        return "error"
                    ms = c["step_ms_p50"]
                    return f"{ms:,.0f} ({int(batch) * 1000 / ms:.2g})"

                lines.append(
                    f"| {name} | {m['parameters'] / 1e6:.1f}M | {m['positions']} | {batch} | {cell('eager')} | "
                    f"{cell('eager-bf16')} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.published", description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed)")
    parser.add_argument(
        "--parts", default="convert,load,serve,steps", help="parts to run; the others keep their results in --json"
    )
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--bf16-max-positions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed wall seconds per step cell (a floor)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/published.json"))
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(child(args.child)) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    parts = {p for p in args.parts.split(",") if p}
    # Parts not run keep what an earlier run measured (each run is listed with its date and load).
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    results.update(cpu=cpu_model(), cores=os.cpu_count(), threads=args.threads, torch=torch.__version__)
    results["python"] = platform.python_version()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="published-") as scratch:
        work = args.work or Path(scratch)
        if parts & {"convert", "load", "serve"}:
            results["checkpoints"] = convert_and_load(work, parts)
        if "serve" in parts:
            results["serve"] = serve(work, args.threads, args.slots)
        if "steps" in parts:
            batches = [int(b) for b in args.batches.split(",")]
            results["steps"] = steps(batches, args.bf16_max_positions, args.seconds)
    if parts:
        load = " to ".join(" ".join(f"{x:.1f}" for x in avg) for avg in (load_start, os.getloadavg()))
        run = {"date": time.strftime("%Y-%m-%d %H:%M"), "parts": sorted(parts), "loadavg": load}
        results["runs"] = [*results.get("runs", []), run]
    table = format_tables(results)
    sys.stdout.write(table + "\n")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    args.json.with_suffix(".txt").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

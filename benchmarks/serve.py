"""Server benchmark: one table of puzzles/s and latency for three schedulers, measured in one run.

    python -m benchmarks.serve [--weights-dir weights] [--model sudoku-9x9] [--duration 20] [--json out.json]

For each scheduler policy (one request at a time, static batching, step-level continuous batching) it starts
the real `python -m server` process, drives it over HTTP with a closed loop at each concurrency and with an
open-loop Poisson arrival rate, and records puzzles/s and p50/p95/p99 latency. It also measures the raw model
with the same halting and no HTTP (the scheduler driven in-process over a full queue), so server overhead is
a visible ratio. The puzzles are a mixed-difficulty Sudoku load (22-40 givens), so adaptive halting matters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from model.checkpoint import load_checkpoint
from model.puzzles import get_codec
from server.engine import TorchEngine, configure_cpu_threads
from server.scheduler import Job, ModelScheduler


def mixed_sudoku(n: int, seed: int) -> list[str]:
    """Held-out puzzles of mixed difficulty: half 30-40 givens, half 22-29."""
    from training.data.sudoku import generate

    easy = generate(n // 2, 9, (30, 40), seed=seed)
    hard = generate(n - n // 2, 9, (22, 29), seed=seed + 1)
    grids = np.concatenate([easy.puzzles, hard.puzzles])
    out = ["".join(str(int(v)) for v in g.reshape(-1)) for g in grids]
    random.Random(seed).shuffle(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    arr = np.asarray(values) * 1000
    return {f"p{q}_ms": round(float(np.percentile(arr, q)), 1) for q in (50, 95, 99)}


async def closed_loop(url: str, puzzles: list[str], concurrency: int, duration: float, model: str) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            grid = puzzles[next(counter) % len(puzzles)]
            t0 = time.perf_counter()
            r = await client.post(f"{url}/solve", json={"puzzle": "sudoku", "grid": grid, "model": model})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency + 4)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "served": len(latencies),
        "errors": errors,
        "puzzles_per_s": round(len(latencies) / elapsed, 2),
        **percentiles(latencies),
    }


async def open_loop(url: str, puzzles: list[str], rate: float, duration: float, model: str) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    rng = random.Random(0)

    async def one(client: httpx.AsyncClient, grid: str) -> None:
        nonlocal errors
        t0 = time.perf_counter()
        r = await client.post(f"{url}/solve", json={"puzzle": "sudoku", "grid": grid, "model": model})
        if r.status_code == 200:
            latencies.append(time.perf_counter() - t0)
        else:
            errors += 1

    tasks = []
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=512)) as client:
        i = 0
        while time.perf_counter() - start < duration:
            tasks.append(asyncio.ensure_future(one(client, puzzles[i % len(puzzles)])))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return {
        "offered_per_s": rate,
        "served": len(latencies),
        "errors": errors,
        "puzzles_per_s": round(len(latencies) / elapsed, 2),
        **percentiles(latencies),
    }


def start_server(
    weights_dir: str,
    model: str,
    policy: str,
    threads: int,
    slots: int,
    backend: str | None = None,
    dtype: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m server` on a free port and wait until it is ready; `backend`/`dtype` None keep the server's."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--weights-dir",
        weights_dir,
        "--models",
        model,
        "--port",
        str(port),
        "--scheduler-policy",
        policy,
        "--threads",
        str(threads),
        "--slots",
        str(slots),
        "--log-level",
        "warning",
        "--queue-capacity",
        "4096",
        "--request-timeout-s",
        "600",
    ]
    if backend is not None:
        cmd += ["--backend", backend]
    if dtype is not None:
        cmd += ["--dtype", dtype]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not become ready")


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM (the server drains) and wait; a server still up after `timeout` is killed, then the wait raises."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def raw_model(weights_dir: str, model: str, puzzles: list[str], slots: int, threads: int) -> dict[str, Any]:
    """Puzzles/s of the model alone under adaptive halting: the scheduler over a full queue, no HTTP."""
    configure_cpu_threads(threads)
    ckpt = load_checkpoint(Path(weights_dir) / model)
    codec = get_codec(ckpt.config.family, ckpt.config.seq_len)
    engine = TorchEngine(ckpt.model, ckpt.config, slots, ckpt.model.puzzle_emb.device)  # type: ignore[arg-type]
    engine.warm_up()
    sched = ModelScheduler(model, engine, queue_capacity=len(puzzles))
    vector = engine.vector_for(0)
    for grid in puzzles:
        tokens = codec.encode(codec.parse(grid)).astype(np.int64)
        sched.submit(Job(tokens=tokens, vector=vector, max_steps=ckpt.config.halt_max_steps))
    start, done, steps = time.perf_counter(), 0, 0
    while sched.has_work:
        finished = sched.tick()
        done += len(finished)
        steps += sum(j.steps_used for j in finished)
    elapsed = time.perf_counter() - start
    return {
        "puzzles": done,
        "puzzles_per_s": round(done / elapsed, 2),
        "mean_steps": round(steps / max(1, done), 2),
        "puzzle_steps_per_s": round(steps / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", default="weights")
    parser.add_argument("--model", default="sudoku-9x9")
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--policies", default="sequential,static,continuous")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per closed-loop cell")
    parser.add_argument("--rate", type=float, default=0.0, help="open-loop requests/s (0: 70%% of raw throughput)")
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--puzzles", type=int, default=512)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    puzzles = mixed_sudoku(args.puzzles, seed=777)

    raw = raw_model(args.weights_dir, args.model, puzzles[:256], args.slots, threads)
    rate = args.rate or max(0.5, round(0.7 * raw["puzzles_per_s"], 1))
    results: dict[str, Any] = {
        "model": args.model,
        "threads": threads,
        "slots": args.slots,
        "raw_model": raw,
        "policies": {},
    }
    for policy in args.policies.split(","):
        proc, url = start_server(args.weights_dir, args.model, policy, threads, args.slots)
        try:
            cells: dict[str, Any] = {}
            for conc in (int(c) for c in args.concurrency.split(",")):
                cells[f"closed_c{conc}"] = asyncio.run(closed_loop(url, puzzles, conc, args.duration, args.model))
                print(f"{policy:>10} c={conc:<4} {cells[f'closed_c{conc}']}", flush=True)
            cells["open"] = asyncio.run(open_loop(url, puzzles, rate, args.duration, args.model))
            print(f"{policy:>10} open {cells['open']}", flush=True)
            results["policies"][policy] = cells
        finally:
            stop_server(proc)

    print()
    print(
        f"raw model (no HTTP, adaptive halting, {args.slots} slots): {raw['puzzles_per_s']} puzzles/s, "
        f"mean steps {raw['mean_steps']}"
    )
    header = "| scheduler | load | puzzles/s | p50 ms | p95 ms | p99 ms | errors |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for policy, cells in results["policies"].items():
        for name, c in cells.items():
            load = name.replace("closed_c", "closed, c=") if name != "open" else f"open, {rate}/s"
            print(
                f"| {policy} | {load} | {c['puzzles_per_s']} | {c['p50_ms']} | {c['p95_ms']} | {c['p99_ms']} | "
                f"{c['errors']} |"
            )
    pol = results["policies"]
    if "continuous" in pol and "static" in pol:
        top = max(int(c) for c in args.concurrency.split(","))
        key = f"closed_c{top}"
        cont, stat = pol["continuous"][key]["puzzles_per_s"], pol["static"][key]["puzzles_per_s"]
        results["continuous_over_static"] = round(cont / max(1e-9, stat), 2)
        results["server_over_raw"] = round(cont / max(1e-9, raw["puzzles_per_s"]), 2)
        print(
            f"continuous / static at c={top}: {results['continuous_over_static']}x; "
            f"server / raw model: {results['server_over_raw']}"
        )
    if "continuous" in pol and "sequential" in pol and "closed_c32" in pol["continuous"]:
        ratio = pol["continuous"]["closed_c32"]["puzzles_per_s"] / max(
            1e-9, pol["sequential"]["closed_c32"]["puzzles_per_s"]
        )
        results["continuous_over_sequential_c32"] = round(ratio, 2)
        print(f"continuous / one-at-a-time at c=32: {ratio:.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

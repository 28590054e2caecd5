"""Server benchmark: one table of puzzles/s and latency for three schedulers, measured in one run.

    python -m benchmarks.serve [--weights-dir weights] [--model sudoku-9x9] [--duration 20] [--json out.json]

For each scheduler policy (one request at a time, static batching, step-level continuous batching) it starts
the real `python -m server` process, drives it over HTTP with a closed loop at each concurrency and with an
open-loop Poisson arrival rate, and records puzzles/s and p50/p95/p99 latency. It also measures the raw model:
the server's own engine and halting (same checkpoint, dtype, compile and slots) driven in-process with no HTTP
over a queue that never runs dry, an upper bound on the server, so server overhead is a visible ratio. The
puzzles are a mixed-difficulty Sudoku load (22-40 givens), so adaptive halting matters.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from server.registry import Registry
from server.scheduler import Job, ModelScheduler
from server.settings import Settings


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


async def closed_loop(
    url: str, puzzles: list[str], concurrency: int, duration: float, model: str, grace: float | None = None
) -> dict[str, Any]:
    """`concurrency` clients, each sending its next puzzle as soon as the last is answered, for `duration` s.

    With `grace`, requests still unanswered that long after the end are cancelled (the client goes away, so the
    server drops them) and counted as `cut`: one-at-a-time serving at a high concurrency otherwise spends
    minutes answering the backlog of the last round.
    """
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
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        tasks = [asyncio.ensure_future(worker(client)) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=None if grace is None else duration + grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.perf_counter() - start
    return {
        "served": len(latencies),
        "errors": errors,
        "cut": len(pending),
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


def server_flags(settings: Settings) -> list[str]:
    """The `python -m server` flags that give `settings` (every field that differs from its default)."""
    flags: list[str] = []
    for name, value in settings.model_dump(exclude_defaults=True).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list):
            flags += [flag, ",".join(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


def bench_settings(weights_dir: str | Path, models: list[str], **fields: Any) -> Settings:
    """Server settings for a benchmark: quiet, with a queue and deadline no closed loop reaches, and no escalation:
    these benchmarks measure scheduling, one view per puzzle, against a raw model that runs one view too
    (`benchmarks.inference_curve` measures what escalation buys)."""
    base: dict[str, Any] = {
        "queue_capacity": 4096,
        "request_timeout_s": 600.0,
        "log_level": "warning",
        "default_budget_steps": 0,
    }
    return Settings(weights_dir=Path(weights_dir), models=models, **{**base, **fields})


def start_server(settings: Settings, ready_timeout: float = 180.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m server` with `settings` on a free port and wait until it is ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "server", *server_flags(settings.model_copy(update={"port": port}))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + ready_timeout
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


def raw_model(settings: Settings, model: str, puzzles: list[str], duration: float) -> dict[str, Any]:
    """The ceiling the server is measured against: the same batched model with no HTTP.

    The server's own `Registry` builds the engine from `settings` (same checkpoint, device, dtype, compile and
    slots) and its threshold and horizon apply; a continuous scheduler then runs in this process over a queue that
    never runs dry, so every tick steps a full pool of slots, the most continuous batching can do. A pool that
    drains at the end, or an engine built apart from the server's, would measure something lower or else.
    """
    registry = Registry(settings.model_copy(update={"models": [model]}))
    registry.load()
    entry = registry.models[model]
    sched = ModelScheduler(model, entry.engine, queue_capacity=10**9, rules=entry.codec)
    tokens = [entry.codec.encode(entry.codec.parse(grid)).astype(np.int64) for grid in puzzles]
    vector, policy = entry.engine.vector_for(0), entry.policy()
    order = itertools.cycle(tokens)

    def run(seconds: float) -> tuple[int, int, float]:
        done = steps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or done == 0:
            while len(sched.queue) < entry.engine.slots:
                sched.submit(Job(tokens=next(order), vector=vector, policy=policy))
            finished = sched.tick()
            done += len(finished)
            steps += sum(job.steps_used for job in finished)
        return done, steps, time.perf_counter() - start

    run(min(2.0, duration / 4))  # fills the pool and reaches the steady mix of young and old puzzles
    done, steps, elapsed = run(duration)
    return {
        "puzzles": done,
        "puzzles_per_s": round(done / elapsed, 2),
        "mean_steps": round(steps / done, 2),
        "puzzle_steps_per_s": round(steps / elapsed, 1),
        "provider": entry.engine.provider,
        "slots": entry.engine.slots,
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
    settings = bench_settings(args.weights_dir, [args.model], threads=threads, slots=args.slots)

    raw = raw_model(settings, args.model, puzzles, args.duration)
    rate = args.rate or max(0.5, round(0.7 * raw["puzzles_per_s"], 1))
    results: dict[str, Any] = {
        "model": args.model,
        "threads": threads,
        "slots": args.slots,
        "raw_model": raw,
        "policies": {},
    }
    for policy in args.policies.split(","):
        proc, url = start_server(settings.model_copy(update={"scheduler_policy": policy}))
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
        f"raw model (the server's engine, no HTTP, a full pool of {args.slots} slots): "
        f"{raw['puzzles_per_s']} puzzles/s, mean steps {raw['mean_steps']}"
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

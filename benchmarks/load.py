"""Load, soak and overload benchmark of the real server: every answer is checked, not just counted.

    python -m benchmarks.load [--clients 32] [--duration 60] [--json out.json]          # tiny checkpoints
    python -m benchmarks.load --weights-dir weights --clients 32 --duration 60             # shipped checkpoints
    python -m benchmarks.load --url http://127.0.0.1:8000 --pid 1234                       # a running server
    python -m benchmarks.load --scenario overload                                          # queue full, 503s

load (the default): the pool of puzzles (server/static/samples.json: Sudoku strings and mazes) is first solved
ALONE, one request at a time, so every step runs with a batch of one. Then N clients send the same puzzles for
T seconds as a mix of plain /solve, streamed /solve (SSE) and /solve/batch calls. Every puzzle sent carries a
client-side id; the run checks that each one got exactly one answer (no loss, no duplicate, one terminal SSE
event), that server answer ids are unique, and that every answer (solution, steps used, halting reason) equals
the one the puzzle got alone: batch composition must never change a puzzle's answer. It reports status counts,
p50/p99 latency per call kind, and the server's resident memory (VmRSS) before and after.

overload: a server with 2 slots and a queue of 4 is filled with never-halting puzzles (two of them streamed),
then flooded; it measures how fast the 503 + Retry-After answers come, that /health/live answers meanwhile,
that clients disconnecting mid-request and mid-stream free their slots (the trm_running_slots and
trm_queue_length gauges return to 0), and that the server serves again afterwards.

Traffic goes to the loopback only; every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from model.checkpoint import save_checkpoint
from model.config import VOCAB, TRMConfig
from model.puzzles import get_codec
from model.trm import TRM

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "server" / "static" / "samples.json"
REQUEST_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
MAX_REQUESTS = 1_000_000  # a hard cap on calls per run, whatever the duration
CALL_MIX = {"solve": 0.6, "stream": 0.2, "batch": 0.2}
BATCH_SIZES = (2, 3, 4)
CALIBRATION_PUZZLES = 32  # sample puzzles that set the tiny models' halting bias


# ------------------------------------------------------------------------------------------------ checkpoints
def _load_model(family: str, seq_len: int, raws: list[Any], halt_step: int, seed: int) -> tuple[TRM, TRMConfig]:
    """An untrained tiny TRM whose answers depend on the puzzle and whose halting head fires at varied steps.

    A plain untrained model answers every Sudoku the same way and never halts, which would hide a mixed-up
    answer and never exercise early exits. Here the input embedding is scaled up and tied to the output head
    (answers differ per puzzle), and the halting head reads the direction along which the answer state drifts
    over steps, biased so that about half of the sample puzzles halt by `halt_step` and some never do.
    """
    torch.manual_seed(seed)
    config = TRMConfig(
        family=family,  # type: ignore[arg-type]
        vocab_size=VOCAB[family],
        seq_len=seq_len,
        num_puzzle_ids=1,
        puzzle_emb_len=4,
        hidden_size=32,
        num_heads=4,
        expansion=2.0,
        h_cycles=2,
        l_cycles=2,
        halt_max_steps=8,
    )
    model = TRM(config).eval()
    codec = get_codec(family, seq_len)
    x = torch.as_tensor(np.stack([codec.encode(codec.parse(r)) for r in raws]).astype(np.int64))
    with torch.no_grad():
        model.embed_tokens.weight.mul_(3.0)
        model.lm_head.weight.copy_(model.embed_tokens.weight * 5.0)
        carry, states = model.initial_carry(len(raws)), []
        for _ in range(config.halt_max_steps):
            carry = model.step(carry, x).carry
            states.append(carry.y[:, 0].clone())  # (N, D): what the halting head reads
        drift = states[-1].mean(0) - states[0].mean(0)
        direction = 4.0 * drift / drift.norm()
        model.q_head.weight.zero_()
        model.q_head.weight[0] = direction
        model.q_head.bias.zero_()
        # Halfway between the two middle puzzles, so that no sample sits on the threshold itself: fp32 results
        # differ by ~1e-6 between batch sizes, which would flip a halting decision made exactly at q = 0.
        middle = (states[halt_step - 1] @ direction).sort().values[len(raws) // 2 - 1 : len(raws) // 2 + 1]
        model.q_head.bias[0] = -float(middle.mean())
    return model, config


def write_load_weights(directory: Path) -> Path:
    """sudoku-load (9x9) and maze-load (15x15, fits every sample maze) into `directory`."""
    samples = json.loads(SAMPLES.read_text())
    for name, family, seq_len, halt_step, seed in (
        ("sudoku-load", "sudoku", 81, 3, 11),
        ("maze-load", "maze", 225, 4, 12),
    ):
        model, config = _load_model(family, seq_len, samples[family][:CALIBRATION_PUZZLES], halt_step, seed)
        save_checkpoint(model, config, directory / name)
    return directory


# ------------------------------------------------------------------------------------------------ server process
@dataclass
class Server:
    proc: subprocess.Popen[bytes] | None
    base: str
    pid: int | None
    log_path: Path | None = None

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path else ""

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGTERM (drain), then SIGKILL if it outlives `timeout`; returns the exit code and how long it took."""
        if self.proc is None or self.proc.poll() is not None:
            return {"exit_code": None if self.proc is None else self.proc.returncode, "exit_s": 0.0}
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=30)
        return {"exit_code": code, "exit_s": round(time.monotonic() - start, 2)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(weights: Path, log_dir: Path, *extra: str, timeout: float = 120.0) -> Server:
    """`python -m server` on a free loopback port; returns once /health/ready answers 200."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "server", "--weights-dir", str(weights), "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*cmd, *extra], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", proc.pid, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n{server.log()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.base}/health/ready", timeout=2).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop(5)
    raise RuntimeError(f"server not ready within {timeout} s:\n{server.log()}")


def memory_kib(pid: int | None) -> dict[str, int] | None:
    """VmRSS (resident now) and VmHWM (resident peak) of a process, in KiB, from /proc/<pid>/status."""
    if pid is None:
        return None
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def metric_sum(base: str, name: str) -> float:
    """Sum over labels of one metric in /metrics (e.g. trm_running_slots across models)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def wait_for_idle(base: str, timeout: float = 10.0) -> dict[str, float]:
    """Poll the slot and queue gauges until both are 0 (or `timeout`); returns their last values and the wait."""
    start = time.monotonic()
    while True:
        gauges = {name: metric_sum(base, name) for name in ("trm_running_slots", "trm_queue_length")}
        if not any(gauges.values()) or time.monotonic() - start > timeout:
            return {**gauges, "idle_after_s": round(time.monotonic() - start, 3)}
        time.sleep(0.05)


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p99_ms": round(float(np.percentile(arr, 99)), 1),
        "max_ms": round(float(arr.max()), 1),
    }


# ------------------------------------------------------------------------------------------------ puzzles
def puzzle_pool(base: str, size: int) -> list[dict[str, Any]]:
    """Sample Sudoku and mazes (only those the loaded maze models fit), interleaved, at most `size` of them."""
    models = httpx.get(f"{base}/models", timeout=10).json()["models"]
    families = {m["puzzle"] for m in models}
    largest_maze = max((m["grid_size"] for m in models if m["puzzle"] == "maze"), default=0)
    samples = json.loads(SAMPLES.read_text())
    sudoku = [{"puzzle": "sudoku", "grid": s} for s in samples["sudoku"]] if "sudoku" in families else []
    mazes = [{"puzzle": "maze", "grid": m} for m in samples["maze"] if len(m) <= largest_maze]
    pool: list[dict[str, Any]] = []
    for i in range(max(len(sudoku), len(mazes))):
        pool += ([sudoku[i]] if i < len(sudoku) else []) + ([mazes[i]] if i < len(mazes) else [])
    if not pool:
        raise RuntimeError("no sample puzzle fits the loaded models")
    return pool[:size]


Answer = tuple[Any, int, str]
"""What must not depend on batch composition: (solution, steps_used, halted_by)."""


def answer_of(body: dict[str, Any]) -> Answer:
    return (body["solution"], body["steps_used"], body["halted_by"])


def solve_alone(base: str, pool: list[dict[str, Any]], options: dict[str, Any]) -> list[Answer]:
    """Each puzzle on its own, one request at a time: every step it takes runs in a batch of one."""
    answers = []
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT) as client:
        for puzzle in pool:
            response = client.post("/solve", json={**puzzle, **options})
            response.raise_for_status()
            answers.append(answer_of(response.json()))
    return answers


# ------------------------------------------------------------------------------------------------ load
@dataclass
class Ledger:
    """Everything sent and received during a load run, keyed by client-side puzzle id."""

    sent: dict[str, int] = field(default_factory=dict)  # puzzle id -> pool index
    answers: dict[str, list[tuple[int, Answer | None]]] = field(default_factory=dict)  # id -> [(status, answer)]
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in CALL_MIX})
    call_status: Counter[str] = field(default_factory=Counter)
    server_ids: list[str] = field(default_factory=list)
    stream_faults: list[str] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)

    def answer(self, pid: str, status: int, body: dict[str, Any] | None) -> None:
        self.answers.setdefault(pid, []).append((status, answer_of(body) if status == 200 and body else None))
        if status == 200 and body:
            self.server_ids.append(body["id"])


async def _stream_call(client: httpx.AsyncClient, body: dict[str, Any], pid: str, ledger: Ledger) -> int:
    """One SSE call: checks step numbering, exactly one terminal event, and that the last step is the answer."""
    events: list[tuple[str, Any]] = []
    event = None
    async with client.stream("POST", "/solve", json={**body, "stream": True}) as response:
        if response.status_code != 200:
            await response.aread()
            ledger.answer(pid, response.status_code, None)
            return response.status_code
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event or "", json.loads(line[5:])))
    terminal = [(name, data) for name, data in events if name in ("result", "error")]
    steps = [data for name, data in events if name == "step"]
    if len(terminal) != 1 or events[-1][0] not in ("result", "error"):
        ledger.stream_faults.append(f"{pid}: {len(terminal)} terminal events")
    for name, data in terminal:
        if name == "result":
            if [s["step"] for s in steps] != list(range(1, data["steps_used"] + 1)):
                ledger.stream_faults.append(f"{pid}: step events do not count 1..{data['steps_used']}")
            elif steps[-1]["solution"] != data["solution"]:
                ledger.stream_faults.append(f"{pid}: last step event differs from the result")
            ledger.answer(pid, 200, data)
        else:
            ledger.answer(pid, int(data.get("status", 0)), None)
    return 200


async def _client(
    index: int,
    base: str,
    pool: list[dict[str, Any]],
    options: dict[str, Any],
    stop_at: float,
    budget: list[int],
    ledger: Ledger,
    seed: int,
) -> None:
    rng = random.Random(seed * 1000 + index)
    kinds, weights = list(CALL_MIX), list(CALL_MIX.values())
    seq = 0
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT) as client:
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            kind = rng.choices(kinds, weights)[0]
            picks = [rng.randrange(len(pool)) for _ in range(rng.choice(BATCH_SIZES) if kind == "batch" else 1)]
            pids = []
            for pick in picks:
                pid = f"c{index}-{seq}"
                seq += 1
                ledger.sent[pid] = pick
                pids.append(pid)
            bodies = [{**pool[p], **options} for p in picks]
            start = time.monotonic()
            try:
                if kind == "stream":
                    status = await _stream_call(client, bodies[0], pids[0], ledger)
                elif kind == "batch":
                    response = await client.post("/solve/batch", json={"requests": bodies})
                    status = response.status_code
                    items = response.json()["results"] if status == 200 else [{"status": status}] * len(pids)
                    if len(items) != len(pids):
                        ledger.stream_faults.append(f"batch of {len(pids)} answered {len(items)} results")
                    for pid, item in zip(pids, items, strict=False):
                        ledger.answer(pid, item["status"], item.get("result"))
                else:
                    response = await client.post("/solve", json=bodies[0])
                    status = response.status_code
                    ledger.answer(pids[0], status, response.json() if status == 200 else None)
            except httpx.TransportError as exc:  # no answer at all: counted as lost below
                ledger.transport_errors[type(exc).__name__] += 1
                continue
            ledger.latencies[kind].append(time.monotonic() - start)
            ledger.call_status[f"{kind} {status}"] += 1


async def _sample_memory(pid: int | None, stop_at: float, timeline: list[tuple[float, int]]) -> None:
    """VmRSS once a second during the load: (seconds since the start, KiB)."""
    start = time.monotonic()
    while time.monotonic() < stop_at:
        mem = memory_kib(pid)
        if mem:
            timeline.append((round(time.monotonic() - start, 1), mem["VmRSS"]))
        await asyncio.sleep(1.0)


async def _drive(
    base: str, pool: list[dict[str, Any]], options: dict[str, Any], clients: int, duration: float, pid: int | None
) -> tuple[Ledger, float, list[tuple[float, int]]]:
    ledger, budget, timeline = Ledger(), [MAX_REQUESTS], []
    stop_at = time.monotonic() + duration
    start = time.monotonic()
    memory = asyncio.ensure_future(_sample_memory(pid, stop_at, timeline))
    await asyncio.gather(*(_client(i, base, pool, options, stop_at, budget, ledger, 0) for i in range(clients)))
    await memory
    return ledger, time.monotonic() - start, timeline


def run_load(
    base: str,
    pid: int | None,
    clients: int,
    duration: float,
    pool_size: int = 250,
    halt: str = "adaptive",
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Solve the pool alone, then drive the mixed load; returns the report (see the module docstring)."""
    options: dict[str, Any] = {"halt": halt} | ({"max_steps": max_steps} if max_steps else {})
    memory_start = memory_kib(pid)
    pool = puzzle_pool(base, pool_size)
    t0 = time.monotonic()
    alone = solve_alone(base, pool, options)
    alone_s = time.monotonic() - t0
    memory_before = memory_kib(pid)
    ledger, elapsed, timeline = asyncio.run(_drive(base, pool, options, clients, duration, pid))
    idle = wait_for_idle(base)
    memory_after = memory_kib(pid)

    per_puzzle = Counter(len(ledger.answers.get(p, [])) for p in ledger.sent)
    statuses: Counter[int] = Counter(s for answers in ledger.answers.values() for s, _ in answers)
    mismatches = [
        {"puzzle": pool[ledger.sent[pid_]], "alone": alone[ledger.sent[pid_]], "under_load": got}
        for pid_, answers in ledger.answers.items()
        for status, got in answers
        if status == 200 and got != alone[ledger.sent[pid_]]
    ]
    ok = statuses.get(200, 0)
    all_latencies = [x for values in ledger.latencies.values() for x in values]
    return {
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "options": options,
        "pool": {
            "puzzles": len(pool),
            "kinds": dict(Counter(p["puzzle"] for p in pool)),
            "distinct_alone_answers": len({json.dumps(a) for a in alone}),
            "alone_steps": dict(sorted(Counter(a[1] for a in alone).items())),
            "alone_solve_s": round(alone_s, 1),
        },
        "calls": sum(ledger.call_status.values()),
        "calls_by_kind_status": dict(sorted(ledger.call_status.items())),
        "puzzles_sent": len(ledger.sent),
        "puzzle_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "puzzles_ok_per_s": round(ok / elapsed, 1),
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "lost": per_puzzle.get(0, 0),
        "duplicated": sum(v for k, v in per_puzzle.items() if k > 1),
        "duplicate_server_ids": len(ledger.server_ids) - len(set(ledger.server_ids)),
        "stream_faults": ledger.stream_faults[:10],
        "transport_errors": dict(ledger.transport_errors),
        "answers_compared": ok,
        "answers_differing_from_alone": len(mismatches),
        "first_mismatches": mismatches[:3],
        "latency": {"all": percentiles_ms(all_latencies)}
        | {k: {"calls": len(v), **percentiles_ms(v)} for k, v in ledger.latencies.items()},
        "gauges_after": idle,
        "memory_kib": {"start": memory_start, "before_load": memory_before, "after_load": memory_after}
        | ({"sampled_peak_rss": max(rss for _, rss in timeline), "rss_every_10_s": timeline[::10]} if timeline else {}),
    }


# ------------------------------------------------------------------------------------------------ overload
def raw_request(base: str, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a POST over a bare socket and return it unread: closing it is a client vanishing mid-request."""
    url = urlsplit(base)
    data = json.dumps(body).encode()
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read from `sock` until `marker` shows up (e.g. the first SSE step event); bounded by `timeout`."""
    seen = b""
    end = time.monotonic() + timeout
    while marker not in seen:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{marker!r} not received within {timeout} s; got {seen[-300:]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before {marker!r}; got {seen[-300:]!r}")
        seen += chunk
    return seen


async def flood(base: str, body: dict[str, Any], count: int) -> list[tuple[int, float, str | None]]:
    """`count` concurrent /solve calls, each on its own connection: (status, seconds, Retry-After)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT, limits=limits) as client:

        async def one() -> tuple[int, float, str | None]:
            start = time.monotonic()
            response = await client.post("/solve", json=body)
            return response.status_code, time.monotonic() - start, response.headers.get("retry-after")

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def timed_get(base: str, path: str, count: int, every: float) -> list[tuple[int, float]]:
    out = []
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT) as client:
        for _ in range(count):
            start = time.monotonic()
            status = (await client.get(path)).status_code
            out.append((status, time.monotonic() - start))
            await asyncio.sleep(every)
    return out


def wait_for_gauge(base: str, name: str, value: float, timeout: float = 20.0) -> float:
    """Seconds until metric `name` (summed over models) reaches `value`; raises after `timeout`."""
    start = time.monotonic()
    while metric_sum(base, name) != value:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{name} never reached {value} (now {metric_sum(base, name)})")
        time.sleep(0.02)
    return time.monotonic() - start


def run_overload(base: str, puzzle: dict[str, Any], slots: int, capacity: int, flood_size: int) -> dict[str, Any]:
    """Fill a server started with `slots` slots and a queue of `capacity`, flood it, let the clients go, recover.

    The first `slots` holders are streamed and the next `capacity` are plain calls, all of them never-halting
    puzzles with a step budget far beyond the test: only disconnecting frees them.
    """
    hold = {**puzzle, "halt": "never", "max_steps": 100_000}
    streams = [raw_request(base, "/solve", {**hold, "stream": True}) for _ in range(slots)]
    queued: list[socket.socket] = []
    try:
        for sock in streams:
            read_until(sock, b"event: step")  # running, mid-stream
        queued = [raw_request(base, "/solve", hold) for _ in range(capacity)]
        wait_for_gauge(base, "trm_queue_length", capacity)

        async def overloaded() -> tuple[list[tuple[int, float, str | None]], list[tuple[int, float]]]:
            probes = asyncio.ensure_future(timed_get(base, "/health/live", 10, 0.02))
            answers = await flood(base, {**puzzle, "max_steps": 1}, flood_size)
            return answers, await probes

        answers, live = asyncio.run(overloaded())
        full = [seconds for status, seconds, _ in answers if status == 503]
    finally:
        start = time.monotonic()
        for sock in [*queued, *streams]:
            sock.close()
    idle = wait_for_idle(base, timeout=20)
    idle_s = time.monotonic() - start
    after = asyncio.run(flood(base, {**puzzle, "max_steps": 2}, capacity))
    return {
        "slots": slots,
        "queue_capacity": capacity,
        "flood": flood_size,
        "flood_statuses": dict(Counter(str(s) for s, _, _ in answers)),
        "retry_after": sorted({r for s, _, r in answers if s == 503 and r is not None}),
        "503_latency": percentiles_ms(full),
        "live_statuses": dict(Counter(str(s) for s, _ in live)),
        "live_latency": percentiles_ms([s for _, s in live]),
        "gauges_after_disconnect": {k: v for k, v in idle.items() if k != "idle_after_s"},
        "freed_after_disconnect_s": round(idle_s, 3),
        "recovery_statuses": dict(Counter(str(s) for s, _, _ in after)),
    }


# ------------------------------------------------------------------------------------------------ CLI
def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def print_load(report: dict[str, Any]) -> None:
    lat = report["latency"]
    mem = report["memory_kib"]
    rows: list[tuple[str, Any]] = [
        ("clients x seconds", f"{report['clients']} x {report['duration_s']}"),
        (
            "pool",
            f"{report['pool']['puzzles']} puzzles {report['pool']['kinds']}, alone steps "
            f"{report['pool']['alone_steps']}, {report['pool']['distinct_alone_answers']} distinct answers",
        ),
        ("calls", f"{report['calls']} {report['calls_by_kind_status']}"),
        ("puzzles sent / statuses", f"{report['puzzles_sent']} {report['puzzle_statuses']}"),
        ("puzzles answered 200 per s", report["puzzles_ok_per_s"]),
        ("5xx / lost / duplicated", f"{report['server_errors_5xx']} / {report['lost']} / {report['duplicated']}"),
        ("duplicate server ids", report["duplicate_server_ids"]),
        ("stream faults / transport errors", f"{len(report['stream_faults'])} / {report['transport_errors']}"),
        ("answers differing from alone", f"{report['answers_differing_from_alone']} of {report['answers_compared']}"),
    ]
    for kind in ("all", *CALL_MIX):
        rows.append((f"latency {kind} p50 / p99 ms", f"{lat[kind]['p50_ms']} / {lat[kind]['p99_ms']}"))
    rows.append(("gauges after (slots, queue)", f"{report['gauges_after']}"))
    if mem["before_load"] and mem["after_load"]:
        before, after = mem["before_load"]["VmRSS"], mem["after_load"]["VmRSS"]
        rows.append(
            ("server RSS before / after MiB", f"{before / 1024:.1f} / {after / 1024:.1f} ({after - before:+d} KiB)")
        )
    if "rss_every_10_s" in mem:
        rows.append(("server RSS MiB every 10 s", " ".join(f"{rss / 1024:.0f}" for _, rss in mem["rss_every_10_s"])))
    print(_table(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("load", "overload"), default="load")
    parser.add_argument("--url", help="target a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, to read its memory")
    parser.add_argument("--weights-dir", type=Path, help="checkpoints to serve (default: tiny ones written here)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--pool", type=int, default=250, help="distinct puzzles (each is first solved alone)")
    parser.add_argument("--halt", choices=("adaptive", "never"), default="adaptive")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # only the tiny checkpoints are built here; the server has its own --threads

    with tempfile.TemporaryDirectory(prefix="trm-load-") as tmp:
        server: Server | None = None
        if args.url:
            base, pid = args.url.rstrip("/"), args.pid
            if urlsplit(base).hostname not in ("127.0.0.1", "localhost", "::1"):
                parser.error("--url must be a loopback address")
        else:
            weights = args.weights_dir or write_load_weights(Path(tmp) / "weights")
            extra = ["--threads", str(args.threads), "--log-level", "warning"]
            if args.scenario == "overload":
                extra += ["--slots", "2", "--queue-capacity", "4", "--max-steps-limit", "100000"]
            else:
                extra += ["--slots", str(args.slots)]
            server = start_server(weights, Path(tmp), *extra)
            base, pid = server.base, server.pid
        try:
            if args.scenario == "overload":
                puzzle = puzzle_pool(base, 1)[0]
                report: dict[str, Any] = run_overload(base, puzzle, 2, 4, 64)
                print(_table([(k, v) for k, v in report.items()]))
            else:
                report = run_load(base, pid, args.clients, args.duration, args.pool, args.halt, args.max_steps)
                print_load(report)
        finally:
            if server is not None:
                report_exit = server.stop()
                print(f"server stopped: exit {report_exit['exit_code']} after {report_exit['exit_s']} s")
        report["host"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

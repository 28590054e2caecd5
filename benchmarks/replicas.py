"""Server replicas behind a real load balancer (HAProxy): throughput at 1 and 3 replicas, and a rolling restart.

    python -m benchmarks.replicas                          # both scenarios, shipped sudoku-9x9 (make bench-replicas)
    python -m benchmarks.replicas --scenario restart       # the rolling restart only (tests/test_replicas.py)
    python -m benchmarks.replicas --clients 32 --duration 20 --json benchmarks/results/replicas.json

Three `python -m server` processes listen on loopback ports behind one HAProxy (Debian's package; `make test`
installs it). HAProxy health-checks each replica on /health/ready, which a draining server fails at once, and
retries a request on another replica when a connection fails or a replica answers 503 before queueing it (see
`haproxy_config`). Every puzzle of the pool is first solved ALONE, one request at a time, by one replica; every
answer under load must equal it (solution, steps used, halting reason).

throughput: a closed loop of N clients for T seconds through HAProxy with one replica in its backend, then with
three. On a 2-core machine three single-threaded replicas share two cores (and whatever else runs), so the
figure shows that the balancer spreads the work, not how a cluster scales.

restart: the same closed loop through all three while each replica in turn gets SIGTERM (it drains: not ready,
queued and running puzzles answered, exit 0) and a replacement starts on a port of its own (as a new pod gets a
new address; HAProxy lists it from the start, DOWN until its health check passes); the next replica goes once
HAProxy has the replacement UP. Reported: every request answered or not, statuses (no 5xx may reach a client),
answers differing from alone, HAProxy's retries and redispatches, and per replica when it left the pool, when its
replacement was ready and back in the pool, when the old process exited and with what code, and what each served.

Traffic goes to the loopback only; the load is bounded in time and in requests, and every process started here
is stopped on the way out, failure included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import Answer, answer_of, free_port, solve_alone

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "server" / "static" / "samples.json"
MAX_REQUESTS = 200_000  # a hard cap on calls per load run, whatever its duration
# One thread per replica (the machine has two cores), fp32 (bf16 autocast would let batch composition move a
# halting decision), no escalation (one view: an answer is a function of the puzzle alone). The deadline is raised
# from 30 s to 120 s: a closed loop of a few dozen clients on two cores shared with other jobs can queue a puzzle
# past 30 s, and a 504 then would measure the machine's contention, not the restart. The drain timeout stays 30 s.
DEADLINE_S = 120
REPLICA_ARGS = ("--threads", "1", "--dtype", "float32", "--default-budget-steps", "0", "--log-level", "warning")
REPLICA_ARGS += ("--request-timeout-s", str(DEADLINE_S))
REQUEST_TIMEOUT = httpx.Timeout(DEADLINE_S + 60.0, connect=5.0)
SERVING_NICE = 10  # the rolling restart's serving replicas; see run_restart


def haproxy_binary() -> str:
    """$HAPROXY, else `haproxy` on PATH or in /usr/sbin (Debian's package; `make test` installs it)."""
    for candidate in (os.environ.get("HAPROXY"), shutil.which("haproxy"), "/usr/sbin/haproxy"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise FileNotFoundError("haproxy not found: `make test` installs Debian's package (apt-get install haproxy)")


def haproxy_config(frontend: int, servers: dict[str, int], stats_socket: Path) -> str:
    """An HTTP load balancer over `servers` (name -> loopback port), with the settings that let replicas come and
    go cleanly. A server with nothing listening yet is simply DOWN until its health check passes.

    * `option httpchk GET /health/ready` every 500 ms, down after one failure: a draining server answers 503 there
      from its first moment, so it leaves the pool within a check interval; back after two successes.
    * `retry-on conn-failure empty-response 503` with `option redispatch 1`: a request that meets a replica which
      has exited (refused), closed an idle connection under it (empty response) or is draining (503, answered
      before anything is queued) is sent again to another replica. Solving is a pure function of the request, so
      a retry can never change or duplicate an answer. `http-buffer-request` keeps the body for the retry.
    * leastconn: a puzzle costs as many model steps as it takes, so open requests measure a replica's load.
    """
    lines = "\n".join(f"    server {name} 127.0.0.1:{port}" for name, port in servers.items())
    return f"""global
    maxconn 2048
    stats socket {stats_socket} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option http-buffer-request
    timeout connect 2s
    timeout client {DEADLINE_S + 30}s
    timeout server {DEADLINE_S + 30}s
    timeout check 2s
    timeout http-request 10s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503

frontend trm
    bind 127.0.0.1:{frontend}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /health/ready
    http-check expect status 200
    default-server check inter 500ms fall 1 rise 2
{lines}
"""


@dataclass
class Balancer:
    """A running HAProxy; `stats()` reads its per-server table over the admin socket."""

    proc: subprocess.Popen[bytes]
    base: str
    socket_path: Path
    log_path: Path

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` as {server or BACKEND: row}; rows hold status (UP/DOWN), stot, wretr, wredis, ..."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas"}

    def wait_status(self, server: str, status: str, timeout: float = 60.0) -> float:
        """Seconds until HAProxy reports `server` with `status` (UP, DOWN); raises after `timeout`."""
        start = time.monotonic()
        while not self.stats()[server]["status"].startswith(status):
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{server} not {status} in HAProxy within {timeout} s: {self.stats()[server]}")
            time.sleep(0.05)
        return time.monotonic() - start

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.socket_path.parent, ignore_errors=True)


def start_balancer(servers: dict[str, int], work: Path, up: list[str]) -> Balancer:
    """HAProxy on a free loopback port, in the foreground (-db), returned once the servers named in `up` are UP."""
    port = free_port()
    config = work / f"haproxy-{port}.cfg"
    # A short path: a Unix socket's path is limited to 107 bytes, pytest's temporary directories can be longer.
    sock_dir = Path(tempfile.mkdtemp(prefix="trm-ha-"))
    config.write_text(haproxy_config(port, servers, sock_dir / "admin.sock"))
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejects its config:\n{check.stdout}{check.stderr}")
    log_path = work / f"haproxy-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    balancer = Balancer(proc, f"http://127.0.0.1:{port}", sock_dir / "admin.sock", log_path)
    try:
        deadline = time.monotonic() + 30
        while not balancer.socket_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy did not start:\n{balancer.log()}")
            time.sleep(0.05)
        for name in up:
            balancer.wait_status(name, "UP", timeout=30)
    except BaseException:
        balancer.stop()
        raise
    return balancer


# ------------------------------------------------------------------------------------------------ replicas
@dataclass
class Replica:
    """One replica slot: `python -m server` processes on loopback ports reserved up front, one per generation.

    A replacement gets the next port, as a new pod gets a new address; HAProxy lists every generation's port from
    the start and lets its health checks decide which are in the pool.
    """

    ports: list[int]
    weights: Path
    model: str
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return len(self.procs) - 1

    @property
    def port(self) -> int:
        return self.ports[self.generation]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        """Start the next generation (returns at once; `wait_ready` waits for it)."""
        port = self.ports[len(self.procs)]
        cmd = [sys.executable, "-m", "server", "--weights-dir", str(self.weights), "--models", self.model]
        cmd += ["--host", "127.0.0.1", "--port", str(port), *REPLICA_ARGS]
        with (self.log_dir / f"replica-{port}.log").open("wb") as log:
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until the newest generation's /health/ready answers 200."""
        proc, start = self.procs[-1], time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"replica :{self.port} exited with {proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/health/ready", timeout=2).status_code == 200:
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"replica :{self.port} not ready within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def renice(self, nice: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Renice every thread of `proc` (default: the newest process); Linux nice is per thread, and threads it
        starts later inherit it. Raising the priority again needs CAP_SYS_NICE: without it the call does nothing."""
        pid = (proc or self.procs[-1]).pid
        with contextlib.suppress(OSError):  # the process or one of its threads ended meanwhile; or not allowed
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(tid), nice)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def log(self, tail: int = 4000) -> str:
        path = self.log_dir / f"replica-{self.port}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""


@contextlib.contextmanager
def replica_set(weights: Path, model: str, count: int, log_dir: Path, generations: int = 2) -> Iterator[list[Replica]]:
    """`count` replicas started together and ready, each with ports for `generations` processes; every process
    started is killed on the way out, whatever happened."""
    replicas = [Replica([free_port() for _ in range(generations)], weights, model, log_dir) for _ in range(count)]
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.kill_all()


# ------------------------------------------------------------------------------------------------ load
@dataclass
class Ledger:
    """What the clients sent and got: one entry per request, answered or not."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    answered_200: int = 0
    elapsed_s: float = 0.0


async def _client(
    index: int, base: str, pool: list[dict[str, Any]], alone: list[Answer], stop: threading.Event, ledger: Ledger
) -> None:
    rng = random.Random(index)
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT) as client:
        while not stop.is_set() and ledger.sent < MAX_REQUESTS:
            pick = rng.randrange(len(pool))
            ledger.sent += 1
            try:
                response = await client.post("/solve", json=pool[pick])
            except httpx.TransportError as exc:  # no answer at all: lost
                ledger.transport_errors[type(exc).__name__] += 1
                continue
            ledger.statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                ledger.answered_200 += 1
                got = answer_of(response.json())
                if got != alone[pick]:
                    ledger.mismatches.append({"puzzle": pool[pick], "alone": alone[pick], "got": got})


def drive(
    base: str, pool: list[dict[str, Any]], alone: list[Answer], clients: int, stop: threading.Event, ledger: Ledger
) -> None:
    """A closed loop of `clients` until `stop` is set; requests in flight then are awaited, not dropped."""

    async def run() -> None:
        await asyncio.gather(*(_client(i, base, pool, alone, stop, ledger) for i in range(clients)))

    start = time.monotonic()
    asyncio.run(run())
    ledger.elapsed_s = time.monotonic() - start


@contextlib.contextmanager
def background_load(
    base: str, pool: list[dict[str, Any]], alone: list[Answer], clients: int, limit_s: float
) -> Iterator[Ledger]:
    """The closed loop in a thread while the body runs (at most `limit_s`); stops and joins it on exit."""
    ledger, stop = Ledger(), threading.Event()
    thread = threading.Thread(target=drive, args=(base, pool, alone, clients, stop, ledger), daemon=True)
    timer = threading.Timer(limit_s, stop.set)
    thread.start()
    timer.start()
    try:
        yield ledger
    finally:
        stop.set()
        timer.cancel()
        thread.join(timeout=REQUEST_TIMEOUT.read)


def summary(ledger: Ledger) -> dict[str, Any]:
    answered = sum(ledger.statuses.values())
    return {
        "requests": ledger.sent,
        "answered": answered,
        "lost": ledger.sent - answered,
        "statuses": dict(sorted(ledger.statuses.items())),
        "server_errors_5xx": sum(n for s, n in ledger.statuses.items() if s.startswith("5")),
        "transport_errors": dict(ledger.transport_errors),
        "answers_differing_from_alone": len(ledger.mismatches),
        "first_mismatches": ledger.mismatches[:3],
        "seconds": round(ledger.elapsed_s, 1),
        "answers_per_s": round(ledger.answered_200 / ledger.elapsed_s, 1) if ledger.elapsed_s else 0.0,
    }


def sudoku_pool(size: int) -> list[dict[str, Any]]:
    return [{"puzzle": "sudoku", "grid": g} for g in json.loads(SAMPLES.read_text())["sudoku"][:size]]


# ------------------------------------------------------------------------------------------------ scenarios
def run_throughput(
    replicas: list[Replica], pool: list[dict[str, Any]], alone: list[Answer], clients: int, duration: float, work: Path
) -> dict[str, Any]:
    """Closed-loop answers/s through HAProxy with 1 replica in its backend, then with all of them."""
    out: dict[str, Any] = {}
    for count in (1, len(replicas)):
        servers = {f"r{i}": r.port for i, r in enumerate(replicas[:count])}
        balancer = start_balancer(servers, work, up=list(servers))
        try:
            with background_load(balancer.base, pool, alone, clients, duration) as ledger:
                time.sleep(duration)
            out[f"{count}_replicas"] = summary(ledger)
        finally:
            balancer.stop()
    return out


def run_restart(
    replicas: list[Replica],
    pool: list[dict[str, Any]],
    alone: list[Answer],
    clients: int,
    work: Path,
    settle_s: float = 2.0,
    limit_s: float = 300.0,
) -> dict[str, Any]:
    """Roll every replica under load: SIGTERM it, start its replacement, wait until HAProxy has the replacement UP,
    then the next. An old replica drains and exits in the background; its exit code is collected at the end.

    Serving replicas run at nice SERVING_NICE (set once ready): on two cores a booting replacement, which in a
    cluster boots on CPU of its own, would otherwise be starved by its serving siblings and the roll take minutes.
    A replica gets its priority back when it is told to drain (where the OS lets this process raise it: root), as
    a terminating pod keeps its CPU until it exits.
    """
    old = {f"r{i}": r.ports[0] for i, r in enumerate(replicas)}
    new = {f"r{i}-new": r.ports[1] for i, r in enumerate(replicas)}
    balancer = start_balancer(old | new, work, up=list(old))
    steps: list[dict[str, Any]] = []
    exits: list[tuple[subprocess.Popen[bytes], float, threading.Thread, dict[str, float]]] = []
    for replica in replicas:
        replica.renice(SERVING_NICE)
    try:
        with background_load(balancer.base, pool, alone, clients, limit_s) as ledger:
            time.sleep(settle_s)  # load on every replica before the first goes
            start = time.monotonic()
            for i, replica in enumerate(replicas):
                leaving, t0 = replica.procs[-1], time.monotonic()
                leaving.send_signal(signal.SIGTERM)
                replica.renice(0, leaving)
                exited: dict[str, float] = {}
                watcher = threading.Thread(target=_time_exit, args=(leaving, t0, exited), daemon=True)
                watcher.start()
                exits.append((leaving, t0, watcher, exited))
                replica.launch()
                down_s = balancer.wait_status(f"r{i}", "DOWN", timeout=30)
                ready_s = replica.wait_ready()
                replica.renice(SERVING_NICE)
                balancer.wait_status(f"r{i}-new", "UP", timeout=60)
                steps.append(
                    {
                        "replica": f"r{i}",
                        "down_in_haproxy_s": round(down_s, 2),
                        "replacement_ready_s": round(ready_s, 2),
                        "replacement_up_in_haproxy_s": round(time.monotonic() - t0, 2),
                    }
                )
            restart_s = time.monotonic() - start
            time.sleep(settle_s)  # load on the replacements before the clients stop
        for step, (leaving, _, watcher, exited) in zip(steps, exits, strict=True):
            watcher.join(timeout=60)
            step["exit_code"] = leaving.poll()
            step["old_exited_s"] = round(exited["s"], 2) if "s" in exited else None
        stats = balancer.stats()
        for i, step in enumerate(steps):
            step["served"] = int(stats[f"r{i}"]["stot"])
            step["replacement_served"] = int(stats[f"r{i}-new"]["stot"])
        backend = stats["BACKEND"]
        return {
            "replicas": len(replicas),
            "clients": clients,
            "rolling_restart_s": round(restart_s, 1),
            "load": summary(ledger),
            "haproxy": {"retries": int(backend["wretr"] or 0), "redispatches": int(backend["wredis"] or 0)},
            "restarts": steps,
        }
    finally:
        balancer.stop()


def _time_exit(proc: subprocess.Popen[bytes], since: float, out: dict[str, float]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=120)
        out["s"] = time.monotonic() - since


# ------------------------------------------------------------------------------------------------ CLI
def _print_report(report: dict[str, Any]) -> None:
    rows: list[tuple[str, Any]] = [("host", report["host"])]
    for key, value in report.get("throughput", {}).items():
        rows.append(
            (f"throughput {key.replace('_', ' ')}", f"{value['answers_per_s']} answers/s ({value['statuses']})")
        )
    if "restart" in report:
        restart = report["restart"]
        load = restart["load"]
        rows += [
            ("restart: replicas x clients", f"{restart['replicas']} x {restart['clients']}"),
            ("restart: rolled all in", f"{restart['rolling_restart_s']} s"),
            ("restart: requests / answered / lost", f"{load['requests']} / {load['answered']} / {load['lost']}"),
            ("restart: statuses, 5xx", f"{load['statuses']}, {load['server_errors_5xx']}"),
            ("restart: transport errors", load["transport_errors"]),
            ("restart: answers differing from alone", load["answers_differing_from_alone"]),
            ("restart: answers/s during the roll", load["answers_per_s"]),
            ("restart: HAProxy retries / redispatches", f"{restart['haproxy']}"),
        ]
        for step in restart["restarts"]:
            rows.append(
                (
                    f"restart: {step['replica']} (s after SIGTERM)",
                    f"down in HAProxy {step['down_in_haproxy_s']}, replacement ready {step['replacement_ready_s']}, "
                    f"replacement UP {step['replacement_up_in_haproxy_s']}, old exited {step['exit_code']} after "
                    f"{step['old_exited_s']}; served old / new {step['served']} / {step['replacement_served']}",
                )
            )
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("all", "throughput", "restart"), default="all")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--model", default="sudoku-9x9")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per throughput measurement")
    parser.add_argument("--pool", type=int, default=64, help="distinct Sudoku puzzles (each first solved alone)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="trm-replicas-") as tmp:
        work = Path(tmp)
        with replica_set(args.weights_dir, args.model, args.replicas, work) as replicas:
            pool = sudoku_pool(args.pool)
            alone = solve_alone(replicas[0].base, pool, {})
            report: dict[str, Any] = {
                "host": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
                "model": args.model,
                "pool": len(pool),
                "clients": args.clients,
            }
            if args.scenario in ("all", "throughput"):
                report["throughput"] = run_throughput(replicas, pool, alone, args.clients, args.duration, work)
            if args.scenario in ("all", "restart"):
                report["restart"] = run_restart(replicas, pool, alone, args.clients, work)
    _print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

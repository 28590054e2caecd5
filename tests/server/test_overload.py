"""Overload of the real `python -m server` process: past queue capacity it answers 503 + Retry-After at once,
stays live, frees the slots of clients that vanish mid-request or mid-stream, and serves again afterwards.

The server has 2 slots and a queue of 4; never-halting puzzles with a huge step budget hold them, so nothing
but a client disconnecting can free them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.load import flood, metric_sum, raw_request, read_until, timed_get, wait_for_gauge, wait_for_idle
from tests.server.conftest import ServerProcess, start_server, sudoku_puzzle

SLOTS, CAPACITY, FLOOD = 2, 4, 48
HOLD = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "halt": "never", "max_steps": 100_000}
QUICK = {"puzzle": "sudoku", "grid": sudoku_puzzle(seed=1), "max_steps": 2}


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--slots", str(SLOTS), "--queue-capacity", str(CAPACITY), "--max-steps-limit", "100000"]
    args += ["--default-budget-steps", "0"]  # one view a puzzle: escalation is tested in test_budget_escalation.py
    process = start_server(tiny_weights, tmp_path_factory.mktemp("overload-logs"), *args)
    try:
        yield process
    finally:
        process.stop()


def test_full_queue_answers_503_fast_stays_live_frees_vanished_clients_and_recovers(server: ServerProcess) -> None:
    base = server.base
    cancelled_before = metric_sum(base, "trm_puzzle_failures_total")
    streams = [raw_request(base, "/solve", {**HOLD, "stream": True}) for _ in range(SLOTS)]
    queued: list[socket.socket] = []
    try:
        for sock in streams:
            read_until(sock, b"event: step")  # both slots busy, mid-stream
        queued = [raw_request(base, "/solve", HOLD) for _ in range(CAPACITY)]
        wait_for_gauge(base, "trm_queue_length", CAPACITY)
        assert metric_sum(base, "trm_running_slots") == SLOTS

        async def overloaded() -> tuple[list[tuple[int, float, str | None]], list[tuple[int, float]]]:
            live = asyncio.ensure_future(timed_get(base, "/health/live", 10, 0.02))
            return await flood(base, QUICK, FLOOD), await live

        answers, live = asyncio.run(overloaded())
    finally:
        for sock in [*queued, *streams]:  # every holder vanishes: 4 mid-request, 2 mid-stream
            sock.close()

    assert [status for status, _, _ in answers] == [503] * FLOOD
    assert {retry for _, _, retry in answers} == {"1"}
    # How fast the 503s and liveness answers come is measured by benchmarks/load.py, not asserted here.
    assert [status for status, _ in live] == [200] * 10

    idle = wait_for_idle(base, timeout=10)
    assert idle["trm_running_slots"] == 0 and idle["trm_queue_length"] == 0, idle
    assert metric_sum(base, "trm_puzzle_failures_total") - cancelled_before == SLOTS + CAPACITY  # all cancelled

    after = asyncio.run(flood(base, QUICK, CAPACITY))  # as many as the queue holds, whatever the slots do
    assert [status for status, _, _ in after] == [200] * CAPACITY


def test_stream_abandoned_before_its_first_step_is_cancelled_too(server: ServerProcess) -> None:
    base = server.base
    holder = raw_request(base, "/solve", {**HOLD, "stream": True})
    other = raw_request(base, "/solve", {**HOLD, "stream": True})
    try:
        read_until(holder, b"event: step")
        read_until(other, b"event: step")
        waiting = raw_request(base, "/solve", {**HOLD, "stream": True})  # queued: no step event yet
        wait_for_gauge(base, "trm_queue_length", 1)
        waiting.close()
        wait_for_gauge(base, "trm_queue_length", 0, timeout=5)
    finally:
        holder.close()
        other.close()
    assert wait_for_idle(base, timeout=10)["trm_running_slots"] == 0

"""A CI-sized run of benchmarks/load.py against the real server: 32 clients for 10 s of mixed /solve, streamed
/solve and /solve/batch calls. No 5xx, no lost or duplicated answer, and every answer identical to the one the
same puzzle got when it was solved alone (batch composition must not change a puzzle's answer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from benchmarks.load import Server, run_load, start_server, write_load_weights

CLIENTS, DURATION_S, POOL = 32, 10.0, 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    torch.set_num_threads(1)  # building the checkpoints shares two cores with other work
    weights = write_load_weights(tmp_path_factory.mktemp("load-weights"))
    # No escalation: a streamed answer's steps_used is then the streamed view's, which the load checks count.
    args = ("--threads", "1", "--log-level", "warning", "--default-budget-steps", "0")
    process = start_server(weights, tmp_path_factory.mktemp("load-logs"), *args)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def report(server: Server) -> dict[str, Any]:
    return run_load(server.base, server.pid, CLIENTS, DURATION_S, POOL)


def test_the_pool_can_tell_answers_apart_and_halts_at_varied_steps(report: dict[str, Any]) -> None:
    pool = report["pool"]
    assert pool["kinds"] == {"sudoku": POOL // 2, "maze": POOL // 2}
    assert pool["distinct_alone_answers"] >= 0.75 * POOL  # a mixed-up answer would not go unnoticed
    assert len(pool["alone_steps"]) >= 3  # adaptive halting lets puzzles leave at different steps


def test_every_call_kind_ran_and_none_failed(report: dict[str, Any]) -> None:
    kinds = {key.split()[0] for key in report["calls_by_kind_status"]}
    assert kinds == {"solve", "stream", "batch"}, report["calls_by_kind_status"]
    assert report["puzzle_statuses"] == {"200": report["puzzles_sent"]}, report["puzzle_statuses"]
    assert report["server_errors_5xx"] == 0 and report["transport_errors"] == {}
    assert report["puzzles_sent"] >= CLIENTS  # every client got at least one call through


def test_every_puzzle_got_exactly_one_answer(report: dict[str, Any]) -> None:
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["duplicate_server_ids"] == 0
    assert report["stream_faults"] == []


def test_answers_under_load_equal_the_answers_alone(report: dict[str, Any]) -> None:
    assert report["answers_compared"] == report["puzzles_sent"]
    assert report["answers_differing_from_alone"] == 0, report["first_mismatches"]


def test_slots_and_queue_are_empty_afterwards_and_the_server_exits_zero(report: dict[str, Any], server: Server) -> None:
    assert report["gauges_after"]["trm_running_slots"] == 0 and report["gauges_after"]["trm_queue_length"] == 0
    memory = report["memory_kib"]
    assert memory["before_load"]["VmRSS"] > 0 and memory["after_load"]["VmRSS"] > 0
    assert server.stop()["exit_code"] == 0

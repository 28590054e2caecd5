"""The real `python -m server` process over a real socket: solve, stream, models, metrics, and SIGTERM draining."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import MAZE_10, ServerProcess, start_server, sudoku_puzzle

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A high step limit lets one test hold a slot for seconds with a single puzzle.
    # No escalation: untrained models never verify, and these tests count steps (escalation: test_budget_escalation).
    args = ("--max-steps-limit", "1000", "--default-budget-steps", "0")
    process = start_server(tiny_weights, tmp_path_factory.mktemp("server-logs"), *args)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as client:
        yield client


def metric_sum(client: httpx.Client, name: str | tuple[str, ...], **labels: str) -> float:
    """Sum of the samples called `name` (or any of several names, from one scrape) whose labels include `labels`.

    Gauges that a job moves between (queued, then running) must be read from one scrape: read one at a time, a job
    that moves in between is counted twice."""
    names = (name,) if isinstance(name, str) else name
    text = client.get("/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def post(base: str, payload: dict[str, Any]) -> httpx.Response:
    """One request on its own connection (safe to call from many threads)."""
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        return client.post("/solve", json=payload)


def test_solves_sudoku_and_maze(http: httpx.Client) -> None:
    sudoku = http.post("/solve", json={"puzzle": "sudoku", "grid": sudoku_puzzle()})
    assert sudoku.status_code == 200, sudoku.text
    body = sudoku.json()
    assert body["model"] == "sudoku-tiny" and len(body["solution"]) == 9 and body["steps_used"] == 6

    maze = http.post("/solve", json={"puzzle": "maze", "grid": MAZE_10, "return_steps": True})
    assert maze.status_code == 200, maze.text
    body = maze.json()
    assert body["model"] == "maze-tiny" and len(body["solution"]) == 10
    assert [s["step"] for s in body["steps"]] == list(range(1, body["steps_used"] + 1))


def test_bad_grid_is_422_over_the_wire(http: httpx.Client) -> None:
    response = http.post("/solve", json={"puzzle": "maze", "grid": [r.replace("G", " ") for r in MAZE_10]})
    assert response.status_code == 422 and response.json()["message"] == "maze has no G"


def test_stream_sends_one_step_event_per_step_then_one_result(http: httpx.Client) -> None:
    body = {"puzzle": "sudoku", "grid": sudoku_puzzle(seed=2), "stream": True, "halt": "never", "max_steps": 8}
    events: list[tuple[str, Any]] = []
    event: str | None = None
    with http.stream("POST", "/solve", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                assert event is not None, "data line before any event line"
                events.append((event, json.loads(line[len("data:") :])))
                event = None
    names = [name for name, _ in events]
    assert names == ["step"] * 8 + ["result"]
    assert [data["step"] for _, data in events[:-1]] == list(range(1, 9))
    result = events[-1][1]
    assert result["steps_used"] == 8 and result["halted_by"] == "max_steps"
    assert events[-2][1]["solution"] == result["solution"]


def test_models_lists_the_loaded_checkpoints(http: httpx.Client) -> None:
    models = {m["name"]: m for m in http.get("/models").json()["models"]}
    assert set(models) == {"sudoku-tiny", "maze-tiny", "arc-tiny"}
    assert models["maze-tiny"]["puzzle"] == "maze" and models["maze-tiny"]["grid_size"] == 10
    assert all(len(m["sha256"]) == 64 and m["trainable_parameters"] > 0 for m in models.values())


def test_metrics_counters_move_after_solves(http: httpx.Client) -> None:
    before_requests = metric_sum(http, "trm_requests_total", model="sudoku-tiny", outcome="ok")
    before_steps = metric_sum(http, "trm_batch_size_count", model="sudoku-tiny")
    before_puzzles = metric_sum(http, "trm_puzzle_steps_count", model="sudoku-tiny")
    for seed in range(2):
        body = {"puzzle": "sudoku", "grid": sudoku_puzzle(seed=seed), "max_steps": 3}
        assert http.post("/solve", json=body).status_code == 200
    assert metric_sum(http, "trm_requests_total", model="sudoku-tiny", outcome="ok") == before_requests + 2
    assert metric_sum(http, "trm_puzzle_steps_count", model="sudoku-tiny") == before_puzzles + 2
    assert metric_sum(http, "trm_batch_size_count", model="sudoku-tiny") >= before_steps + 3


def test_oversize_bodies_are_413_over_a_real_socket(http: httpx.Client) -> None:
    big = json.dumps({"puzzle": "sudoku", "grid": "." * (1 << 20)}).encode()  # default limit: 1 MiB
    response = http.post("/solve", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"

    def chunks() -> Iterator[bytes]:
        yield b'{"puzzle": "sudoku", "grid": "'
        for _ in range(20):
            yield b"." * 65536
        yield b'"}'

    with httpx.Client(base_url=http.base_url, timeout=TIMEOUT) as fresh:  # the 413 above closed its connection
        response = fresh.post("/solve", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "body_too_large"


def test_client_that_goes_away_has_its_puzzle_cancelled_and_its_slot_freed(http: httpx.Client) -> None:
    cancelled = metric_sum(http, "trm_puzzle_failures_total", model="maze-tiny", kind="cancelled")
    body = {"puzzle": "maze", "grid": MAZE_10, "halt": "never", "max_steps": 1000}  # ~5 s of steps
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=http.base_url, timeout=0.5) as impatient:
        impatient.post("/solve", json=body)
    deadline = time.monotonic() + 3  # well before the 1000 steps could have run
    while metric_sum(http, "trm_puzzle_failures_total", model="maze-tiny", kind="cancelled") == cancelled:
        assert time.monotonic() < deadline, "the abandoned puzzle was not cancelled"
        time.sleep(0.05)
    assert metric_sum(http, "trm_running_slots", model="maze-tiny") == 0
    assert metric_sum(http, "trm_requests_total", model="maze-tiny", outcome="cancelled") >= 1


def test_sigterm_answers_in_flight_puzzles_refuses_new_ones_and_exits_zero(tiny_weights: Path, tmp_path: Path) -> None:
    process = start_server(tiny_weights, tmp_path, "--default-budget-steps", "0")
    try:
        body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "halt": "never", "max_steps": 64}

        with ThreadPoolExecutor(max_workers=10) as pool, httpx.Client(base_url=process.base, timeout=TIMEOUT) as c:
            in_flight = [pool.submit(post, process.base, {**body, "grid": sudoku_puzzle(seed=i)}) for i in range(10)]
            deadline = time.monotonic() + 30
            while metric_sum(c, ("trm_queue_length", "trm_running_slots")) < 10:
                assert not any(f.done() for f in in_flight), "a puzzle finished before all ten were accepted"
                assert time.monotonic() < deadline, "the ten puzzles never all reached the scheduler"
                time.sleep(0.01)
            process.proc.send_signal(signal.SIGTERM)

            late = []
            for _ in range(3):
                try:
                    late.append(post(process.base, {**body, "max_steps": 1}).status_code)
                except httpx.TransportError:
                    late.append(None)  # the server already closed its socket
            answers = [f.result(timeout=60) for f in in_flight]

        assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers if r.status_code != 200]
        assert all(r.json()["steps_used"] == 64 for r in answers)
        assert set(late) <= {503, None} and late, late
        assert process.proc.wait(timeout=30) == 0, process.log()
        assert "draining" in process.log(20000)
    finally:
        process.stop()


def test_requests_during_drain_get_503_with_retry_after_and_not_ready(tiny_weights: Path, tmp_path: Path) -> None:
    process = start_server(tiny_weights, tmp_path, "--default-budget-steps", "0")
    try:
        body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "halt": "never", "max_steps": 64}
        with ThreadPoolExecutor(max_workers=8) as pool, httpx.Client(base_url=process.base, timeout=TIMEOUT) as c:
            running = [pool.submit(post, process.base, body) for _ in range(8)]  # ~2 s of steps on one core
            while metric_sum(c, "trm_running_slots") < 8:
                assert not any(f.done() for f in running)
                time.sleep(0.01)
            process.proc.send_signal(signal.SIGTERM)
            with httpx.Client(base_url=process.base, timeout=TIMEOUT) as other:
                refused = other.post("/solve", json={**body, "max_steps": 1})
                ready = other.get("/health/ready")
            assert [f.result(timeout=60).status_code for f in running] == [200] * 8
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"] == "draining"
        assert ready.status_code == 503
        assert process.proc.wait(timeout=30) == 0
    finally:
        process.stop()

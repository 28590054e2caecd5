"""The shipped size-agnostic ARC checkpoint answers an unseen 20x20 task through the real `python -m server`
process: two attempts per test input, its test-time training within the budget the request asked for."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.server.conftest import ROOT, ServerProcess, start_server

SHIPPED = ROOT / "weights" / "arc-any"
BUDGET_S = 6.0


def flipped_pair(rng: np.random.Generator) -> dict[str, list[list[int]]]:
    grid = rng.integers(0, 10, (20, 20))
    return {"input": grid.tolist(), "output": grid[:, ::-1].tolist()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    weights = tmp_path_factory.mktemp("weights")
    (weights / SHIPPED.name).symlink_to(SHIPPED)
    process = start_server(weights, tmp_path_factory.mktemp("server-logs"), timeout=180)
    try:
        yield process
    finally:
        process.stop()


def test_a_20x20_task_gets_two_attempts_per_test_input_within_the_budget(server: ServerProcess) -> None:
    rng = np.random.default_rng(20)
    task = {
        "train": [flipped_pair(rng) for _ in range(3)],
        "test": [{"input": flipped_pair(rng)["input"]} for _ in range(2)],
    }
    started = time.monotonic()
    with httpx.Client(base_url=server.base, timeout=httpx.Timeout(120.0, connect=5.0)) as client:
        response = client.post("/solve", json={"puzzle": "arc", "task": task, "adapt_budget_s": BUDGET_S})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == SHIPPED.name
    assert len(body["solution"]) == 2
    for answer in body["solution"]:
        for attempt in (answer["attempt_1"], answer["attempt_2"]):
            assert attempt and all(len(row) == len(attempt[0]) and all(0 <= v <= 9 for v in row) for row in attempt)
    assert body["timing"]["adapt_ms"] <= BUDGET_S * 1000
    assert elapsed < BUDGET_S + 30  # answering and HTTP on a loaded 2-core machine, far below the deadline

"""ARC at every size: a size-agnostic (`conv`) ARC checkpoint takes every task up to 30x30 on the smallest of its
canvases, size-changing tasks included, and answers an unseen task by test-time training within its budget.

The tiny checkpoint is untrained, so answers are not checked for being right (tests/test_adapt_network.py and
tests/inference/test_solve_unseen.py show a task solved after test-time training and not before); these tests pin
the routing to canvases, the two attempts, the budget and its request field.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.registry import Registry
from server.settings import Settings
from tests.server.conftest import sudoku_puzzle, write_conv_checkpoint
from tests.server.test_arc import assert_two_attempts

BUDGET_S = 2.0
TOLERANCE_S = 0.5  # thread hand-off and the response: the budget bounds the work, not the HTTP round trip


def grid(rows: int, cols: int, seed: int) -> list[list[int]]:
    return np.random.default_rng(seed).integers(0, 10, (rows, cols)).tolist()  # type: ignore[no-any-return]


def scaled(g: list[list[int]], k: int) -> list[list[int]]:
    return np.kron(np.array(g), np.ones((k, k), np.int64)).tolist()  # type: ignore[no-any-return]


BIG = {  # 30x30 grids: the ARC limit
    "train": [{"input": grid(30, 30, s), "output": grid(30, 30, s + 10)} for s in range(2)],
    "test": [{"input": grid(30, 30, 5)}],
}
GROWING = {  # 3x3 -> 9x9: the test output (12x12) is larger than any given grid
    "train": [{"input": grid(3, 3, s), "output": scaled(grid(3, 3, s), 3)} for s in range(2)],
    "test": [{"input": grid(4, 4, 7)}, {"input": grid(2, 2, 8)}],
}
SMALL = {
    "train": [{"input": grid(3, 4, s), "output": grid(4, 3, s + 1)} for s in range(2)],
    "test": [{"input": grid(3, 4, 9)}],
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = tmp_path_factory.mktemp("arc-any-weights")
    write_conv_checkpoint(
        weights / "arc-any-tiny", seed=4, family="arc", seq_len=144, conv_broadcast=True, halt_max_steps=3
    )
    return weights


def make_settings(weights: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        weights_dir=weights, threads=1, slots=8, arc_variants=2, arc_adapt_steps=10, arc_adapt_time_budget_s=BUDGET_S
    )
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def client(weights: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(weights, arc_adapt_max_budget_s=5.0))) as client:
        yield client


def test_each_task_runs_on_the_smallest_canvas_that_holds_it_and_its_foreseen_output(weights: Path) -> None:
    registry = Registry(make_settings(weights))
    registry.load()
    entry = registry.models["arc-any-tiny"]
    assert [c.codec.side for c in entry.canvases] == [12, 20, 32]  # type: ignore[attr-defined]
    assert entry.max_side == 30
    assert registry.pick("arc", None, 11).pool == "arc-any-tiny"
    assert registry.pick("arc", None, 12).pool == "arc-any-tiny@20x20"  # GROWING's 12x12 output needs 20
    assert registry.pick("arc", None, 30).pool == "arc-any-tiny@32x32"


@pytest.mark.parametrize("task", [BIG, GROWING, SMALL], ids=["30x30", "3x3-to-9x9", "small"])
def test_every_size_is_answered_with_two_attempts_within_the_budget(client: TestClient, task: dict[str, Any]) -> None:
    started = time.monotonic()
    response = client.post("/solve", json={"puzzle": "arc", "task": task})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert_two_attempts(body["solution"], task)
    assert body["model"] == "arc-any-tiny"
    assert body["timing"]["adapt_ms"] <= BUDGET_S * 1000
    assert elapsed <= BUDGET_S + TOLERANCE_S + 2.0  # plus parsing, voting and the in-process client


def test_a_request_sets_its_own_budget_up_to_the_servers_limit(client: TestClient) -> None:
    response = client.post("/solve", json={"puzzle": "arc", "task": SMALL, "adapt_budget_s": 0.5, "return_steps": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["timing"]["adapt_ms"] <= 500
    assert body["steps"] and body["steps"][-1]["step"] == body["steps_used"]  # the identity variant's steps

    over = client.post("/solve", json={"puzzle": "arc", "task": SMALL, "adapt_budget_s": 6})
    assert over.status_code == 422
    assert "arc_adapt_max_budget_s" in over.json()["message"] and over.json()["field"] == "adapt_budget_s"
    sudoku = client.post("/solve", json={"puzzle": "sudoku", "grid": sudoku_puzzle(), "adapt_budget_s": 1})
    assert sudoku.status_code == 422 and sudoku.json()["field"] == "adapt_budget_s"


def test_a_grid_past_30_is_refused_naming_the_limit(client: TestClient) -> None:
    task = {"train": [{"input": grid(31, 2, 0), "output": grid(2, 2, 1)}], "test": [{"input": grid(2, 2, 2)}]}
    response = client.post("/solve", json={"puzzle": "arc", "task": task})
    assert response.status_code == 422
    assert "30x30" in response.json()["message"]


def test_a_streamed_unseen_task_sends_its_steps_then_the_result(client: TestClient) -> None:
    with client.stream("POST", "/solve", json={"puzzle": "arc", "task": SMALL, "stream": True}) as response:
        text = "".join(response.iter_text())
    assert response.status_code == 200
    assert text.count("event: step") >= 1 and text.rstrip().split("\n")[-2] == "event: result"

"""ARC serving: known tasks through their trained variants, unseen tasks through test-time adaptation, two attempts.

The tiny checkpoint is untrained, so answers are not checked for being right; these tests pin which vectors and
variants run, the voting shape (two non-empty attempts per test input), the timing budget and the metrics.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.checkpoint import save_checkpoint
from model.puzzles.arc import encode_grid
from model.puzzles.augment import apply_variant, parse_variant_name
from server.app import create_app
from server.registry import Registry
from server.schemas import SolveRequest
from server.settings import Settings
from server.solve import ApiError, Solver
from tests.server.conftest import tiny_model
from tests.server.test_app import metric

TASK_A = {
    "train": [
        {"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]},
        {"input": [[5, 0, 0]], "output": [[0, 0, 5]]},
    ],
    "test": [{"input": [[5, 6], [7, 8]], "output": [[8, 7], [6, 5]]}, {"input": [[1, 0]]}],
}
UNSEEN = {
    "train": [{"input": [[1, 1], [0, 1]], "output": [[2, 2], [0, 2]]}, {"input": [[0, 1, 3]], "output": [[0, 2, 3]]}],
    "test": [{"input": [[1, 0], [1, 1]]}, {"input": [[3, 1, 1]]}],
}
IDENTIFIERS = ["<blank>", "task-a", "task-a|||t1|||0213456789", "task-a|||t6|||0123456789", "task-b"]
BUDGET_S = 1.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """arc-known: a 10x10 tiny ARC model with distinct table rows for three variants of task-a (and task-b)."""
    weights = tmp_path_factory.mktemp("arc-weights")
    model, config = tiny_model("arc", 100, seed=3, num_puzzle_ids=len(IDENTIFIERS))
    with torch.no_grad():
        model.puzzle_emb.copy_(torch.randn_like(model.puzzle_emb) * 0.1)
    directory = save_checkpoint(model, config, weights / "arc-known")
    (directory / "identifiers.json").write_text(json.dumps(IDENTIFIERS))
    (directory / "test_puzzles.json").write_text(json.dumps({"task-a": TASK_A}))
    return weights


def make_settings(weights: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        weights_dir=weights, threads=1, slots=8, arc_variants=4, arc_adapt_steps=25, arc_adapt_time_budget_s=BUDGET_S
    )
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def registry(weights: Path) -> Registry:
    registry = Registry(make_settings(weights))
    registry.load()
    return registry


@pytest.fixture(scope="module")
def client(weights: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(weights))) as client:
        yield client


def arc_request(task: dict[str, Any], **extra: Any) -> SolveRequest:
    return SolveRequest(puzzle="arc", task=task, **extra)


def assert_two_attempts(solution: Any, task: dict[str, Any]) -> None:
    assert len(solution) == len(task["test"])
    for answer in solution:
        assert set(answer) == {"attempt_1", "attempt_2"}
        for grid in answer.values():  # never [] as a grid
            assert grid and all(row and all(0 <= v <= 9 for v in row) for row in grid)
            assert len({len(row) for row in grid}) == 1


# ---------------------------------------------------------------------------------------------------- planning
def test_known_task_runs_every_trained_variant_with_its_table_row(registry: Registry) -> None:
    solver = Solver(registry.settings, registry)
    prep = solver.prepare(arc_request(TASK_A, task_id="task-a"))
    assert prep.arc is not None and prep.arc.mode == "known"
    assert len(prep.jobs) == 3 * 2 and prep.job_keys == [(t, v) for t in range(2) for v in range(3)]
    table = registry.models["arc-known"].engine.table
    for job, (t, v) in zip(prep.jobs, prep.job_keys, strict=True):
        row = IDENTIFIERS.index(
            next(n for n in IDENTIFIERS if parse_variant_name(n) == ("task-a", prep.arc.variants[v]))
        )
        np.testing.assert_array_equal(job.vector, table[row])
        grid = np.array(TASK_A["test"][t]["input"], np.uint8)
        np.testing.assert_array_equal(job.tokens, encode_grid(apply_variant(grid, prep.arc.variants[v]), 10))
    assert prep.arc.variants[0].is_identity  # job 0 (what return_steps shows) is the un-augmented task


def test_known_variants_are_capped_by_arc_max_variants(weights: Path, registry: Registry) -> None:
    solver = Solver(make_settings(weights, arc_max_variants=2), registry)
    prep = solver.prepare(arc_request(TASK_A, task_id="task-a"))
    assert prep.arc is not None and len(prep.arc.variants) == 2 and len(prep.jobs) == 2 * 2


def test_demonstrations_of_a_known_task_are_recognised_without_its_id(registry: Registry) -> None:
    task = copy.deepcopy(TASK_A)
    task["train"].reverse()  # the hash does not depend on the order of the pairs
    task["test"] = [{"input": [[3]]}]  # nor on the test inputs
    prep = Solver(registry.settings, registry).prepare(arc_request(task))
    assert prep.arc is not None and (prep.arc.mode, prep.arc.task_id) == ("known", "task-a")


def test_unseen_task_waits_for_adaptation_with_augmented_variants(registry: Registry) -> None:
    prep = Solver(registry.settings, registry).prepare(arc_request(UNSEEN))
    assert prep.arc is not None and prep.arc.mode == "adapted" and prep.arc.vectors is None and prep.jobs == []
    assert len(prep.arc.variants) == 4 and prep.arc.variants[0].is_identity


def test_unknown_task_id_is_404(registry: Registry) -> None:
    with pytest.raises(ApiError) as err:
        Solver(registry.settings, registry).prepare(arc_request(UNSEEN, task_id="never-seen"))
    assert (err.value.status, err.value.field) == (404, "task_id")


# ---------------------------------------------------------------------------------------------------- HTTP
def test_known_task_answers_two_attempts_per_test_input_without_adaptation(client: TestClient) -> None:
    known = metric(client, "trm_adapt_total", model="arc-known", mode="known")
    response = client.post("/solve", json={"puzzle": "arc", "task": TASK_A, "task_id": "task-a"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_two_attempts(body["solution"], TASK_A)
    assert "adapt_ms" not in body["timing"]
    assert metric(client, "trm_adapt_total", model="arc-known", mode="known") == known + 1


def test_unseen_task_is_adapted_within_its_budget_and_answers_two_attempts(client: TestClient) -> None:
    adapted = metric(client, "trm_adapt_total", model="arc-known", mode="adapted")
    fits = metric(client, "trm_adapt_seconds_count", model="arc-known")
    response = client.post("/solve", json={"puzzle": "arc", "task": UNSEEN, "return_steps": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_two_attempts(body["solution"], UNSEEN)
    timing = body["timing"]
    assert 0 < timing["adapt_ms"] <= BUDGET_S * 1000 + 500  # the budget, plus at most the step that crosses it
    assert timing["adapt_ms"] <= timing["total_ms"] and timing["queue_ms"] >= 0
    assert [s["step"] for s in body["steps"]] == list(range(1, len(body["steps"]) + 1))
    assert metric(client, "trm_adapt_total", model="arc-known", mode="adapted") == adapted + 1
    assert metric(client, "trm_adapt_seconds_count", model="arc-known") == fits + 1


def test_unseen_task_streams_steps_then_the_voted_result(client: TestClient) -> None:
    with client.stream("POST", "/solve", json={"puzzle": "arc", "task": UNSEEN, "stream": True, "max_steps": 2}) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    events = [block.split("\n", 1) for block in text.strip().split("\n\n")]
    assert [e[0] for e in events] == ["event: step", "event: step", "event: result"]
    result = json.loads(events[-1][1].removeprefix("data: "))
    assert_two_attempts(result["solution"], UNSEEN)
    assert result["timing"]["adapt_ms"] > 0

"""The HTTP app in-process (lifespan included) against tiny untrained checkpoints.

Untrained models give wrong answers, so nothing here checks that a puzzle is solved: these tests pin the contract
of shared/DESIGN.md (shapes, steps, halting, errors naming the field, auth, limits, metrics).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from model.checkpoint import save_checkpoint, sha256_file
from model.puzzles.dihedral import dihedral, inverse_dihedral
from server.app import create_app
from server.settings import Settings
from tests.server.conftest import MAZE_10, SOLVED, sudoku_puzzle, tiny_model, write_checkpoint, write_tiny_weights

MAX_BODY = 16 * 1024
ARC_TASK = {
    "train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}],
    "test": [{"input": [[5, 6], [7, 8]]}],
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sudoku-tiny, maze-tiny (10x10), arc-tiny (10x10), sudoku-tiny-halts whose halting head fires at once, and
    maze-tiny-views, whose untrained answers mark different open cells when the maze is turned."""
    weights = write_tiny_weights(tmp_path_factory.mktemp("weights"))
    write_checkpoint(weights / "sudoku-tiny-halts", "sudoku", 81, seed=4, q_halt_bias=5.0)
    write_checkpoint(weights / "maze-tiny-views", "maze", 100, seed=4)
    return weights


def make_settings(weights: Path, **overrides: Any) -> Settings:
    # No escalation unless a test asks: untrained models never verify, so every answer would try all 8 views
    # (escalation has its own tests in test_budget_escalation.py).
    base: dict[str, Any] = dict(
        weights_dir=weights, threads=1, slots=8, max_body_bytes=MAX_BODY, default_budget_steps=0
    )
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="module")
def client(weights: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(weights))) as client:
        yield client


def solve(client: TestClient, **body: Any) -> httpx.Response:
    return client.post("/solve", json=body)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "message", "field"}, body
    return body


def metric(client: TestClient, name: str, **labels: str) -> float:
    """Value of one sample in /metrics (0 when the labelled series does not exist yet)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# ---------------------------------------------------------------------------------------------------- solving
def test_solve_sudoku_list_of_lists_answers_the_contract_shape(client: TestClient) -> None:
    response = solve(client, puzzle="sudoku", grid=sudoku_puzzle())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sudoku-tiny" and body["puzzle"] == "sudoku"
    assert len(body["solution"]) == 9 and all(len(r) == 9 and all(0 <= v <= 9 for v in r) for r in body["solution"])
    assert body["steps_used"] == 6 and body["halted_by"] == "max_steps"  # untrained head never halts: N_sup = 6
    assert 0.0 <= body["halt_probability"] < 0.5
    assert body["verified"] is False
    assert set(body["timing"]) == {"queue_ms", "compute_ms", "total_ms"}
    assert 0 <= body["timing"]["compute_ms"] <= body["timing"]["total_ms"]
    assert body["steps"] is None and isinstance(body["id"], str) and body["id"]


def test_sudoku_string_with_dots_gives_the_same_answer_as_the_grid(client: TestClient) -> None:
    grid = sudoku_puzzle(seed=5)
    text = "".join("." if v == 0 else str(v) for row in grid for v in row)
    zeros = text.replace(".", "0")
    answers = [solve(client, puzzle="sudoku", grid=g).json() for g in (grid, text, zeros)]
    assert answers[0]["solution"] == answers[1]["solution"] == answers[2]["solution"]


def test_solve_maze_returns_rows_of_the_requested_size(client: TestClient) -> None:
    body = solve(client, puzzle="maze", grid=MAZE_10).json()
    assert body["model"] == "maze-tiny" and body["puzzle"] == "maze"
    assert len(body["solution"]) == 10 and all(isinstance(r, str) and len(r) == 10 for r in body["solution"])
    assert body["verified"] is False


def test_smaller_maze_is_answered_at_its_own_size(client: TestClient) -> None:
    maze = ["#######", "#S    #", "# ### #", "#   # #", "### # #", "#    G#", "#######"]
    body = solve(client, puzzle="maze", grid=maze).json()
    assert len(body["solution"]) == 7 and all(len(r) == 7 for r in body["solution"])


def test_solve_arc_returns_one_attempt_pair_per_test_input(client: TestClient) -> None:
    task = copy.deepcopy(ARC_TASK)
    task["test"].append({"input": [[1]]})
    body = solve(client, puzzle="arc", task=task, task_id="task-a").json()
    assert body["model"] == "arc-tiny" and body["verified"] is None
    assert len(body["solution"]) == 2 and all(set(s) == {"attempt_1", "attempt_2"} for s in body["solution"])


def test_unknown_arc_task_id_is_404_naming_task_id(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="arc", task=ARC_TASK, task_id="never-seen"), 404)
    assert err["field"] == "task_id" and "never-seen" in err["message"]


def turned(rows: list[Any], tid: int, inverse: bool = False) -> list[Any]:
    """A Sudoku (int lists) or maze (strings) grid under a symmetry of the square, as a client would turn it."""
    as_text = isinstance(rows[0], str)
    grid = np.array([list(r) for r in rows])
    out = (inverse_dihedral if inverse else dihedral)(grid, tid)
    return ["".join(r) for r in out] if as_text else out.astype(int).tolist()


def test_views_answer_what_most_turned_copies_answer(client: TestClient) -> None:
    # A maze: the untrained tiny Sudoku model answers the same constant grid however the puzzle is turned, and an
    # answer keeps the maze's walls, S and G, so views differ only where this model marks open cells differently.
    # The Q head alone: a view verified first would stop the others (tested with the budget), and this is the vote.
    # The maze must fill the model's canvas: a ring would be stripped and the smaller inside padded, and the server
    # turns the padded canvas while a client turns only the maze.
    puzzle, grid, model = "maze", [" " + MAZE_10[0][1:], *MAZE_10[1:]], "maze-tiny-views"
    body = solve(client, puzzle=puzzle, grid=grid, views=8, model=model, halt="q_head").json()
    # The same puzzle turned by the client, one request per symmetry, turned back and counted.
    answers = []
    for tid in range(8):
        one = solve(client, puzzle=puzzle, grid=turned(grid, tid), model=model, halt="q_head").json()
        answers.append((turned(one["solution"], tid, inverse=True), one["halt_probability"]))
    assert len({json.dumps(a) for a, _ in answers}) > 1  # an untrained model answers differently per view
    tally: dict[str, list[float]] = {}
    for answer, prob in answers:
        tally.setdefault(json.dumps(answer), []).append(prob)
    best = max(tally, key=lambda k: (len(tally[k]), sum(tally[k]) / len(tally[k])))
    assert body["solution"] == json.loads(best)
    assert body["votes"] == len(tally[best])
    assert body["halt_probability"] == pytest.approx(sum(tally[best]) / len(tally[best]), abs=1e-5)
    assert "votes" not in solve(client, puzzle=puzzle, grid=grid, model=model).json()  # one view: the plain contract


def test_default_views_applies_to_sudoku_and_mazes_that_do_not_say(weights: Path) -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in ("id", "timing")}

    with TestClient(create_app(make_settings(weights, default_views=8))) as client:
        voted = solve(client, puzzle="maze", grid=MAZE_10).json()
        assert 1 <= voted["votes"] <= 8
        assert answer(voted) == answer(solve(client, puzzle="maze", grid=MAZE_10, views=8).json())
        assert "votes" not in solve(client, puzzle="maze", grid=MAZE_10, views=1).json()
        arc = solve(client, puzzle="arc", task=ARC_TASK, task_id="task-a")  # ARC votes over its own variants
        assert arc.status_code == 200 and "votes" not in arc.json()


def test_views_on_an_arc_task_is_422_naming_views(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="arc", task=ARC_TASK, task_id="task-a", views=2), 422)
    assert err["field"] == "views" and "ARC" in err["message"]


def test_return_steps_lists_steps_one_to_steps_used_with_changed_cells(client: TestClient) -> None:
    body = solve(client, puzzle="sudoku", grid=sudoku_puzzle(), max_steps=5, return_steps=True).json()
    steps = body["steps"]
    assert [s["step"] for s in steps] == list(range(1, body["steps_used"] + 1)) == [1, 2, 3, 4, 5]
    assert steps[-1]["solution"] == body["solution"]
    assert steps[-1]["halt_probability"] == pytest.approx(body["halt_probability"], abs=1e-6)
    assert sorted(map(tuple, steps[0]["changed_cells"])) == [(r, c) for r in range(9) for c in range(9)]
    for before, after in itertools.pairwise(steps):
        differ = [[r, c] for r in range(9) for c in range(9) if before["solution"][r][c] != after["solution"][r][c]]
        assert sorted(after["changed_cells"]) == differ


def test_adaptive_halting_stops_when_the_head_fires_and_never_uses_exactly_max_steps(client: TestClient) -> None:
    grid = sudoku_puzzle()
    adaptive = solve(client, puzzle="sudoku", model="sudoku-tiny-halts", grid=grid, max_steps=9).json()
    assert adaptive["steps_used"] == 1 and adaptive["halted_by"] == "q_head" and adaptive["halt_probability"] > 0.5
    never = solve(
        client, puzzle="sudoku", model="sudoku-tiny-halts", grid=grid, max_steps=9, halt="never", return_steps=True
    ).json()
    assert never["steps_used"] == 9 and never["halted_by"] == "max_steps" and len(never["steps"]) == 9


@pytest.mark.parametrize(("override", "steps"), [(None, 4), (0.5, 1)])
def test_a_calibrated_card_threshold_applies_unless_the_settings_set_one(
    tmp_path: Path, override: float | None, steps: int
) -> None:
    # The head says halt with probability sigmoid(5) = 0.993: enough for 0.5, not for the card's 0.999.
    ckpt = write_checkpoint(tmp_path / "halts", "sudoku", 81, seed=4, q_halt_bias=5.0)
    (ckpt / "metrics.json").write_text(json.dumps({"halting": {"threshold": 0.999}}))
    with TestClient(create_app(make_settings(tmp_path, halt_threshold=override))) as client:
        assert client.get("/models").json()["models"][0]["halt_threshold"] == (override or 0.999)
        body = solve(client, puzzle="sudoku", grid=sudoku_puzzle(), max_steps=4).json()
    assert body["steps_used"] == steps


def test_a_threshold_calibrated_for_voting_applies_to_requests_with_that_many_views(tmp_path: Path) -> None:
    # sigmoid(5) = 0.993: one view waits for the card's 0.999 (all 4 steps); 8 views halt at their 0.9 after one.
    ckpt = write_checkpoint(tmp_path / "halts", "sudoku", 81, seed=4, q_halt_bias=5.0)
    card = {"halting": {"threshold": 0.999}, "halting_views8": {"views": 8, "threshold": 0.9}}
    (ckpt / "metrics.json").write_text(json.dumps(card))
    with TestClient(create_app(make_settings(tmp_path))) as client:
        described = client.get("/models").json()["models"][0]
        assert described["halt_threshold"] == 0.999 and described["halt_threshold_by_views"] == {"8": 0.9}
        grid = sudoku_puzzle()
        assert solve(client, puzzle="sudoku", grid=grid, max_steps=4).json()["steps_used"] == 4
        assert solve(client, puzzle="sudoku", grid=grid, max_steps=4, views=8).json()["steps_used"] == 1
        assert solve(client, puzzle="sudoku", grid=grid, max_steps=4, views=4).json()["steps_used"] == 4  # not 4's


@pytest.mark.parametrize(("default", "steps"), [(0, 7), (3, 3)])
def test_requests_without_max_steps_run_to_the_calibrated_horizon_unless_the_settings_set_one(
    tmp_path: Path, default: int, steps: int
) -> None:
    # sigmoid(5) = 0.993 never reaches the card's 0.999, so every request runs to its step limit.
    ckpt = write_checkpoint(tmp_path / "halts", "sudoku", 81, seed=4, q_halt_bias=5.0)  # halt_max_steps 6
    card = {"halting": {"threshold": 0.999, "max_steps": 7}, "halting_views8": {"threshold": 0.999}}
    (ckpt / "metrics.json").write_text(json.dumps(card))
    with TestClient(create_app(make_settings(tmp_path, default_max_steps=default))) as client:
        assert client.get("/models").json()["models"][0]["max_steps"] == steps
        grid = sudoku_puzzle()
        body = solve(client, puzzle="sudoku", grid=grid).json()
        assert body["steps_used"] == steps and body["halted_by"] == "max_steps"
        assert solve(client, puzzle="sudoku", grid=grid, max_steps=2).json()["steps_used"] == 2
        # 8 views take their own calibration, swept over the trained horizon.
        assert solve(client, puzzle="sudoku", grid=grid, views=8).json()["steps_used"] == (default or 6)


def test_a_request_without_a_budget_for_more_views_runs_to_the_horizon_calibrated_for_a_view_alone(
    tmp_path: Path,
) -> None:
    # sigmoid(5) = 0.993 never reaches 0.999: each request runs to the horizon its calibration gives it.
    ckpt = write_checkpoint(tmp_path / "halts", "sudoku", 81, seed=4, q_halt_bias=5.0)
    card = {"halting": {"threshold": 0.999, "max_steps": 3}, "halting_alone": {"threshold": 0.999, "max_steps": 9}}
    (ckpt / "metrics.json").write_text(json.dumps(card))
    with TestClient(create_app(make_settings(tmp_path))) as client:
        described = client.get("/models").json()["models"][0]
        assert described["max_steps"] == 3 and described["max_steps_without_budget"] == 9
        grid = sudoku_puzzle()
        alone = solve(client, puzzle="sudoku", grid=grid, budget={"steps": 0}, return_steps=True).json()
        assert alone["steps_used"] == 9 and len(alone["steps"]) == 9
        assert solve(client, puzzle="sudoku", grid=grid, halt="q_head").json()["steps_used"] == 9  # checks nothing
        escalated = solve(client, puzzle="sudoku", grid=grid, budget={"steps": 6}, return_steps=True).json()
        assert len(escalated["steps"]) == 3  # the first view stops at 3 steps: the budget backs it up


def test_stream_sends_one_step_event_per_step_then_the_result(client: TestClient) -> None:
    with client.stream("POST", "/solve", json={"puzzle": "maze", "grid": MAZE_10, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse("".join(response.iter_text()))
    names = [name for name, _ in events]
    assert names == ["step"] * (len(names) - 1) + ["result"]
    result = events[-1][1]
    assert [data["step"] for _, data in events[:-1]] == list(range(1, result["steps_used"] + 1))
    assert result["steps"] is None  # the steps went out as events


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for chunk in text.split("\n\n"):
        lines = [line for line in chunk.splitlines() if line]
        if lines:
            name = next(line[len("event:") :].strip() for line in lines if line.startswith("event:"))
            data = "\n".join(line[len("data:") :].strip() for line in lines if line.startswith("data:"))
            events.append((name, json.loads(data)))
    return events


def test_batch_keeps_order_and_reports_errors_per_item(client: TestClient) -> None:
    bad_maze = [*MAZE_10[:3], "#  x   # #", *MAZE_10[4:]]
    requests = [
        {"puzzle": "maze", "grid": MAZE_10},
        {"puzzle": "maze", "grid": bad_maze},
        {"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 2},
        {"puzzle": "sudoku", "grid": sudoku_puzzle(), "model": "nope"},
    ]
    response = client.post("/solve/batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 422, 200, 404]
    assert results[0]["result"]["puzzle"] == "maze" and results[2]["result"]["puzzle"] == "sudoku"
    assert results[2]["result"]["steps_used"] == 2
    assert results[1]["result"] is None and results[1]["error"]["field"] == "requests[1].grid[3][3]"
    assert "'x'" in results[1]["error"]["message"]
    assert results[3]["error"]["error"] == "unknown_model" and results[3]["error"]["field"] == "requests[3].model"


def test_batch_refuses_streaming_and_too_many_requests(weights: Path) -> None:
    with TestClient(create_app(make_settings(weights, max_batch_requests=2))) as client:
        one = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1}
        err = error_of(client.post("/solve/batch", json={"requests": [one] * 3}), 422)
        assert err["field"] == "requests" and "at most 2" in err["message"]
        err = error_of(client.post("/solve/batch", json={"requests": [{**one, "stream": True}]}), 422)
        assert "stream" in err["message"]


# ---------------------------------------------------------------------------------------------------- metadata
def test_models_lists_every_loaded_checkpoint(client: TestClient, weights: Path) -> None:
    response = client.get("/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert set(models) == {"sudoku-tiny", "sudoku-tiny-halts", "maze-tiny", "maze-tiny-views", "arc-tiny"}
    assert {n: m["puzzle"] for n, m in models.items()} == {
        "sudoku-tiny": "sudoku",
        "sudoku-tiny-halts": "sudoku",
        "maze-tiny": "maze",
        "maze-tiny-views": "maze",
        "arc-tiny": "arc",
    }
    for name, model in models.items():
        assert model["config"]["hidden_size"] == 32 and model["config"]["num_heads"] == 4
        assert "training" not in model["config"]
        assert isinstance(model["trainable_parameters"], int) and model["trainable_parameters"] > 0
        assert model["sha256"] == sha256_file(weights / name / "model.safetensors")
        assert model["backend"] == "torch"
    assert models["maze-tiny"]["config"]["seq_len"] == 100


def test_health_endpoints_answer_200_when_loaded(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_metrics_parse_and_request_counter_moves_after_a_solve(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"trm_requests", "trm_request_duration_seconds", "trm_queue_length", "trm_halts"} <= names
    assert all(name.startswith("trm_") for name in names)

    before = metric(client, "trm_requests_total", model="maze-tiny", outcome="ok")
    halts = metric(client, "trm_halts_total", model="maze-tiny", reason="max_steps")
    assert solve(client, puzzle="maze", grid=MAZE_10).status_code == 200
    assert metric(client, "trm_requests_total", model="maze-tiny", outcome="ok") == before + 1
    assert metric(client, "trm_halts_total", model="maze-tiny", reason="max_steps") == halts + 1


# ---------------------------------------------------------------------------------------------------- bad input
def test_sudoku_with_eight_rows_is_422_naming_grid(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku", grid=SOLVED[:8]), 422)
    assert err["field"] == "grid" and "8 rows" in err["message"] and err["error"] == "invalid_puzzle"


def test_sudoku_row_of_ten_is_422_naming_the_row(client: TestClient) -> None:
    grid = sudoku_puzzle()
    grid[3] = [*grid[3], 0]
    err = error_of(solve(client, puzzle="sudoku", grid=grid), 422)
    assert err["field"] == "grid[3]" and "10 cells" in err["message"]


def test_sudoku_string_of_wrong_length_is_422(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku", grid="." * 80), 422)
    assert err["field"] == "grid" and "80 characters" in err["message"]


@pytest.mark.parametrize("value", [12, -1, 1.5, True, "5", None])
def test_sudoku_value_out_of_range_is_422_naming_the_cell(client: TestClient, value: Any) -> None:
    grid = sudoku_puzzle()
    grid[0][2] = value
    err = error_of(solve(client, puzzle="sudoku", grid=grid), 422)
    assert err["field"] == "grid[0][2]" and "0..9" in err["message"]


def test_sudoku_with_two_fives_in_a_row_names_the_row(client: TestClient) -> None:
    grid = [[0] * 9 for _ in range(9)]
    grid[4][1] = grid[4][7] = 5
    err = error_of(solve(client, puzzle="sudoku", grid=grid), 422)
    assert err["message"] == "row 5 has two 5s" and err["field"] == "grid[4][7]"


def test_sudoku_with_a_repeated_digit_in_a_column_names_the_column(client: TestClient) -> None:
    grid = [[0] * 9 for _ in range(9)]
    grid[0][6] = grid[8][6] = 3
    err = error_of(solve(client, puzzle="sudoku", grid=grid), 422)
    assert err["message"] == "column 7 has two 3s"


@pytest.mark.parametrize("char", ["x", "é", "😀", "o", "*"])
def test_maze_with_a_bad_character_names_the_cell(client: TestClient, char: str) -> None:
    maze = list(MAZE_10)
    maze[2] = maze[2][:4] + char + maze[2][5:]
    err = error_of(solve(client, puzzle="maze", grid=maze), 422)
    assert err["field"] == "grid[2][4]" and repr(char) in err["message"]


def test_maze_without_start_is_422(client: TestClient) -> None:
    maze = [row.replace("S", " ") for row in MAZE_10]
    err = error_of(solve(client, puzzle="maze", grid=maze), 422)
    assert err["field"] == "grid" and "no S" in err["message"]


def test_maze_with_ragged_rows_names_the_row(client: TestClient) -> None:
    maze = [*MAZE_10[:5], MAZE_10[5][:-1], *MAZE_10[6:]]
    err = error_of(solve(client, puzzle="maze", grid=maze), 422)
    assert err["field"] == "grid[5]"


def test_maze_larger_than_every_model_is_422_naming_the_size(client: TestClient) -> None:
    maze = ["S" + " " * 10 + "G"] + ["#" * 12] * 11  # no wall ring: all 12x12 of it is maze
    err = error_of(solve(client, puzzle="maze", grid=maze), 422)
    assert err["field"] == "grid" and "12x12" in err["message"] and "10x10" in err["message"]
    ringed = ["#" * 14] + [f"#{row}#" for row in maze] + ["#" * 14]
    err = error_of(solve(client, puzzle="maze", grid=ringed), 422)
    assert "12x12" in err["message"] and "10x10" in err["message"]  # routing compares the inside of the ring


@pytest.mark.parametrize(("rows", "cols"), [(31, 2), (11, 11)])
def test_arc_grid_larger_than_the_model_canvas_is_422_naming_the_size(client: TestClient, rows: int, cols: int) -> None:
    task = copy.deepcopy(ARC_TASK)
    task["test"][0]["input"] = [[1] * cols for _ in range(rows)]
    err = error_of(solve(client, puzzle="arc", task=task), 422)
    assert err["field"] == "task.test[0].input" and f"{rows}x{cols}" in err["message"]


def test_arc_bad_colour_names_its_path(client: TestClient) -> None:
    task = copy.deepcopy(ARC_TASK)
    task["train"][0]["output"][1][0] = 10
    err = error_of(solve(client, puzzle="arc", task=task), 422)
    assert err["field"] == "task.train[0].output[1][0]"


def test_missing_grid_is_422_naming_grid(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku"), 422)
    assert err["field"] == "grid"
    err = error_of(solve(client, puzzle="arc", grid=[[1]]), 422)
    assert err["field"] == "task"


def test_unknown_model_is_404_naming_model(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku", grid=sudoku_puzzle(), model="sudoku-huge"), 404)
    assert err["field"] == "model" and err["error"] == "unknown_model" and "sudoku-huge" in err["message"]


def test_model_of_another_family_is_422_naming_model(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku", grid=sudoku_puzzle(), model="maze-tiny"), 422)
    assert err["field"] == "model" and "maze" in err["message"]


def test_model_name_that_looks_like_a_path_is_422(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku", grid=sudoku_puzzle(), model="../weights/sudoku-tiny"), 422)
    assert err["field"] == "model"


def test_unknown_top_level_field_is_422_naming_it(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku", grid=sudoku_puzzle(), colour="red"), 422)
    assert err["field"] == "colour" and "colour" in err["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"puzzle": "chess", "grid": []}, "puzzle"),
        ({"grid": SOLVED}, "puzzle"),
        ({"puzzle": "sudoku", "grid": SOLVED, "halt": "sometimes"}, "halt"),
        ({"puzzle": "sudoku", "grid": SOLVED, "max_steps": 0}, "max_steps"),
        ({"puzzle": "sudoku", "grid": SOLVED, "return_steps": "lots"}, "return_steps"),
        ({"puzzle": "sudoku", "grid": SOLVED, "views": 9}, "views"),
        ({"puzzle": "sudoku", "grid": SOLVED, "views": 0}, "views"),
        ({"puzzle": "sudoku", "grid": SOLVED, "views": True}, "views"),
    ],
)
def test_schema_errors_are_422_naming_the_field(client: TestClient, body: dict[str, Any], field: str) -> None:
    err = error_of(client.post("/solve", json=body), 422)
    assert err["field"] == field and err["message"].startswith(field)


def test_max_steps_over_the_limit_is_422(client: TestClient) -> None:
    err = error_of(solve(client, puzzle="sudoku", grid=sudoku_puzzle(), max_steps=65), 422)
    assert err["field"] == "max_steps" and "65" in err["message"] and "64" in err["message"]


def test_invalid_json_is_422_naming_the_body(client: TestClient) -> None:
    response = client.post("/solve", content=b'{"puzzle": "sudoku", "grid": [', headers=JSON)
    err = error_of(response, 422)
    assert err["field"] == "body" and "JSON" in err["message"]


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client: TestClient, ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    body = json.dumps({"puzzle": "sudoku", "grid": SOLVED}).encode()
    err = error_of(client.post("/solve", content=body, headers=headers), 415)
    assert "application/json" in err["message"]


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    body = json.dumps({"puzzle": "sudoku", "grid": "." * (MAX_BODY * 2)}).encode()
    err = error_of(client.post("/solve", content=body, headers=JSON), 413)
    assert err["field"] == "body" and str(MAX_BODY) in err["message"]


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"puzzle": "sudoku", "grid": "'
        for _ in range(8):
            yield b"." * 4096
        yield b'"}'

    response = client.post("/solve", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    err = error_of(response, 413)
    assert err["field"] == "body"


def test_chunked_body_under_the_limit_is_served(client: TestClient) -> None:
    body = json.dumps({"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1}).encode()
    response = client.post("/solve", content=iter([body[:100], body[100:]]), headers=JSON)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------------------------------------------- limits
async def _concurrent(app: FastAPI, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Run the app's lifespan and send `bodies` to /solve all at once."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as ac:
            return list(await asyncio.gather(*(ac.post("/solve", json=b) for b in bodies)))


def test_full_queue_is_503_with_retry_after(weights: Path) -> None:
    app = create_app(make_settings(weights, slots=1, queue_capacity=1))
    body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "halt": "never", "max_steps": 64}
    responses = asyncio.run(_concurrent(app, [body] * 6))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    full = next(r for r in responses if r.status_code == 503)
    assert full.headers["retry-after"] == "1" and full.json()["error"] == "queue_full"


def test_past_deadline_is_504_with_the_partial_answer(weights: Path) -> None:
    app = create_app(make_settings(weights, request_timeout_s=0.1))
    body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "halt": "never", "max_steps": 64}
    responses = asyncio.run(_concurrent(app, [body] * 4))  # 64 batched steps take far longer than 0.1 s
    errors = [error_of(r, 504) for r in responses]
    assert {e["error"] for e in errors} == {"deadline_exceeded"}
    partial = [e["partial"] for e in errors if "partial" in e]
    assert partial and all(p["halted_by"] == "deadline" and 1 <= p["steps_used"] < 64 for p in partial)


# ---------------------------------------------------------------------------------------------------- auth
@pytest.fixture(scope="module")
def keyed(weights: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(weights, api_key="s3cret"))) as client:
        yield client


@pytest.mark.parametrize("header", [None, "Bearer wrong", "s3cret", "Basic s3cret", "Bearer s3cret2"])
def test_solve_without_the_right_bearer_key_is_401(keyed: TestClient, header: str | None) -> None:
    headers = {"authorization": header} if header else {}
    body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1}
    for path, payload in (("/solve", body), ("/solve/batch", {"requests": [body]})):
        response = keyed.post(path, json=payload, headers=headers)
        err = error_of(response, 401)
        assert err["error"] == "unauthorized" and response.headers["www-authenticate"] == "Bearer"


def test_solve_with_the_bearer_key_is_200(keyed: TestClient) -> None:
    body = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1}
    assert keyed.post("/solve", json=body, headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert keyed.post("/solve", json=body, headers={"authorization": "bearer s3cret"}).status_code == 200


def test_health_metrics_and_models_stay_open_with_a_key_unless_protected(keyed: TestClient) -> None:
    for path in ("/health/live", "/health/ready", "/metrics", "/models"):
        assert keyed.get(path).status_code == 200, path


def test_protect_metrics_requires_the_key_for_metrics_and_models_but_not_health(weights: Path) -> None:
    with TestClient(create_app(make_settings(weights, api_key="s3cret", protect_metrics=True))) as client:
        for path in ("/metrics", "/models"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"authorization": "Bearer s3cret"}).status_code == 200, path
        for path in ("/health/live", "/health/ready"):
            assert client.get(path).status_code == 200, path


def test_protect_metrics_without_a_key_is_refused_at_start_up(weights: Path) -> None:
    with pytest.raises(ValueError, match="protect_metrics needs api_key"):
        make_settings(weights, protect_metrics=True)
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--weights-dir", str(weights), "--protect-metrics"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "protect_metrics needs api_key" in proc.stderr


def test_an_hrm_checkpoint_is_served_through_the_same_endpoints_with_its_own_halting_rule(tmp_path: Path) -> None:
    # HRM halts when q_halt > q_continue: a halt bias of 1 against a continue bias of 3 says "continue", even though
    # sigmoid(1) = 0.73 would pass TRM's 0.5 threshold; 3 against 1 halts after the first step.
    write_checkpoint(tmp_path / "sudoku-b-trm", "sudoku", 81, seed=1)
    for name, halt, cont in (("sudoku-a-hrm", 1.0, 3.0), ("sudoku-a-hrm-halts", 3.0, 1.0)):
        model, config = tiny_model("sudoku", 81, seed=5, arch="hrm")
        with torch.no_grad():
            model.q_head.bias.copy_(torch.tensor([halt, cont]))
        save_checkpoint(model, config, tmp_path / name)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["sudoku-a-hrm"]["config"]["arch"] == "hrm"
        assert models["sudoku-a-hrm"]["trainable_parameters"] > models["sudoku-b-trm"]["trainable_parameters"]
        default = solve(client, puzzle="sudoku", grid=sudoku_puzzle(), max_steps=2).json()
        assert default["model"] == "sudoku-b-trm"  # a TRM is the family default whatever the names sort to
        keeps_going = solve(client, puzzle="sudoku", model="sudoku-a-hrm", grid=sudoku_puzzle(), max_steps=3).json()
        assert keeps_going["steps_used"] == 3 and keeps_going["halted_by"] == "max_steps"
        halts = client.post(
            "/solve",
            json={"puzzle": "sudoku", "model": "sudoku-a-hrm-halts", "grid": sudoku_puzzle(), "stream": True},
        )
        events = parse_sse(halts.text)
    assert [kind for kind, _ in events] == ["step", "result"]
    result = events[-1][1]
    assert result["steps_used"] == 1 and result["halted_by"] == "q_head"
    assert len(result["solution"]) == 9 and all(len(row) == 9 for row in result["solution"])

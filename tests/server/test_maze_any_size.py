"""A size-agnostic (`conv`) maze model serves mazes of any size up to `max_maze_side`, square or not, each on the
smallest canvas pool that takes it; bigger mazes get a 422 that names the limit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inference.canvas import canvas_for, canvas_sides
from server.app import create_app
from server.settings import Settings
from tests.server.conftest import record_trained_sides, write_checkpoint, write_conv_checkpoint
from training.data.mazes_people import generate

LIMIT = 50


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    weights = tmp_path_factory.mktemp("weights")
    write_conv_checkpoint(weights / "maze-any")
    card = {"halting_canvas32": {"threshold": 0.9, "max_steps": 3}}  # calibrated on mazes run on 32x32 canvases
    (weights / "maze-any" / "metrics.json").write_text(json.dumps(card))
    write_checkpoint(weights / "maze-6", "maze", 36)
    record_trained_sides(weights / "maze-6", 6, None)
    settings = Settings(
        weights_dir=weights, threads=1, slots=8, max_maze_side=LIMIT, canvas_tokens=4096, default_budget_steps=0
    )
    with TestClient(create_app(settings)) as client:
        yield client


def people_maze(h: int, w: int, seed: int, ring: bool = True) -> list[str]:
    questions, _, _ = generate(1, h, w, generator="prim", ring=ring, seed=seed)
    return ["".join("\0# SGo"[t] for t in row) for row in questions[0]]


def test_canvas_pools_step_up_by_about_half_to_the_first_that_takes_the_limit() -> None:
    assert canvas_sides(16, 128) == [16, 24, 32, 48, 64, 88, 120, 136]
    assert canvas_sides(16, 50) == [16, 24, 32, 48, 56]
    assert canvas_sides(16, 15) == [16]
    assert [canvas_for(side, 16) for side in (15, 16, 23, 30, 31, 45, 128)] == [16, 24, 24, 32, 32, 48, 136]
    with pytest.raises(ValueError, match="limit of 128"):
        canvas_for(129, 16)


def test_models_list_the_canvases_and_the_longest_side(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["maze-any"]["canvases"] == [16, 24, 32, 48, 56] and models["maze-any"]["max_side"] == LIMIT
    assert models["maze-6"]["canvases"] == [] and models["maze-6"]["max_side"] == 6


@pytest.mark.parametrize(("h", "w", "ring"), [(45, 45, True), (21, 41, True), (41, 21, False), (9, 9, True)])
def test_mazes_of_any_size_and_shape_are_answered_without_touching_walls_s_or_g(
    client: TestClient, h: int, w: int, ring: bool
) -> None:
    grid = people_maze(h, w, seed=h * w, ring=ring)
    response = client.post("/solve", json={"puzzle": "maze", "grid": grid, "model": "maze-any", "max_steps": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    answer = body["solution"]
    assert body["model"] == "maze-any" and len(answer) == h and all(len(row) == w for row in answer)
    for given, got in zip(grid, answer, strict=True):
        assert all(a == g or (g == " " and a == "o") for g, a in zip(given, got, strict=True))


def test_a_maze_larger_than_every_fixed_model_goes_to_the_size_agnostic_one(client: TestClient) -> None:
    response = client.post("/solve", json={"puzzle": "maze", "grid": people_maze(31, 31, 3), "max_steps": 1})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "maze-any"
    small = client.post("/solve", json={"puzzle": "maze", "grid": ["S  ", "   ", "  G"], "max_steps": 1})
    assert small.json()["model"] == "maze-6"  # a fixed model that fits is still the default where it does


@pytest.mark.parametrize("model", [None, "maze-any"])
def test_a_maze_over_the_limit_gets_a_422_naming_it(client: TestClient, model: str | None) -> None:
    side = LIMIT + 1
    rows = ["S" + " " * (side - 1), *([" " * side] * (side - 2)), " " * (side - 1) + "G"]
    response = client.post("/solve", json={"puzzle": "maze", "grid": rows, "model": model})
    assert response.status_code == 422
    message = response.json()["message"]
    assert f"limit of {LIMIT} a side" in message and "max_maze_side" in message


def test_random_mazes_come_at_any_asked_size_with_their_ring(client: TestClient) -> None:
    square = client.get("/puzzles/random", params={"kind": "maze", "side": 45}).json()["grid"]
    assert len(square) == 45 and all(len(row) == 45 for row in square)
    assert set(square[0]) == set(square[-1]) == {"#"} and "S" in "".join(square) and "G" in "".join(square)
    wide = client.get("/puzzles/random", params={"kind": "maze", "side": 21, "width": 41}).json()["grid"]
    assert len(wide) == 21 and len(wide[0]) == 41
    assert client.post("/solve", json={"puzzle": "maze", "grid": wide, "max_steps": 1}).status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"kind": "maze", "side": 4}, "side"),
        ({"kind": "maze", "side": LIMIT + 3}, "side"),
        ({"kind": "sudoku", "side": 9}, "side"),
    ],
)
def test_random_maze_sizes_outside_the_limit_are_422(client: TestClient, params: dict[str, object], field: str) -> None:
    response = client.get("/puzzles/random", params=params)
    assert response.status_code == 422 and response.json()["field"] == field


def test_each_canvas_has_its_own_queue_gauge(client: TestClient) -> None:
    text = client.get("/metrics").text
    for side in (16, 24, 32, 48, 56):
        pool = "maze-any" if side == 16 else f"maze-any@{side}x{side}"
        assert f'model="{pool}"' in text


@pytest.mark.parametrize(("side", "steps", "threshold"), [(9, 2, 0.5), (31, 3, 0.9), (45, 3, 0.9)])
def test_each_canvas_halts_by_its_own_calibration(client: TestClient, side: int, steps: int, threshold: float) -> None:
    grid = people_maze(side, side, seed=side)
    body = client.post("/solve", json={"puzzle": "maze", "grid": grid, "model": "maze-any", "halt": "never"}).json()
    assert body["steps_used"] == steps and body["halt_threshold"] == threshold  # 9: the trained horizon, 2

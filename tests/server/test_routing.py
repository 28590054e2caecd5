"""Which model answers a request that names none: a maze goes to the model whose card measures it most accurate
at its size, else to a model trained on its size when one is loaded (a model trained on mixed sizes), else to the
smallest grid that fits; HRM checkpoints are never the default."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.registry import measured_maze_accuracy
from server.settings import Settings
from tests.server.conftest import record_trained_sides, write_checkpoint, write_conv_checkpoint


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    weights = tmp_path_factory.mktemp("weights")
    for name, side, min_side, arch in (
        ("maze-6", 6, None, "trm"),
        ("maze-8", 8, None, "trm"),
        ("maze-8-hrm", 8, None, "hrm"),
        ("maze-mixed-10", 10, 6, "trm"),
    ):
        write_checkpoint(weights / name, "maze", side * side, arch=arch)
        record_trained_sides(weights / name, side, min_side)
    with TestClient(create_app(Settings(weights_dir=weights, threads=1, slots=4))) as client:
        yield client


def maze(side: int) -> list[str]:
    """An open side x side room with S and G in opposite corners."""
    rows = [" " * side for _ in range(side)]
    rows[0] = "S" + rows[0][1:]
    rows[-1] = rows[-1][:-1] + "G"
    return rows


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (5, "maze-6"),  # no model saw 5x5 mazes: the smallest that fits
        (6, "maze-6"),  # two saw 6x6 mazes: the smaller
        (7, "maze-mixed-10"),  # maze-8 fits but never saw 7x7; the mixed model did
        (8, "maze-8"),  # the TRM, not the HRM of the same size
        (9, "maze-mixed-10"),
        (10, "maze-mixed-10"),
    ],
)
def test_a_maze_goes_to_a_model_trained_on_its_size(client: TestClient, side: int, expected: str) -> None:
    response = client.post("/solve", json={"puzzle": "maze", "grid": maze(side), "max_steps": 1})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == expected


def test_models_list_the_maze_sides_each_model_was_trained_on(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["maze-mixed-10"]["trained_sides"] == [6, 10]
    assert models["maze-8"]["trained_sides"] == [8, 8]


def people_record(h: int, w: int, exact: float, ring: int = 1, views: int = 1) -> dict[str, object]:
    """A card record as `training.evaluate --data generate:maze-people:... --record NAME` writes it."""
    return {"data": f"generate:maze-people:100:{h}:{w}:2026:{ring}", "exact_accuracy": exact, "views": views}


def test_measured_accuracy_is_read_by_the_side_inside_the_ring_from_one_view_people_records() -> None:
    card = {
        "a": people_record(9, 9, 0.9),  # 7x7 inside its ring
        "b": people_record(15, 13, 0.7, ring=0),
        "c": people_record(15, 15, 0.8),
        "voted": people_record(9, 9, 1.0, views=8),
        "other_generator": {"data": "generate:maze:100:9:10:4242", "exact_accuracy": 1.0},
        "halting": {"threshold": 0.9, "max_steps": 16},
    }
    assert measured_maze_accuracy(card) == {7: 0.9, 15: 0.7, 13: 0.8}


@pytest.fixture(scope="module")
def measured_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A size-agnostic model measured better than the fixed 12x12 one on 9x9 and 13x13 people mazes (inside 7
    and 11) and worse on 11x11 ones (inside 9); the fixed 8x8 model has no people-maze figures."""
    weights = tmp_path_factory.mktemp("weights-measured")
    write_conv_checkpoint(weights / "maze-any")
    cards = {
        "maze-any": [people_record(9, 9, 0.95), people_record(11, 11, 0.5), people_record(13, 13, 0.9)],
        "maze-12": [people_record(9, 9, 0.9), people_record(11, 11, 0.8), people_record(13, 13, 0.6)],
    }
    for name, side in (("maze-8", 8), ("maze-12", 12)):
        write_checkpoint(weights / name, "maze", side * side)
        record_trained_sides(weights / name, side, 6)
    for name, records in cards.items():
        card = {f"heldout_{i}": r for i, r in enumerate(records)}
        (weights / name / "metrics.json").write_text(json.dumps(card))
    settings = Settings(weights_dir=weights, threads=1, slots=4, max_maze_side=40, default_budget_steps=0)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (6, "maze-any"),  # measured at 7: 0.95 against 0.9; maze-8 has no figure
        (7, "maze-any"),
        (8, "maze-12"),  # the next measured side is 9: 0.8 against 0.5
        (9, "maze-12"),
        (11, "maze-any"),  # 0.9 against 0.6
        (12, "maze-12"),  # no figure at 12 or above: the model trained on 12x12 mazes
        (20, "maze-any"),  # no fixed model takes it
    ],
)
def test_a_maze_goes_to_the_model_measured_most_accurate_at_its_size(
    measured_client: TestClient, side: int, expected: str
) -> None:
    response = measured_client.post("/solve", json={"puzzle": "maze", "grid": maze(side), "max_steps": 1})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == expected


def door_maze(side: int) -> list[str]:
    """A side x side maze drawn with a wall ring whose doors are S and G: an open room inside."""
    inner = [f"#{' ' * (side - 2)}#" for _ in range(side - 2)]
    return ["#S" + "#" * (side - 2), *inner, "#" * (side - 2) + "G#"]


def test_a_maze_with_doors_in_its_ring_is_routed_as_a_ring_drawn_maze(measured_client: TestClient) -> None:
    # Both are 11 cells a side and solved whole; the door maze is compared where ring-drawn mazes of 9 inside
    # are measured (maze-12 0.8 against 0.5), the unbordered one at 11 (maze-any 0.9 against 0.6).
    for grid, expected in ((door_maze(11), "maze-12"), (maze(11), "maze-any")):
        response = measured_client.post("/solve", json={"puzzle": "maze", "grid": grid, "max_steps": 1})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == expected
    door = door_maze(11)
    answer = measured_client.post("/solve", json={"puzzle": "maze", "grid": door, "max_steps": 1}).json()
    assert answer["solution"][0] == door[0] and answer["solution"][-1] == door[-1]  # ring and doors as given


@pytest.mark.parametrize("name", ["maze-8", "maze-12"])
def test_a_fixed_model_stays_selectable_by_name_where_another_measures_better(
    measured_client: TestClient, name: str
) -> None:
    body = {"puzzle": "maze", "grid": maze(7), "model": name, "max_steps": 1}
    response = measured_client.post("/solve", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == name


def sudoku_record(data: str, exact: float, budget: int = 0) -> dict[str, object]:
    """A card record as `training.evaluate --data DATA --record NAME` writes it (one view, adaptive halting)."""
    record: dict[str, object] = {"data": data, "exact_accuracy": exact, "views": 1, "halt": "adaptive"}
    if budget:
        record["budget_steps"] = budget
    return record


EASY, HARD = "generate:sudoku:1000:30:40:4242", "generate:sudoku-hard:200:17:21:3:2026"


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        # b is at least as good everywhere both measured and better on hard puzzles: a is never the default
        ({"a": {EASY: 0.99, HARD: 0.40}, "b": {EASY: 0.99, HARD: 0.60}}, "b"),
        # b trades easy accuracy for hard: neither dominates, so the usual order (by name here) decides
        ({"a": {EASY: 0.99, HARD: 0.40}, "b": {EASY: 0.98, HARD: 0.60}}, "a"),
        # no set measured by both: nothing to compare
        ({"a": {EASY: 0.99}, "b": {HARD: 0.60}}, "a"),
        # c beats b on hard puzzles but not on easy ones, and b dominates a: b
        ({"a": {EASY: 0.99, HARD: 0.40}, "b": {EASY: 0.995, HARD: 0.60}, "c": {EASY: 0.97, HARD: 0.70}}, "b"),
    ],
)
def test_the_default_sudoku_model_is_one_no_other_card_dominates(
    tmp_path: Path, cards: dict[str, dict[str, float]], expected: str
) -> None:
    weights = tmp_path / "weights"
    for name, figures in cards.items():
        write_checkpoint(weights / name, "sudoku", 81)
        card = {f"r{i}": sudoku_record(data, exact) for i, (data, exact) in enumerate(figures.items())}
        (weights / name / "metrics.json").write_text(json.dumps(card))
    with TestClient(create_app(Settings(weights_dir=weights, threads=1, slots=4))) as client:
        response = client.post("/solve", json={"puzzle": "sudoku", "grid": "0" * 81, "max_steps": 1})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == expected


def test_records_measured_another_way_are_not_compared() -> None:
    from server.registry import held_out_records

    card = {
        "one_view": sudoku_record(HARD, 0.6),
        "with_budget": sudoku_record(HARD, 0.7, budget=256),
        "voted": {**sudoku_record(HARD, 0.8), "views": 8},
        "halting": {"data": HARD, "threshold": 0.9, "never_exact_accuracy": 0.9},  # a calibration, not a record
    }
    assert held_out_records(card) == {
        (HARD, 1, "adaptive", 0): 0.6,
        (HARD, 1, "adaptive", 256): 0.7,
        (HARD, 8, "adaptive", 0): 0.8,
    }

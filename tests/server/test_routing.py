"""Which model answers a request that names none: a maze goes to a model trained on its size when one is loaded
(a model trained on mixed sizes), else to the smallest grid that fits; HRM checkpoints are never the default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.server.conftest import record_trained_sides, write_checkpoint


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

"""The shipped size-agnostic maze checkpoints, both stages loaded as a fresh install serves them: a 45x45 maze that
names no model goes to the stage its card measures better there (`maze-any-31`, trained on sides up to 31) and is
answered with its shortest path through the real `python -m server` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model.puzzles.maze import tokens_to_chars
from tests.server.conftest import ROOT, ServerProcess, start_server
from training.data.mazes_people import held_out

STAGES = (ROOT / "weights" / "maze-any", ROOT / "weights" / "maze-any-31")
SHIPPED = STAGES[1]
"""The stage the cards' records route 45x45 mazes to (`docs/results.md`, "Routing")."""
SEED = 2026
"""The held-out seed of the card's extrapolation table (`--data generate:maze-people:N:45:45:2026`)."""
SOLVED = 2
"""A maze of that set the checkpoint solves at the server's defaults: a 135-cell path, verified at step 9 of its
48-step horizon (`by_maze` in `benchmarks/results/maze_stage2_extrapolation.json`)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    weights = tmp_path_factory.mktemp("weights")
    for stage in STAGES:
        (weights / stage.name).symlink_to(stage)
    # The pools stop at the 48x48 canvas the maze runs on: fewer to warm up at start.
    process = start_server(weights, tmp_path_factory.mktemp("server-logs"), "--max-maze-side", "47", timeout=180)
    try:
        yield process
    finally:
        process.stop()


def test_a_45x45_maze_is_answered_with_its_shortest_path(server: ServerProcess) -> None:
    questions, labels = held_out(SOLVED + 1, 45, 45, True, SEED)
    grid = tokens_to_chars(questions[SOLVED])
    with httpx.Client(base_url=server.base, timeout=httpx.Timeout(300.0, connect=5.0)) as client:
        response = client.post("/solve", json={"puzzle": "maze", "grid": grid})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == SHIPPED.name
    assert body["verified"] is True
    assert body["solution"] == tokens_to_chars(labels[SOLVED])


def test_the_checkpoints_are_the_shipped_ones() -> None:
    for stage in STAGES:
        assert (stage / "model.safetensors").is_file() and Path(stage / "README.md").is_file()

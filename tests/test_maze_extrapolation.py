"""benchmarks.maze_extrapolation: the calibration rule (the shortest horizon that reaches the best accuracy, never
shorter than a smaller canvas's, and the threshold `training.calibrate.choose` picks there) and the per-maze
breakdown of what fails."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.maze_extrapolation import by_kind, by_maze, calibration, parse_case, smaller_horizon
from model.puzzles.maze import PATH
from training.data.mazes_people import generate, held_out, held_out_styles


def sweeps(best: dict[int, float]) -> dict[str, Any]:
    """A case whose sweep at each horizon reaches `best` at threshold 0.9 and a point less at 0.5."""
    return {
        "data": "generate:maze-people:10:21:21:1",
        "mazes": 10,
        "sweeps": {
            str(h): {
                "never_exact_accuracy": acc - 0.1,
                "sweep": [
                    {"threshold": 0.5, "exact_accuracy": acc - 0.01, "mean_steps": 2.0},
                    {"threshold": 0.9, "exact_accuracy": acc, "mean_steps": 3.0},
                ],
            }
            for h, acc in best.items()
        },
    }


def test_the_shortest_horizon_that_reaches_the_best_is_chosen_with_its_threshold() -> None:
    record = calibration(sweeps({4: 0.4, 8: 0.6, 16: 0.6, 32: 0.6}), tolerance=0.005)
    assert (record["max_steps"], record["threshold"]) == (8, 0.9)
    assert calibration(sweeps({4: 0.4, 8: 0.6, 16: 0.6}), tolerance=0.02)["threshold"] == 0.5


def test_a_bigger_canvas_never_gets_a_shorter_horizon_than_a_smaller_one() -> None:
    assert calibration(sweeps({4: 0.4, 8: 0.6, 16: 0.6, 32: 0.6}), 0.005, floor=16)["max_steps"] == 16
    assert calibration(sweeps({4: 0.4, 8: 0.6}), 0.005, floor=16)["max_steps"] == 8  # the trace is the limit


def test_smaller_horizon_reads_the_per_canvas_records_below_the_canvas() -> None:
    card = {
        "halting": {"max_steps": 16},
        "halting_canvas24": {"max_steps": 8},
        "halting_canvas48": {"max_steps": 32},
        "halting_views8": {"max_steps": 99},
        "heldout": {"max_steps": 99},
    }
    assert smaller_horizon(card, 16, own=16) == 0
    assert smaller_horizon(card, 32, own=16) == 16
    assert smaller_horizon(card, 64, own=16) == 32


def test_a_case_is_height_width_mazes_steps() -> None:
    assert parse_case("21:41:8:32") == (21, 41, 8, 32)


def test_by_maze_says_each_mazes_style_path_length_and_first_verified_step() -> None:
    styles = held_out_styles(3, 9, 9, True, seed=5)
    questions, labels = held_out(3, 9, 9, True, seed=5)
    for style, question in zip(styles, questions, strict=True):  # the styles describe the mazes drawn
        assert (generate(1, 9, 9, **style)[0][0] == question).all()
    verified = np.array([[False, False, False], [False, True, False], [True, True, False]])  # (steps, mazes)
    rows = by_maze(styles, labels.reshape(3, -1), verified)
    assert [row["verified_at"] for row in rows] == [3, 2, None]
    assert [row["path"] for row in rows] == [int((lab == PATH).sum()) for lab in labels]
    assert [row["generator"] for row in rows] == ["backtracker", "prim", "kruskal"]


def test_by_kind_counts_verified_mazes_per_kind() -> None:
    mazes = [
        {"loops": 0.0, "rooms": 0, "verified_at": 4},
        {"loops": 0.0, "rooms": 0, "verified_at": None},
        {"loops": 0.1, "rooms": 0, "verified_at": None},
        {"loops": 0.1, "rooms": 2, "verified_at": 9},
    ]
    assert by_kind(mazes) == {"perfect": (1, 2), "loops": (0, 1), "rooms": (1, 1)}

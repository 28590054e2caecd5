"""Views: turning grids and back, the vote, and the rule that a verified view wins over the vote."""

from __future__ import annotations

import numpy as np
import pytest

from inference.views import (
    apply_view,
    check_views,
    choose,
    choose_all,
    invert_view,
    turn,
    turn_back,
    turn_rows,
    views_for,
    vote_views,
)


def test_turning_back_undoes_every_symmetry() -> None:
    grid = np.arange(16)
    for tid in range(8):
        turned = turn(grid, tid)
        assert sorted(turned.tolist()) == list(range(16))
        np.testing.assert_array_equal(turn_back(turned[None], tid)[0], grid)
        np.testing.assert_array_equal(turn_rows(np.stack([grid, grid]), tid)[1], turned)
    assert not np.array_equal(turn(grid, 1), grid)


def test_a_verified_view_wins_over_the_vote_and_the_earliest_one_answers() -> None:
    right, wrong = np.array([1, 2]), np.array([3, 3])
    answers = [wrong, wrong, right, right]
    probs = [0.9, 0.9, 0.2, 0.3]
    first, best, agree = choose(answers, probs, [False, False, True, True], [4, 4, 5, 3])
    assert first == 3 and best.tolist() == [1, 2] and agree == [0.2, 0.3]
    first, best, _ = choose(answers, probs, [None] * 4, [4, 4, 5, 3])  # no check: the vote (2 against 2, by prob)
    assert first is None and best.tolist() == [3, 3]


def test_choose_all_counts_the_steps_the_server_spends() -> None:
    answers = np.array([[[1], [5]], [[2], [5]], [[2], [6]]])  # (views, puzzles, length)
    probs = np.full((3, 2), 0.5)
    verified = np.array([[False, False], [True, False], [False, False]])
    steps = np.array([[8, 8], [3, 2], [6, 8]])
    chosen, cost = choose_all(answers, probs, verified, steps)
    assert chosen[:, 0].tolist() == [2, 5]
    assert cost.tolist() == [3 + 3 + 3, 18]  # puzzle 0: the others stop at view 1's step 3; puzzle 1: all of it


def test_vote_views_takes_the_majority_per_puzzle() -> None:
    answers = np.array([[[1], [4]], [[2], [4]], [[2], [5]]])
    voted = vote_views(answers, np.full((3, 2), 0.5))
    assert voted[:, 0].tolist() == [2, 4]


def test_view_counts_outside_the_square_s_symmetries_are_refused() -> None:
    check_views(8)
    for bad in (0, 9):
        with pytest.raises(ValueError, match=r"1\.\.8"):
            check_views(bad)


def test_sudoku_views_past_the_square_s_symmetries_relabel_and_reshuffle_and_invert_exactly() -> None:
    from model.puzzles.sudoku import decode_tokens, is_valid_solution
    from tests.server.conftest import SOLVED

    solution = np.array([v + 1 for row in SOLVED for v in row])[None]  # tokens
    seen = set()
    for tid in range(views_for("sudoku")):
        viewed = apply_view(solution, tid, "sudoku")
        assert is_valid_solution(decode_tokens(viewed)).all(), tid  # every view of a solution is a solution
        np.testing.assert_array_equal(invert_view(viewed, tid, "sudoku"), solution)
        seen.add(viewed.tobytes())
    assert len(seen) == views_for("sudoku") == 64  # every view is a different copy
    np.testing.assert_array_equal(apply_view(solution, 9, "sudoku"), apply_view(solution, 9, "sudoku"))  # fixed
    assert views_for("maze") == 8
    with pytest.raises(ValueError, match="8 views"):
        apply_view(np.zeros((1, 16), np.int64), 8, "maze")

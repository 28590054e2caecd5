"""Budgeted escalation: how many views a round may add, and the answer and cost `escalate_all` replays."""

from __future__ import annotations

import numpy as np
import pytest

from inference.escalation import Escalation, escalate_all


@pytest.mark.parametrize(
    ("budget", "tried", "spent", "horizon", "expected"),
    [
        (128, 1, 16, 16, 7),  # room for all seven other views
        (64, 1, 16, 16, 3),  # 16 + 3 x 16 = 64: exactly the budget
        (63, 1, 16, 16, 2),
        (16, 1, 16, 16, 0),  # the first view spent it all
        (0, 1, 4, 16, 0),
        (1000, 8, 16, 16, 0),  # every symmetry tried
        (1000, 3, 48, 16, 5),
    ],
)
def test_next_views_never_passes_the_budget(budget: int, tried: int, spent: int, horizon: int, expected: int) -> None:
    extra = Escalation(budget, 8).next_views(tried, spent, horizon)
    assert extra == expected
    assert spent + extra * horizon <= max(budget, spent)


def traces() -> tuple[np.ndarray, ...]:
    """Four views of three one-cell puzzles (label 1): answers, probabilities, verified, steps."""
    answers = np.array([[[1], [2], [2]], [[2], [2], [3]], [[2], [1], [3]], [[2], [1], [3]]])
    probs = np.full((4, 3), 0.5)
    verified = answers[..., 0] == 1
    steps = np.array([[2, 4, 4], [4, 4, 4], [4, 3, 4], [4, 1, 4]])
    return answers, probs, verified, steps


def test_a_puzzle_verified_in_its_first_round_costs_only_that_round() -> None:
    answers, probs, verified, steps = traces()
    chosen, cost, tried = escalate_all(Escalation(100, views=4), 1, 4, answers, probs, verified, steps)
    assert chosen[0].tolist() == [1] and cost[0] == 2 and tried[0] == 1


def test_an_unverified_puzzle_tries_more_views_and_the_earliest_verified_one_answers() -> None:
    answers, probs, verified, steps = traces()
    chosen, cost, tried = escalate_all(Escalation(100, views=4), 1, 4, answers, probs, verified, steps)
    # Puzzle 1: view 0 spends 4 steps unverified; views 1-3 start together, view 3 verifies at its step 1 and the
    # others stop there: 4 + 1 + 1 + 1.
    assert chosen[1].tolist() == [1] and cost[1] == 7 and tried[1] == 4
    # Puzzle 2: nothing verifies; all four views are voted (3 beats 2) and every step counts.
    assert chosen[2].tolist() == [3] and cost[2] == 16 and tried[2] == 4


def test_a_small_budget_adds_only_the_views_it_covers() -> None:
    answers, probs, verified, steps = traces()
    chosen, cost, tried = escalate_all(Escalation(12, views=4), 1, 4, answers, probs, verified, steps)
    assert tried.tolist() == [1, 3, 3]  # 4 spent, room for two views of 4 steps
    assert chosen[1].tolist() == [1] and cost[1] == 4 + 3 + 3  # view 2 verifies at its step 3; view 1 stops there
    assert cost.max() <= 12
    none = escalate_all(Escalation(0, 4), 1, 4, answers, probs, verified, steps)
    assert none[2].tolist() == [1, 1, 1] and none[1].tolist() == [2, 4, 4]  # no budget: the first view's answer

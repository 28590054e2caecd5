"""Budgeted escalation: a puzzle whose first answer fails its rule check gets more views, within a step budget.

The server knows when a Sudoku or maze answer is wrong (`verified: false`), so returning it and stopping would
waste what it knows. Here a puzzle runs its first round (the request's views, usually one) as before; if no view
was verified, the next round starts as many further views (other symmetries of the square: fresh trajectories on
the same question) as the budget still covers at a full horizon each, all at once, and the first of them to verify
answers (the others stop). When none verifies, the views tried so far are voted. Easy puzzles verify in their
first steps and never escalate, so they cost what they cost before; only the puzzles the model gets wrong spend
the budget.

The budget counts model steps over all views of one puzzle, so a request can never cost more than it says.
`escalate_all` replays the same rule over traces, for `training.evaluate` and the published curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.views import choose, vote_one

DEFAULT_BUDGET_STEPS = 256
"""Steps a Sudoku or maze may spend over all its views unless the request or the operator says otherwise: 16 views
at a 16-step horizon (a maze has 8). Measured on 100 held-out 21-22-given Sudoku: 94% exact at 24 mean steps with
128, 99% at 29 with 256, 100% at 41 with 512 (docs/inference.md). Puzzles the model solves verify within their
first view and spend nothing extra."""


@dataclass(frozen=True)
class Escalation:
    """How far one puzzle may go past its first round."""

    budget: int
    """Model steps over all views of the puzzle, first round included; at most the first round when smaller."""
    views: int
    """Views the puzzle has in all (`inference.views.views_for`: 8 for a maze, more for a Sudoku)."""

    def next_views(self, tried: int, spent: int, horizon: int) -> int:
        """How many more views to start after `tried` views spent `spent` steps: each may run `horizon` steps, and
        together they stay within the budget."""
        room = (self.budget - spent) // max(1, horizon)
        return int(max(0, min(self.views - tried, room)))


def escalate_all(
    escalation: Escalation,
    first_round: int,
    horizon: int,
    answers: np.ndarray,
    probabilities: np.ndarray,
    verified: np.ndarray,
    steps: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the server answers for each puzzle, given every view's halting answer (a trace of all views).

    Args:
        answers: [V, N, L] each view's answer where it halts, turned back to the puzzle's orientation.
        probabilities, verified, steps: [V, N] each view's halting probability, rule check and steps there.
    Returns:
        the answers [N, L], the steps spent on each puzzle over all views [N], and the views tried [N].
    """
    _, n, _ = answers.shape
    chosen = np.empty_like(answers[0])
    cost = np.zeros(n, dtype=np.int64)
    tried = np.zeros(n, dtype=np.int64)
    for i in range(n):
        views = first_round
        spent = int(steps[:first_round, i].sum())
        first, best, _ = choose(
            list(answers[:views, i]), list(probabilities[:views, i]), list(verified[:views, i]), list(steps[:views, i])
        )
        if first is not None:
            spent = int(np.minimum(steps[:views, i], steps[first, i]).sum())
        else:
            extra = escalation.next_views(views, spent, horizon)
            if extra:
                new = slice(views, views + extra)
                passed = [views + j for j, ok in enumerate(verified[new, i]) if ok]
                views += extra
                if passed:
                    win = min(passed, key=lambda v: (steps[v, i], v))
                    best = np.asarray(answers[win, i])
                    spent += int(np.minimum(steps[new, i], steps[win, i]).sum())
                else:
                    best = vote_one(list(answers[:views, i]), list(probabilities[:views, i]))[0]
                    spent += int(steps[new, i].sum())
        chosen[i], cost[i], tried[i] = best, spent, views
    return chosen, cost, tried

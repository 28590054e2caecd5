"""Views: a Sudoku or maze solved under symmetries, and the choice that turns views into one answer.

A rotated or mirrored puzzle is a puzzle of the same kind, and training saw all 8 orientations, so each view gives
the model a fresh trajectory on the same question; answers map back exactly. A Sudoku has far more symmetries: its
digits can be relabelled, its bands and stacks reordered, the rows of a band and the columns of a stack shuffled,
and the grid transposed, all of which the Sudoku presets train with. Views 0-7 are the square's symmetries for
every family; a Sudoku's views from 8 on are such relabelled and reshuffled copies, one fixed copy per view number.
The vote is the reference's ARC vote applied to one puzzle: the answer most views gave, ties broken by the higher
mean halting probability; a view whose answer passed the rule check wins over any vote (`choose`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from model.puzzles.augment import vote
from model.puzzles.dihedral import DIHEDRAL_INVERSE, NUM_DIHEDRAL, dihedral_rows


def turn(tokens: np.ndarray, tid: int) -> np.ndarray:
    """One flattened square grid [L] under symmetry `tid`."""
    turned: np.ndarray = dihedral_rows(np.asarray(tokens)[None], np.array([tid]))[0]
    return turned


def turn_rows(rows: np.ndarray, tid: int) -> np.ndarray:
    """Flattened square grids [N, L] (or [..., N, L]) under symmetry `tid`."""
    flat = np.asarray(rows).reshape(-1, rows.shape[-1])
    return dihedral_rows(flat, np.full(len(flat), tid)).reshape(rows.shape)


def turn_back(rows: np.ndarray, tid: int) -> np.ndarray:
    """Answers [..., N, L] given under symmetry `tid`, in the puzzles' own orientation."""
    return turn_rows(rows, DIHEDRAL_INVERSE[tid])


SUDOKU_VIEWS = 64
"""Views a Sudoku may try: the square's 8 symmetries, then 56 relabelled and reshuffled copies."""


def views_for(family: str) -> int:
    """How many different views a puzzle of `family` has here (the most escalation can try)."""
    return SUDOKU_VIEWS if family == "sudoku" else NUM_DIHEDRAL


@lru_cache(maxsize=256)
def _sudoku_shuffle(tid: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Sudoku view `tid` (>= 8): which input cell each output cell takes [L], and the token map of the digits.

    Seeded by the view number, so a view is the same copy everywhere (server, evaluation, tests).
    """
    side = math.isqrt(length)
    box = math.isqrt(side)
    rng = np.random.default_rng(tid)
    rows = np.concatenate([band * box + rng.permutation(box) for band in rng.permutation(box)])
    cols = np.concatenate([stack * box + rng.permutation(box) for stack in rng.permutation(box)])
    order = np.arange(length).reshape(side, side)[rows][:, cols]
    if rng.random() < 0.5:
        order = order.T
    tokens = np.arange(side + 2)  # 0 PAD and 1 blank stay; digit tokens 2..side+1 are relabelled
    tokens[2:] = 2 + rng.permutation(side)
    return order.reshape(-1).copy(), tokens


def apply_view(rows: np.ndarray, tid: int, family: str) -> np.ndarray:
    """Flattened grids [..., L] as view `tid` of their family shows them."""
    if tid < NUM_DIHEDRAL:
        return turn_rows(rows, tid)
    if family != "sudoku":
        raise ValueError(f"{family} puzzles have {NUM_DIHEDRAL} views, not {tid + 1}")
    order, tokens = _sudoku_shuffle(tid, rows.shape[-1])
    viewed: np.ndarray = tokens[np.asarray(rows)[..., order]]
    return viewed


def invert_view(rows: np.ndarray, tid: int, family: str) -> np.ndarray:
    """Answers [..., L] given under view `tid`, in the puzzle's own frame."""
    if tid < NUM_DIHEDRAL:
        return turn_back(rows, tid)
    order, tokens = _sudoku_shuffle(tid, rows.shape[-1])
    inverse = np.argsort(tokens)
    rows = np.asarray(rows)
    own = np.empty_like(rows)
    own[..., order] = inverse[np.clip(rows, 0, len(tokens) - 1)]
    return own


def check_views(views: int) -> None:
    if not 1 <= views <= NUM_DIHEDRAL:
        raise ValueError(f"views must be 1..{NUM_DIHEDRAL}, got {views}")


def vote_one(answers: Sequence[np.ndarray], probabilities: Sequence[float]) -> tuple[np.ndarray, list[float]]:
    """The answer most views gave (already turned back), and the halting probabilities of the views that gave it."""
    candidates = [(np.asarray(a), float(p)) for a, p in zip(answers, probabilities, strict=True)]
    best = np.asarray(vote(candidates)[0], dtype=np.int64)
    return best, [p for a, p in candidates if np.array_equal(a, best)]


def vote_views(answers: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """`vote_one` for every puzzle: answers [V, N, L] already turned back, probabilities [V, N]."""
    _, n, length = answers.shape
    voted = np.empty((n, length), dtype=answers.dtype)
    for i in range(n):
        voted[i] = vote_one(list(answers[:, i]), list(probabilities[:, i]))[0]
    return voted


def choose(
    answers: Sequence[np.ndarray],
    probabilities: Sequence[float],
    verified: Sequence[bool | None],
    steps: Sequence[int],
) -> tuple[int | None, np.ndarray, list[float]]:
    """The answer for a puzzle solved under several views (answers already turned back).

    A view whose answer passed the rule check wins: a checked answer is right, so voting could only lose it. Among
    several, the one that got there in the fewest steps (then the lowest view): the server stops the other views
    once one is verified, so that is the one it answers with. Without a verified view the vote decides.

    Returns:
        the index of the verified view (None when the vote decided), the answer, and the halting probabilities
        of the views that gave it.
    """
    passed = [i for i, ok in enumerate(verified) if ok]
    if passed:
        first = min(passed, key=lambda i: (steps[i], i))
        best = np.asarray(answers[first], dtype=np.int64)
        agree = [float(p) for a, p in zip(answers, probabilities, strict=True) if np.array_equal(a, best)]
        return first, best, agree
    best, agree = vote_one(answers, probabilities)
    return None, best, agree


def choose_all(
    answers: np.ndarray, probabilities: np.ndarray, verified: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`choose` for every puzzle, and what each answer cost in steps.

    Args: answers [V, N, L] turned back, probabilities [V, N], verified [V, N] bool, steps [V, N] each view ran.
    Returns: the answers [N, L], and the steps of all views [N], where a verified view stops the others at its step
    (the server cancels them then).
    """
    _, n, _ = answers.shape
    chosen = np.empty_like(answers[0])
    cost = np.zeros(n, dtype=np.int64)
    for i in range(n):
        first, chosen[i], _ = choose(
            list(answers[:, i]), list(probabilities[:, i]), list(verified[:, i]), list(steps[:, i])
        )
        cost[i] = steps[:, i].sum() if first is None else np.minimum(steps[:, i], steps[first, i]).sum()
    return chosen, cost

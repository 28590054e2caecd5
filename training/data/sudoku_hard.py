"""Hard Sudoku without downloads: few givens and a search-effort floor, reached by local search.

Removing clues from a full grid in random order stops at a minimal puzzle of 22-26 givens, and about half of
those fall to naked and hidden singles alone (rating 0). The puzzles people call hard (the lists solvers are
benchmarked on, Sudoku-Extreme) have fewer givens and need search. Random restarts almost never reach them, so
each puzzle here is walked there: from a minimal puzzle, a move takes two givens out, puts back true digits at
random empty cells until the solution is unique again, and removes clues while it stays unique. A move is kept
when it lowers the given count, or keeps it and does not lower the rating, so the walk goes down to the target
count and then drifts along puzzles at least as hard until the rating clears the floor. The rating is the one
`training.data.sudoku` records: branch nodes of an exact search with singles propagation (0 = singles solve it).
Everything runs in numba, one fixed-seed chunk per task as in the plain generator.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from training.data import sudoku
from training.data.compiled import njit
from training.data.dataset import save_dataset
from training.data.sudoku import CHUNK, SudokuPuzzles, _search, _tables

log = logging.getLogger(__name__)

SIDE = 9
N = SIDE * SIDE
SPACING = 6
"""Accepted moves between two puzzles taken from one walk (`per_walk` > 1), out of at most three times as many
tried: each moves two givens or more, so takes differ; a walk that cannot move ends its takes."""


@njit(cache=True)
def _unique(puzzle, units, cell_units, popcnt, lowbit, scratch, blank):  # type: ignore[no-untyped-def]
    found, _ = _search(puzzle, SIDE, units, cell_units, popcnt, lowbit, 2, False, scratch, blank)
    return found == 1


@njit(cache=True)
def _rate(puzzle, units, cell_units, popcnt, lowbit, scratch, blank):  # type: ignore[no-untyped-def]
    _, nodes = _search(puzzle, SIDE, units, cell_units, popcnt, lowbit, 1 << 30, False, scratch, blank)
    return nodes


@njit(cache=True)
def _minimize(puzzle, units, cell_units, popcnt, lowbit, scratch, blank):  # type: ignore[no-untyped-def]
    """Remove givens in random order while the solution stays unique; returns the given count left."""
    givens = 0
    for c in np.random.permutation(N):
        if puzzle[c] == 0:
            continue
        value = puzzle[c]
        puzzle[c] = 0
        if _unique(puzzle, units, cell_units, popcnt, lowbit, scratch, blank):
            continue
        puzzle[c] = value
        givens += 1
    return givens


@njit(cache=True)
def _move(puzzle, solution, units, cell_units, popcnt, lowbit, scratch, blank):  # type: ignore[no-untyped-def]
    """One local-search step in place: two givens out, true digits back until unique, then minimal again.

    Each digit put back sits where a second solution differs from the true one, so it rules that solution out:
    one or two digits usually restore uniqueness, where digits at random cells took several and undid the step.
    """
    for _ in range(2):
        while True:
            c = np.random.randint(0, N)
            if puzzle[c] != 0:
                puzzle[c] = 0
                break
    while True:
        found, _ = _search(puzzle, SIDE, units, cell_units, popcnt, lowbit, 2, False, scratch, solution)
        if found == 1:
            break
        differ = np.flatnonzero((scratch != solution) & (puzzle == 0))
        c = differ[np.random.randint(0, len(differ))]
        puzzle[c] = solution[c]
    return _minimize(puzzle, units, cell_units, popcnt, lowbit, scratch, blank)


@njit(cache=True)
def _hard_chunk(  # type: ignore[no-untyped-def]
    seed,
    lo,
    hi,
    min_rating,
    walk,
    patience,
    per_walk,
    max_tries,
    units,
    cell_units,
    popcnt,
    lowbit,
    puzzles,
    solutions,
    ratings,
):
    """Fill the output arrays with puzzles of lo..hi givens rated >= min_rating; returns how many were made."""
    np.random.seed(seed)
    blank = np.zeros(N, dtype=np.int8)
    solution = np.zeros(N, dtype=np.int8)
    scratch = np.zeros(N, dtype=np.int8)
    made, tries = 0, 0
    while made < len(puzzles) and tries < max_tries:
        tries += 1
        _search(blank, SIDE, units, cell_units, popcnt, lowbit, 1, True, solution, blank)  # a random full grid
        puzzle = solution.copy()
        givens = _minimize(puzzle, units, cell_units, popcnt, lowbit, scratch, blank)
        rating = _rate(puzzle, units, cell_units, popcnt, lowbit, scratch, blank)
        target = np.random.randint(lo, hi + 1)
        stale = 0
        for _ in range(walk):
            if (givens <= target and rating >= min_rating) or (stale >= patience and givens <= hi):
                break
            trial = puzzle.copy()
            g = _move(trial, solution, units, cell_units, popcnt, lowbit, scratch, blank)
            stale += 1
            if g < lo:
                continue
            r = _rate(trial, units, cell_units, popcnt, lowbit, scratch, blank)
            if g < givens or (g == givens and r > rating):
                stale = 0
            if g < givens or (g == givens and r >= rating):
                puzzle, givens, rating = trial, g, r
        if givens < lo or givens > hi or rating < min_rating:
            continue
        reached, accepted = givens, 0
        for take in range(per_walk):
            if made == len(puzzles):
                break
            moved = take == 0
            for _ in range(3 * SPACING if take else 0):  # walk on among qualifying puzzles, at most one given above
                trial = puzzle.copy()
                g = _move(trial, solution, units, cell_units, popcnt, lowbit, scratch, blank)
                if lo <= g <= min(reached + 1, hi):
                    r = _rate(trial, units, cell_units, popcnt, lowbit, scratch, blank)
                    if r >= min_rating and (trial != puzzle).any():
                        puzzle, givens, rating, moved = trial, g, r, True
                        accepted += 1
                        if accepted >= SPACING:
                            break
            if not moved:  # stuck: a repeat would only be dropped as a duplicate
                break
            accepted = 0
            puzzles[made] = puzzle
            solutions[made] = solution
            ratings[made] = rating
            made += 1
    return made


def _run_chunk(args: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, count, lo, hi, min_rating, walk, patience, per_walk, max_tries = args
    puzzles, solutions = np.zeros((count, N), np.int8), np.zeros((count, N), np.int8)
    ratings = np.zeros(count, np.int32)
    made = _hard_chunk(
        seed, lo, hi, min_rating, walk, patience, per_walk, max_tries, *_tables(SIDE), puzzles, solutions, ratings
    )
    if made < count:
        raise RuntimeError(
            f"made only {made} of {count} hard puzzles in {max_tries} walks: raise the given range, "
            "lower the rating floor or lengthen the walk"
        )
    return puzzles, solutions, ratings


def generate(
    n: int,
    givens: tuple[int, int] = (17, 25),
    min_rating: int = 0,
    seed: int = 0,
    walk: int = 300,
    patience: int = 40,
    per_walk: int = 1,
    workers: int | None = None,
    max_tries_per_puzzle: int = 50,
) -> SudokuPuzzles:
    """`n` 9x9 puzzles with a unique solution, `givens` (inclusive) clues and rating >= `min_rating`.

    Each walk aims at a given count drawn uniformly from the range; walks that end outside it or under the floor
    are discarded, so the counts actually made lean to the top of the range when its bottom is out of reach
    (17-clue puzzles are rare enough that a walk of a few hundred moves almost never finds one). Deterministic in
    `seed` whatever `workers` is.
    """
    lo, hi = givens
    if not 17 <= lo <= hi <= N:
        raise ValueError(f"givens must satisfy 17 <= min <= max <= {N} (no 9x9 Sudoku has fewer than 17), got {givens}")
    tasks = []
    for k, start in enumerate(range(0, n, CHUNK)):
        chunk_seed = int(np.random.SeedSequence([seed, k, 17]).generate_state(1)[0] >> 1)
        count = min(CHUNK, n - start)
        tasks.append((chunk_seed, count, lo, hi, min_rating, walk, patience, per_walk, count * max_tries_per_puzzle))
    return sudoku.run_chunks(_run_chunk, tasks, n, SIDE, workers, warm=(0, 0, lo, hi, 0, 1, 1, 1, 0))


EASY_GIVENS = (22, 40)
"""The plain generator's range for the easier share of a training mix: what people call easy to hard-ish."""


def build(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    givens: tuple[int, int] = (17, 25),
    min_rating: int = 3,
    easy_share: float = 0.0,
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """A dataset whose test split is all hard and whose train split mixes in `easy_share` plain puzzles.

    The easy share keeps the model solving the puzzles most people bring (a model trained on hard puzzles alone
    has never seen a 35-given grid). Training puzzles are taken four per walk (four times cheaper; digit and
    band augmentation hides the shared solution grid), test puzzles one per walk so each is independent. No
    puzzle is in both splits; the test split has the hard settings only.
    """
    if not 0.0 <= easy_share < 1.0:
        raise ValueError(f"easy_share must be in [0, 1), got {easy_share}")
    n_easy = round(n_train * easy_share)
    n_hard = n_train - n_easy
    test = generate(n_test, givens, min_rating, seed + 1, workers=workers)
    seen = {p.tobytes() for p in test.puzzles}
    parts: list[SudokuPuzzles] = []
    keep: list[int] = []
    for round_ in range(8):  # a few repeats are dropped; top up with fresh walks until there are enough
        if len(keep) >= n_hard:
            break
        more = n_hard - len(keep)
        parts.append(
            generate(more + more // 20 + 8, givens, min_rating, seed + 7919 * round_, per_walk=4, workers=workers)
        )
        hard = SudokuPuzzles(
            np.concatenate([p.puzzles for p in parts]),
            np.concatenate([p.solutions for p in parts]),
            np.concatenate([p.ratings for p in parts]),
        )
        keep = [i for i in sudoku._unique_rows(hard.puzzles).tolist() if hard.puzzles[i].tobytes() not in seen]
    if len(keep) < n_hard:
        raise RuntimeError(f"only {len(keep)} distinct hard puzzles made, {n_hard} needed")
    train = sudoku._take(hard, np.array(keep[:n_hard], dtype=np.int64)) if n_hard else sudoku._take(test, np.arange(0))
    if n_easy:
        easy = sudoku.generate(n_easy, 9, EASY_GIVENS, seed + 7_777, workers=workers)
        train = SudokuPuzzles(
            np.concatenate([train.puzzles, easy.puzzles]),
            np.concatenate([train.solutions, easy.solutions]),
            np.concatenate([train.ratings, easy.ratings]),
        )
    hard = SudokuPuzzles(
        np.concatenate([train.puzzles[:n_hard], test.puzzles]),
        np.concatenate([train.solutions[:n_hard], test.solutions]),
        np.concatenate([train.ratings[:n_hard], test.ratings]),
    )
    hard_counts = (hard.puzzles != 0).sum(axis=(1, 2))
    source: dict[str, object] = {
        "generator": "training.data.sudoku_hard.generate",
        "seed": seed,
        "givens": list(givens),
        "min_rating": min_rating,
        "easy_share": easy_share,
        "easy_givens": list(EASY_GIVENS),
        "hard_givens_histogram": {int(k): int(v) for k, v in enumerate(np.bincount(hard_counts)) if v},
        "hard_rating_percentiles": {
            str(q): float(v)
            for q, v in zip((10, 50, 90, 99), np.percentile(hard.ratings, [10, 50, 90, 99]), strict=True)
        },
    }
    log.info(
        "sudoku-hard: %d hard + %d easy train, %d hard test; givens %s",
        n_train - n_easy,
        n_easy,
        n_test,
        source["hard_givens_histogram"],
    )
    desc = f"generated hard 9x9 sudoku, {givens[0]}-{givens[1]} givens, rating >= {min_rating}, unique solutions" + (
        f"; train mixes in {easy_share:.0%} plain puzzles with {EASY_GIVENS[0]}-{EASY_GIVENS[1]} givens"
        if n_easy
        else ""
    )
    splits = {"train": sudoku._to_split(train), "test": sudoku._to_split(test)}
    return save_dataset(out_dir, sudoku._meta(SIDE, desc, source), splits)

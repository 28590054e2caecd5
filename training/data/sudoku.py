"""Sudoku data: a unique-solution puzzle generator, the Sudoku-Extreme CSV reader, augmentation and builders.

The reference trains on 1,000 Sudoku-Extreme puzzles that cannot be downloaded here, so the generator has to make
hard-enough puzzles itself, fast: an exact bitmask solver (naked + hidden singles, then depth-first search on the
cell with fewest candidates) compiled with numba proves uniqueness while givens are removed from a random full
grid. Its branch-node count on the finished puzzle is the difficulty rating (0 = solved by singles alone).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.puzzles.sudoku import encode_grids, is_valid_solution
from training.data.compiled import fork_context, njit
from training.data.dataset import DatasetMeta, PuzzleSet, read_csv_rows, save_dataset, write_csv_rows

log = logging.getLogger(__name__)


CHUNK = 256  # puzzles per generator task; fixed so output depends on the seed only, never on the worker count


def _tables(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Units (rows, columns, boxes) as cell lists, each cell's 3 unit ids, popcount and lowest-bit lookups."""
    box, n = math.isqrt(side), side * side
    cells = np.arange(n).reshape(side, side)
    boxes = cells.reshape(box, box, box, box).transpose(0, 2, 1, 3).reshape(side, side)
    units = np.concatenate([cells, cells.T, boxes]).astype(np.int32)
    cell_units = np.zeros((n, 3), dtype=np.int32)
    for u, unit in enumerate(units):
        cell_units[unit, u // side] = u
    masks = range(1 << side)
    popcnt = np.array([m.bit_count() for m in masks], dtype=np.int32)
    lowbit = np.array([(m & -m).bit_length() - 1 for m in masks], dtype=np.int32)
    return units, cell_units, popcnt, lowbit


@njit(cache=True)
def _propagate(grid, side, units, cell_units, popcnt, lowbit, cand, used):  # type: ignore[no-untyped-def]
    """Fill naked and hidden singles to a fixpoint: -1 on a contradiction, 1 when solved, else 0 (cand is fresh)."""
    full = (1 << side) - 1
    for u in range(3 * side):
        m = 0
        for k in range(side):
            v = int(grid[units[u, k]])  # int8 would overflow at 1 << 8 in plain Python
            if v > 0:
                if m & (1 << (v - 1)):
                    return -1
                m |= 1 << (v - 1)
        used[u] = m
    while True:
        changed, empty = False, 0
        for c in range(side * side):
            if grid[c] == 0:
                m = full & ~(used[cell_units[c, 0]] | used[cell_units[c, 1]] | used[cell_units[c, 2]])
                if m == 0:
                    return -1
                if popcnt[m] == 1:
                    grid[c] = lowbit[m] + 1
                    for k in range(3):
                        used[cell_units[c, k]] |= m
                    changed = True
                else:
                    cand[c] = m
                    empty += 1
        if empty == 0:
            return 1
        if changed:
            continue
        for u in range(3 * side):
            missing = full & ~used[u]
            while missing:
                bit = missing & -missing
                missing &= missing - 1
                count, where = 0, -1
                for k in range(side):
                    c = units[u, k]
                    if grid[c] == 0 and cand[c] & bit:
                        count += 1
                        where = c
                if count == 0:
                    return -1
                if count == 1:  # cand may be stale (a superset) after a placement, so re-check this cell
                    if (used[cell_units[where, 0]] | used[cell_units[where, 1]] | used[cell_units[where, 2]]) & bit:
                        return -1
                    grid[where] = lowbit[bit] + 1
                    for k in range(3):
                        used[cell_units[where, k]] |= bit
                    changed = True
        if not changed:
            return 0


@njit(cache=True)
def _search(grid0, side, units, cell_units, popcnt, lowbit, limit, randomize, solution, avoid):  # type: ignore[no-untyped-def]
    """Depth-first search with propagation; returns (solutions found, stopping at `limit`; branch nodes).

    `solution` receives the first solution found that differs from `avoid` (an all-blank `avoid` differs from
    every solution): the hard-puzzle walk asks for a solution other than the true one, to see which cells tell
    them apart."""
    n = side * side
    stack = np.empty((n * side + 1, n), dtype=np.int8)
    work = np.empty(n, dtype=np.int8)
    cand = np.zeros(n, dtype=np.int32)
    used = np.zeros(3 * side, dtype=np.int32)
    digits = np.empty(side, dtype=np.int8)
    stack[0, :] = grid0
    sp, found, nodes, stored = 1, 0, 0, False
    while sp > 0:
        sp -= 1
        work[:] = stack[sp]
        status = _propagate(work, side, units, cell_units, popcnt, lowbit, cand, used)
        if status < 0:
            continue
        if status == 1:
            found += 1
            if not stored and (work != avoid).any():
                solution[:] = work
                stored = True
            if found >= limit:
                break
            continue
        nodes += 1
        best, fewest = -1, side + 1
        for c in range(n):
            if work[c] == 0 and popcnt[cand[c]] < fewest:
                best, fewest = c, popcnt[cand[c]]
        m, k = cand[best], 0
        while m:
            digits[k] = lowbit[m & -m] + 1
            m &= m - 1
            k += 1
        if randomize:
            for i in range(k - 1, 0, -1):
                j = np.random.randint(0, i + 1)
                digits[i], digits[j] = digits[j], digits[i]
        for i in range(k - 1, -1, -1):  # pushed in reverse so digits[0] is tried first
            stack[sp, :] = work
            stack[sp, best] = digits[i]
            sp += 1
    return found, nodes


@njit(cache=True)
def _generate_chunk(  # type: ignore[no-untyped-def]
    seed,
    side,
    lo,
    hi,
    min_rating,
    max_rating,
    max_tries,
    units,
    cell_units,
    popcnt,
    lowbit,
    puzzles,
    solutions,
    ratings,
):
    """Fill the output arrays with unique-solution puzzles; returns how many were made within `max_tries` grids."""
    np.random.seed(seed)
    n = side * side
    empty = np.zeros(n, dtype=np.int8)
    solution = np.zeros(n, dtype=np.int8)
    scratch = np.zeros(n, dtype=np.int8)
    made, tries = 0, 0
    while made < len(puzzles) and tries < max_tries:
        tries += 1
        _search(empty, side, units, cell_units, popcnt, lowbit, 1, True, solution, empty)  # a random full grid
        target = np.random.randint(lo, hi + 1)
        puzzle = solution.copy()
        givens = n
        for c in np.random.permutation(n):
            if givens <= target:
                break
            value = puzzle[c]
            puzzle[c] = 0
            found, _ = _search(puzzle, side, units, cell_units, popcnt, lowbit, 2, False, scratch, empty)
            if found == 1:
                givens -= 1
            else:
                puzzle[c] = value
        if givens < lo or givens > hi:
            continue
        _, rating = _search(puzzle, side, units, cell_units, popcnt, lowbit, 1 << 30, False, scratch, empty)
        if rating < min_rating or (max_rating >= 0 and rating > max_rating):
            continue
        puzzles[made] = puzzle
        solutions[made] = solution
        ratings[made] = rating
        made += 1
    return made


@dataclass
class SudokuPuzzles:
    """Questions and solutions as value grids [N, side, side] int8 (0 = blank), with a difficulty per puzzle."""

    puzzles: np.ndarray
    solutions: np.ndarray
    ratings: np.ndarray  # int32 [N]: generator branch nodes, or the CSV's own rating column
    sources: list[str] | None = None


def count_solutions(grid: np.ndarray, limit: int = 2) -> tuple[int, int]:
    """(number of solutions up to `limit`, branch nodes searched) for one value grid [side, side]."""
    g = np.asarray(grid, dtype=np.int8)
    side = g.shape[-1]
    blank = np.zeros(side * side, np.int8)
    found, nodes = _search(g.reshape(-1), side, *_tables(side), limit, False, blank.copy(), blank)
    return int(found), int(nodes)


def rating(grid: np.ndarray) -> int:
    """Difficulty: branch nodes of an exhaustive search after propagation (0 = singles alone solve it)."""
    return count_solutions(grid, limit=1 << 30)[1]


def _run_chunk(args: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, count, side, lo, hi, min_rating, max_rating, max_tries = args
    n = side * side
    puzzles, solutions = np.zeros((count, n), np.int8), np.zeros((count, n), np.int8)
    ratings = np.zeros(count, np.int32)
    made = _generate_chunk(
        seed, side, lo, hi, min_rating, max_rating, max_tries, *_tables(side), puzzles, solutions, ratings
    )
    if made < count:
        raise RuntimeError(f"made only {made} of {count} puzzles in {max_tries} tries: widen givens or ratings")
    return puzzles, solutions, ratings


def generate(
    n: int,
    side: int = 9,
    givens: tuple[int, int] = (22, 30),
    seed: int = 0,
    min_rating: int = 0,
    max_rating: int | None = None,
    workers: int | None = None,
    max_tries_per_puzzle: int = 200,
) -> SudokuPuzzles:
    """Generate `n` puzzles with a unique solution, `givens` (inclusive) clues and rating in [min, max].

    Each puzzle starts from its own full grid made by randomised search (so grids are diverse, not relabelings of
    one base grid); clues are removed in random order toward a random target count while the solution stays
    unique. Deterministic in `seed` whatever `workers` is, because work is split in fixed chunks seeded by index.
    """
    if side not in (4, 9):
        raise ValueError(f"side must be 4 or 9, got {side}")
    lo, hi = givens
    if not 0 <= lo <= hi <= side * side:
        raise ValueError(f"givens must satisfy 0 <= min <= max <= {side * side}, got {givens}")
    tasks = []
    for k, start in enumerate(range(0, n, CHUNK)):
        chunk_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0] >> 1)
        count = min(CHUNK, n - start)
        tasks.append(
            (
                chunk_seed,
                count,
                side,
                lo,
                hi,
                min_rating,
                -1 if max_rating is None else max_rating,
                count * max_tries_per_puzzle,
            )
        )
    return run_chunks(_run_chunk, tasks, n, side, workers)


Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]


def run_chunks(
    run: Callable[[tuple[int, ...]], Chunk],
    tasks: Sequence[tuple[int, ...]],
    n: int,
    side: int,
    workers: int | None,
    warm: tuple[int, ...] | None = None,
) -> SudokuPuzzles:
    """Run a generator's chunks (flat puzzles, solutions, ratings each), in forked worker processes when there are
    several, and join them in task order, so the output depends on the tasks' seeds only.

    Before forking, the solver is compiled here once (and `warm`, a task making nothing, compiles `run`'s own
    kernel), so workers inherit the compiled code instead of each compiling it.
    """
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        results = [run(t) for t in tasks]
    else:
        count_solutions(np.zeros((side, side), np.int8), limit=1)
        if warm is not None:
            run(warm)
        with ProcessPoolExecutor(workers, mp_context=fork_context()) as pool:
            results = list(pool.map(run, tasks))
    shape = (n, side, side)
    puzzles = np.concatenate([r[0] for r in results]).reshape(shape) if results else np.zeros(shape, np.int8)
    solutions = np.concatenate([r[1] for r in results]).reshape(shape) if results else np.zeros(shape, np.int8)
    ratings = np.concatenate([r[2] for r in results]) if results else np.zeros(0, np.int32)
    return SudokuPuzzles(puzzles, solutions, ratings)


def read_csv(path: str | Path, limit: int | None = None) -> SudokuPuzzles:
    """Read the Sudoku-Extreme CSV format (`source,question,answer,rating`; 81-char strings, '.' = blank).

    Rows are checked (lengths, characters, answers that solve their questions) so a corrupt file fails here with
    its line number rather than as a silent accuracy drop in training.
    """
    sources: list[str] = []
    questions: list[str] = []
    answers: list[str] = []
    ratings: list[int] = []
    for line, row in read_csv_rows(path, limit):
        if len(row) != 4 or len(row[1]) != 81 or len(row[2]) != 81:
            raise ValueError(f"{path}:{line}: expected 4 columns with 81-character question and answer")
        sources.append(row[0])
        questions.append(row[1])
        answers.append(row[2])
        ratings.append(int(float(row[3] or 0)))
    q = _digits(questions, path, blank_ok=True)
    a = _digits(answers, path, blank_ok=False)
    for start in range(0, len(q), 65536):
        bad = ~is_valid_solution(a[start : start + 65536], q[start : start + 65536])
        if bad.any():
            raise ValueError(f"{path}:{start + int(np.argmax(bad)) + 2}: answer does not solve the question")
    return SudokuPuzzles(q, a, np.array(ratings, dtype=np.int32), sources)


def _digits(rows: list[str], path: str | Path, blank_ok: bool) -> np.ndarray:
    """[N, 9, 9] int8 values from 81-char strings, vectorised because the full train file has 3.8M rows."""
    codes = np.frombuffer("".join(rows).encode("ascii", "replace"), dtype=np.uint8).reshape(len(rows), 81)
    blank = (codes == ord(".")) | (codes == ord("0"))
    ok = ((codes >= ord("1")) & (codes <= ord("9"))) | (blank if blank_ok else False)
    if not ok.all():
        raise ValueError(f"{path}:{int(np.argmax(~ok.all(axis=1))) + 2}: characters outside 1-9 and '.'")
    return np.where(blank, 0, codes.astype(np.int16) - ord("0")).astype(np.int8).reshape(-1, 9, 9)


def write_csv(path: str | Path, data: SudokuPuzzles, source: str = "generated") -> None:
    """Write puzzles in the Sudoku-Extreme CSV format, so generated sets can be shared and re-read."""
    write_csv_rows(
        path,
        (
            [
                data.sources[i] if data.sources else source,
                "".join(str(v) if v else "." for v in data.puzzles[i].reshape(-1)),
                "".join(str(v) for v in data.solutions[i].reshape(-1)),
                int(data.ratings[i]),
            ]
            for i in range(len(data.puzzles))
        ),
    )


def augment_batch(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The reference `shuffle_sudoku`, one independent draw per row, applied identically to inputs and labels.

    Per row: a permutation of the digits (tokens 2..side+1; PAD and blank fixed), a transpose with p=0.5, and a
    permutation of the bands and of the rows inside each band, likewise of stacks and columns. Every one of these
    maps valid solutions to valid solutions. Inputs and labels are token batches [B, side*side] uint8; token values
    outside the digit range (PAD, blank, anything above side+1) keep their value and only move.
    """
    b, length = inputs.shape
    side = math.isqrt(length)
    box = math.isqrt(side)
    table = np.tile(np.arange(256, dtype=np.uint8), (b, 1))
    table[:, 2 : side + 2] = np.argsort(rng.random((b, side)), axis=1) + 2

    def line_perm() -> np.ndarray:  # [B, side]: whole bands moved, rows shuffled inside each band
        outer = np.argsort(rng.random((b, box)), axis=1)
        inner = np.argsort(rng.random((b, box, box)), axis=2)
        return (outer[:, :, None] * box + inner).reshape(b, side)

    rows, cols = line_perm(), line_perm()
    transpose = rng.integers(0, 2, size=b).astype(bool)
    straight = rows[:, :, None] * side + cols[:, None, :]
    flipped = cols[:, None, :] * side + rows[:, :, None]
    index = np.where(transpose[:, None, None], flipped, straight).reshape(b, length)

    def apply(x: np.ndarray) -> np.ndarray:
        moved = np.take_along_axis(np.asarray(x), index, axis=1)
        return np.take_along_axis(table, moved.astype(np.intp), axis=1)

    return apply(inputs), apply(labels)


def _unique_rows(grids: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct grid, in their original order."""
    flat = np.ascontiguousarray(grids.reshape(len(grids), -1))
    _, first = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))), return_index=True)
    return np.sort(first)


def _to_split(data: SudokuPuzzles) -> PuzzleSet:
    n, cells = len(data.puzzles), int(np.prod(data.puzzles.shape[1:]))

    def encode(grids: np.ndarray) -> np.ndarray:  # an empty split (evaluation builds no train) keeps [0, cells]
        return encode_grids(grids) if n else np.zeros((0, cells), dtype=np.uint8)

    return PuzzleSet(
        inputs=encode(data.puzzles),
        labels=encode(data.solutions),  # the full solution, givens included, as in the reference
        puzzle_ids=np.zeros(n, dtype=np.int32),
        groups=np.arange(n, dtype=np.int32),
        extras={"rating": data.ratings.astype(np.int32)},
    )


def _take(data: SudokuPuzzles, index: np.ndarray) -> SudokuPuzzles:
    sources = [data.sources[i] for i in index] if data.sources else None
    return SudokuPuzzles(data.puzzles[index], data.solutions[index], data.ratings[index], sources)


def _meta(side: int, description: str, source: dict[str, object]) -> DatasetMeta:
    return DatasetMeta("sudoku", 11, side * side, 1, "sudoku", description, source)


def build(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    givens: tuple[int, int] = (22, 30),
    seed: int = 0,
    side: int = 9,
    min_rating: int = 0,
    max_rating: int | None = None,
    workers: int | None = None,
) -> Path:
    """Generate a Sudoku dataset: distinct puzzles, none shared between train and test; returns its directory."""
    need, parts, have = n_train + n_test, [], 0
    for rounds in range(20):  # tiny 4x4 settings can run out of distinct puzzles, so top up a bounded number of times
        more = generate(need - have + 8, side, givens, seed + 1_000_003 * rounds, min_rating, max_rating, workers)
        parts.append(more)
        merged = SudokuPuzzles(
            np.concatenate([p.puzzles for p in parts]),
            np.concatenate([p.solutions for p in parts]),
            np.concatenate([p.ratings for p in parts]),
        )
        keep = _unique_rows(merged.puzzles)
        have = len(keep)
        if have >= need:
            break
    else:
        raise RuntimeError(f"only {have} distinct puzzles found for these settings, {need} needed")
    data = _take(merged, keep)
    train, test = _take(data, np.arange(n_train)), _take(data, np.arange(n_train, need))
    counts = (data.puzzles[:need] != 0).sum(axis=(1, 2))
    source: dict[str, object] = {
        "generator": "training.data.sudoku.generate",
        "seed": seed,
        "givens": list(givens),
        "side": side,
        "min_rating": min_rating,
        "max_rating": max_rating,
        "mean_givens": float(counts.mean()),
        "mean_rating": float(data.ratings[:need].mean()),
    }
    log.info(
        "sudoku: %d train / %d test puzzles, mean givens %.1f, mean rating %.2f",
        n_train,
        n_test,
        source["mean_givens"],
        source["mean_rating"],
    )
    desc = f"generated {side}x{side} sudoku, {givens[0]}-{givens[1]} givens, unique solutions"
    return save_dataset(out_dir, _meta(side, desc, source), {"train": _to_split(train), "test": _to_split(test)})


def build_from_csv(
    out_dir: str | Path,
    train_csv: str | Path,
    test_csv: str | Path,
    subsample: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> Path:
    """Build from Sudoku-Extreme CSVs; `subsample` draws that many train puzzles (the paper uses 1000).

    Unlike the reference, the subsample is seeded so a run can be reproduced; augmentation happens on the fly.
    """
    train, test = read_csv(train_csv), read_csv(test_csv, limit=test_limit)
    if subsample is not None and subsample < len(train.puzzles):
        train = _take(train, np.sort(np.random.default_rng(seed).choice(len(train.puzzles), subsample, False)))
    source: dict[str, object] = {
        "train_csv": str(train_csv),
        "test_csv": str(test_csv),
        "subsample": subsample,
        "test_limit": test_limit,
        "seed": seed,
    }
    desc = f"Sudoku-Extreme CSV: {len(train.puzzles)} train, {len(test.puzzles)} test"
    return save_dataset(out_dir, _meta(9, desc, source), {"train": _to_split(train), "test": _to_split(test)})

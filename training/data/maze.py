"""Maze data: a generator of hard mazes with unique shortest paths, the Maze-Hard CSV reader, dihedral augmentation.

Maze-Hard (30x30, shortest path > 110) cannot be downloaded here, so we make our own. A maze is carved as a perfect
maze (randomised depth-first search on the even-coordinate lattice, which gives long winding corridors), then a
fraction of the remaining inner walls is knocked out so loops appear and the shortest path is no longer simply
"the" path. S and G are placed far apart, and only pairs joined by exactly one shortest path are kept, so the label
(the path marked 'o') is well defined. Kernels are compiled with numba, as in `training.data.sudoku`.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from model.puzzles.dihedral import NUM_DIHEDRAL, dihedral_rows
from model.puzzles.maze import CHARS, GOAL, OPEN, PATH, START, WALL
from training.data.compiled import fork_context, njit
from training.data.dataset import DatasetMeta, PuzzleSet, read_csv_rows, save_dataset, write_csv_rows

log = logging.getLogger(__name__)


DEFAULT_LOOPS = 0.1  # share of the inner walls opened, so that S and G may be joined by more than one route
CHUNK = 128  # mazes per generator task; fixed so output depends on the seed only, never on the worker count


@njit(cache=True)
def _neighbours(v, n):  # type: ignore[no-untyped-def]
    """The 4-neighbours of cell `v` on an n x n board in a fixed order (up, down, left, right), -1 off the board."""
    r, c = v // n, v % n
    return (v - n if r > 0 else -1, v + n if r < n - 1 else -1, v - 1 if c > 0 else -1, v + 1 if c < n - 1 else -1)


@njit(cache=True)
def bfs(grid, h, w, start, dist, ways, queue):  # type: ignore[no-untyped-def]
    """Distances (-1 unreachable) and shortest-path counts (capped at 2) from `start` over the non-wall cells of a
    flat h x w grid, neighbours visited up, down, left, right; returns how many cells it reached."""
    dist[:] = -1
    ways[:] = 0
    dist[start], ways[start], queue[0] = 0, 1, start
    head, tail = 0, 1
    while head < tail:
        v = queue[head]
        head += 1
        r, c = v // w, v % w
        for k in range(4):
            nr, nc = r + (k == 1) - (k == 0), c + (k == 3) - (k == 2)
            if nr < 0 or nr >= h or nc < 0 or nc >= w or grid[nr * w + nc] == WALL:
                continue
            u = nr * w + nc
            if dist[u] < 0:
                dist[u] = dist[v] + 1
                queue[tail] = u
                tail += 1
            if dist[u] == dist[v] + 1:
                ways[u] = min(ways[u] + ways[v], 2)
    return tail


@njit(cache=True)
def _carve(grid, n, loops):  # type: ignore[no-untyped-def]
    """A perfect maze on the cells with even coordinates, then each remaining inner wall opened with p=`loops`."""
    m = (n + 1) // 2
    grid[:] = 1
    visited = np.zeros(m * m, dtype=np.bool_)
    stack = np.empty(m * m, dtype=np.int32)
    options = np.empty(4, dtype=np.int32)
    first = np.random.randint(0, m * m)
    visited[first], stack[0], sp = True, first, 1
    grid[(first // m) * 2 * n + (first % m) * 2] = 2
    while sp > 0:
        cur = stack[sp - 1]
        r, c, k = cur // m, cur % m, 0
        for nb in _neighbours(cur, m):
            if nb >= 0 and not visited[nb]:
                options[k] = nb
                k += 1
        if k == 0:
            sp -= 1
            continue
        nb = options[np.random.randint(0, k)]
        visited[nb] = True
        stack[sp] = nb
        sp += 1
        nr, nc = nb // m, nb % m
        grid[(r + nr) * n + (c + nc)] = 2  # the wall between two lattice cells sits at the mean coordinate
        grid[2 * nr * n + 2 * nc] = 2
    for r in range(2 * m - 1):
        for c in range(2 * m - 1):
            if (r + c) % 2 == 1 and grid[r * n + c] == 1 and np.random.random() < loops:
                grid[r * n + c] = 2


@njit(cache=True)
def _generate_chunk(seed, n, loops, min_path, far, max_tries, questions, labels, lengths):  # type: ignore[no-untyped-def]
    """Fill outputs with mazes whose S->G shortest path is unique and at least `min_path` steps; returns the count."""
    np.random.seed(seed)
    size = n * n
    grid = np.empty(size, dtype=np.uint8)
    dist = np.empty(size, dtype=np.int32)
    queue = np.empty(size, dtype=np.int32)
    ways = np.empty(size, dtype=np.int32)
    made, tries = 0, 0
    while made < len(questions) and tries < max_tries:
        tries += 1
        _carve(grid, n, loops)
        seen = bfs(grid, n, n, 0, dist, ways, queue)  # cell 0 is always a lattice cell, so it is open
        a = queue[seen - 1]  # farthest from an arbitrary cell: one end of a (near-)longest shortest path
        seen = bfs(grid, n, n, a, dist, ways, queue)
        threshold = max(min_path, int(far * dist[queue[seen - 1]]), 2)
        count = 0
        for i in range(seen):
            if dist[queue[i]] >= threshold and ways[queue[i]] == 1:
                count += 1
        if count == 0:
            continue
        pick, g = np.random.randint(0, count), -1
        for i in range(seen):
            if dist[queue[i]] >= threshold and ways[queue[i]] == 1:
                if pick == 0:
                    g = queue[i]
                    break
                pick -= 1
        s = a
        if np.random.random() < 0.5:
            s, g = g, s
        questions[made, :] = grid
        questions[made, s], questions[made, g] = 3, 4
        labels[made, :] = questions[made]
        bfs(grid, n, n, s, dist, ways, queue)
        v = g
        while dist[v] > 1:  # walk back from G; the shortest path is unique, so any closer neighbour is on it
            for w in _neighbours(v, n):
                if w >= 0 and dist[w] == dist[v] - 1 and grid[w] != 1:
                    v = w
                    break
            labels[made, v] = 5
        lengths[made] = dist[g]
        made += 1
    return made


def generate(
    n: int,
    side: int = 30,
    loops: float = DEFAULT_LOOPS,
    min_path: int = 0,
    far: float = 0.75,
    seed: int = 0,
    workers: int | None = None,
    max_tries_per_maze: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate `n` mazes of `side` x `side` (5..30): (questions, labels) uint8 tokens [n, side, side], path lengths.

    Args:
        loops: probability of opening each inner wall left by the perfect maze; 0 gives trees (every path unique).
        min_path: the "hard" filter: minimum S->G shortest-path length in steps (Maze-Hard uses > 110 at 30x30).
        far: G is drawn among cells at least this fraction of the farthest distance from S.
    Deterministic in `seed` whatever `workers` is, because work is split in fixed chunks seeded by index.
    """
    if not 5 <= side <= 30:
        raise ValueError(f"maze side must be 5..30, got {side}")
    tasks = []
    for k, start in enumerate(range(0, n, CHUNK)):
        chunk_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0] >> 1)
        count = min(CHUNK, n - start)
        tasks.append((chunk_seed, count, side, loops, min_path, far, count * max_tries_per_maze))
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers <= 1:
        results = [_run_chunk(t) for t in tasks]
    else:
        _run_chunk((0, 1, 5, 0.0, 0, 0.5, 100))  # compile once before forking workers
        with ProcessPoolExecutor(workers, mp_context=fork_context()) as pool:
            results = list(pool.map(_run_chunk, tasks))
    if not results:
        return np.zeros((0, side, side), np.uint8), np.zeros((0, side, side), np.uint8), np.zeros(0, np.int32)
    questions, labels, lengths = (np.concatenate([r[i] for r in results]) for i in range(3))
    return questions.reshape(n, side, side), labels.reshape(n, side, side), lengths


def _run_chunk(args: tuple[int, int, int, float, int, float, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, count, side, loops, min_path, far, max_tries = args
    questions = np.zeros((count, side * side), np.uint8)
    labels = np.zeros((count, side * side), np.uint8)
    lengths = np.zeros(count, np.int32)
    made = _generate_chunk(seed, side, loops, min_path, far, max_tries, questions, labels, lengths)
    if made < count:
        raise RuntimeError(f"made only {made} of {count} mazes in {max_tries} tries: lower min_path or loops")
    return questions, labels, lengths


def augment_batch(inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random symmetry of the square per row, the same for input and label (a path stays a shortest path)."""
    tids = rng.integers(0, NUM_DIHEDRAL, size=len(inputs))
    return dihedral_rows(inputs, tids), dihedral_rows(labels, tids)


def read_csv(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the Maze-Hard CSV format (`source,question,answer,rating`; N*N-char strings over '# SGo').

    Returns (questions, labels) as uint8 tokens [M, N, N] and the rating column (float32). Rows are checked so a
    corrupt file fails here with its line number: square strings, known characters, one S and one G, and answers
    that equal their question except for open cells marked 'o'.
    """
    questions: list[str] = []
    answers: list[str] = []
    ratings: list[float] = []
    for line, row in read_csv_rows(path, limit):
        length = len(row[1]) if len(row) == 4 else -1
        if (
            length < 0
            or math.isqrt(length) ** 2 != length
            or len(row[2]) != length
            or (questions and length != len(questions[0]))
        ):
            raise ValueError(f"{path}:{line}: expected 4 columns with equal square-length question and answer")
        questions.append(row[1])
        answers.append(row[2])
        ratings.append(float(row[3] or 0))
    lookup = np.zeros(256, dtype=np.uint8)
    for tok, ch in enumerate(CHARS):
        if tok:
            lookup[ord(ch)] = tok
    side = math.isqrt(len(questions[0])) if questions else 0

    def tokens(rows: list[str]) -> np.ndarray:
        raw = np.frombuffer("".join(rows).encode("latin-1", "replace"), dtype=np.uint8)
        return lookup[raw].reshape(len(rows), side, side)

    q, a = tokens(questions), tokens(answers)
    checks = [
        (
            ((q == 0) | (q == PATH)).any(axis=(1, 2)) | (a == 0).any(axis=(1, 2)),
            "characters outside '# SG' in the question or '# SGo' in the answer",
        ),
        (
            ((q == START).sum(axis=(1, 2)) != 1) | ((q == GOAL).sum(axis=(1, 2)) != 1),
            "question needs exactly one S and one G",
        ),
        (
            ~((a == q) | ((a == PATH) & (q == OPEN))).all(axis=(1, 2)),
            "answer differs from the question other than open cells marked 'o'",
        ),
    ]
    for bad, why in checks:
        if bad.any():
            raise ValueError(f"{path}:{int(np.argmax(bad)) + 2}: {why}")
    return q, a, np.array(ratings, dtype=np.float32)


def write_csv(path: str | Path, questions: np.ndarray, labels: np.ndarray, source: str = "generated") -> None:
    """Write mazes in the Maze-Hard CSV format; the rating column holds the shortest-path length."""
    chars = np.array(list(CHARS))
    write_csv_rows(
        path,
        (
            [source, "".join(chars[q.reshape(-1)]), "".join(chars[a.reshape(-1)]), int((a == PATH).sum()) + 1]
            for q, a in zip(questions, labels, strict=True)
        ),
    )


def _split(questions: np.ndarray, labels: np.ndarray, extras: dict[str, np.ndarray]) -> PuzzleSet:
    n, cells = len(questions), int(np.prod(questions.shape[1:]))  # explicit: an empty split cannot infer -1
    return PuzzleSet(
        inputs=questions.reshape(n, cells),
        labels=labels.reshape(n, cells),
        puzzle_ids=np.zeros(n, dtype=np.int32),
        groups=np.arange(n, dtype=np.int32),
        extras={k: v.astype(np.int32) for k, v in extras.items()},
    )


def _meta(side: int, description: str, source: dict[str, object]) -> DatasetMeta:
    return DatasetMeta("maze", 6, side * side, 1, "dihedral", description, source)


def pad(grids: np.ndarray, side: int, fill: int) -> np.ndarray:
    """Lay [n, s, s] grids into the top-left of [n, side, side] ones filled with `fill`, as the server lays a smaller
    maze into its model's square (questions take WALL, labels 0 so the padding is not scored)."""
    n, s = len(grids), grids.shape[-1]
    if s > side:
        raise ValueError(f"{s}x{s} mazes do not fit a {side}x{side} grid")
    out = np.full((n, side, side), fill, dtype=np.uint8)
    out[:, :s, :s] = grids
    return out


def _distinct(
    need: int, side: int, loops: float, min_path: int, far: float, seed: int, workers: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`need` distinct generated mazes of one side (a few spare ones are made so duplicates can be dropped)."""
    q, a, lengths = generate(need + need // 8 + 8, side, loops, min_path, far, seed, workers)
    flat = np.ascontiguousarray(q.reshape(len(q), -1))
    _, first = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))), return_index=True)
    keep = np.sort(first)[:need]
    if len(keep) < need:
        raise RuntimeError(f"only {len(keep)} distinct {side}x{side} mazes generated, {need} needed")
    return q[keep], a[keep], lengths[keep]


def _shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts, the remainder going to the last (largest) parts."""
    return [total // parts + (1 if i >= parts - total % parts else 0) for i in range(parts)]


def build(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    side: int = 30,
    loops: float = DEFAULT_LOOPS,
    min_path: int = 0,
    far: float = 0.75,
    seed: int = 0,
    workers: int | None = None,
    min_side: int = 0,
) -> Path:
    """Generate a maze dataset (family "maze", vocab 6, dihedral augmentation on the fly); returns its directory.

    Mazes are deduplicated and none is shared between train and test (this only matters for tiny sides).
    With `min_side` below `side`, the set mixes the sides min_side, min_side + 2, ..., side in equal numbers,
    each padded into the side x side canvas. Only sides of the parity of `side` are used: the generator carves
    on the even lattice, so an even side holds the same mazes as the odd side below it plus a line of walls.
    `min_path` is for `side`; a smaller side s gets min_path * s^2 / side^2, the same share of its cells.
    A model trained so serves every maze size in the range, not just its own (see `pad`).
    """
    if min_side and not 5 <= min_side <= side:
        raise ValueError(f"maze min_side must be 5..{side} (the side), got {min_side}")
    sides = list(range(side - 2 * ((side - (min_side or side)) // 2), side + 1, 2))
    parts = []
    for s, n_tr, n_te in zip(sides, _shares(n_train, len(sides)), _shares(n_test, len(sides)), strict=True):
        # The full side keeps the dataset's own seed, so a one-side set is the same as before mixing existed.
        s_seed = seed if s == side else int(np.random.SeedSequence([seed, s]).generate_state(1)[0] >> 1)
        s_min_path = min_path if s == side else round(min_path * s * s / (side * side))
        q, a, lengths = _distinct(n_tr + n_te, s, loops, s_min_path, far, s_seed, workers)
        parts.append((pad(q, side, WALL), pad(a, side, 0), lengths, np.full(len(q), s), np.arange(len(q)) >= n_tr))
    q, a, lengths, side_of, is_test = (np.concatenate(column) for column in zip(*parts, strict=True))
    shuffle = np.random.default_rng(seed)

    def split(test: bool) -> PuzzleSet:
        rows = np.flatnonzero(is_test == test)
        if len(sides) > 1:
            rows = shuffle.permutation(rows)  # sizes mixed through the split, so any prefix holds all of them
        return _split(q[rows], a[rows], {"path_length": lengths[rows], "side": side_of[rows]})

    source: dict[str, object] = {
        "generator": "training.data.maze.generate",
        "seed": seed,
        "side": side,
        "loops": loops,
        "min_path": min_path,
        "far": far,
        "mean_path_length": float(lengths.mean()) if len(lengths) else 0.0,
    }
    if len(sides) > 1:
        source["min_side"] = sides[0]
    log.info(
        "maze: %d train / %d test mazes of side %s in %dx%d, mean path %.1f",
        n_train,
        n_test,
        "/".join(map(str, sides)),
        side,
        side,
        source["mean_path_length"],
    )
    sizes = f"{side}x{side}" if len(sides) == 1 else f"{sides[0]}x{sides[0]} to {side}x{side} (padded with walls)"
    scaled = " at the full side, scaled by area below" if len(sides) > 1 else ""
    desc = f"generated {sizes} mazes, unique shortest path >= {max(min_path, 2)} steps{scaled}, loops p={loops}"
    splits = {"train": split(test=False), "test": split(test=True)}
    return save_dataset(out_dir, _meta(side, desc, source), splits)


def build_from_csv(
    out_dir: str | Path, train_csv: str | Path, test_csv: str | Path, test_limit: int | None = None
) -> Path:
    """Build from Maze-Hard CSVs (1000 train, 1000 test 30x30 mazes); path lengths come from the answers."""
    (tq, ta, _), (eq, ea, _) = read_csv(train_csv), read_csv(test_csv, limit=test_limit)
    side = tq.shape[-1]
    if eq.shape[-1] != side:
        raise ValueError(f"train mazes are {side}x{side} but test mazes are {eq.shape[-1]}x{eq.shape[-1]}")
    steps = [(a == PATH).sum(axis=(1, 2)) + 1 for a in (ta, ea)]
    source: dict[str, object] = {"train_csv": str(train_csv), "test_csv": str(test_csv), "test_limit": test_limit}
    desc = f"Maze-Hard CSV: {len(tq)} train, {len(eq)} test {side}x{side} mazes"
    splits = {"train": _split(tq, ta, {"path_length": steps[0]}), "test": _split(eq, ea, {"path_length": steps[1]})}
    return save_dataset(out_dir, _meta(side, desc, source), splits)

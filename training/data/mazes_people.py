"""Mazes as people draw them: five classic generators, with or without the wall ring, loops, open rooms, doors.

`training.data.maze` makes one kind of maze (a depth-first "backtracker" without a ring, square). Mazes sent by
people come from libraries that draw them differently (issue 26): a solid wall ring, Prim's or Kruskal's long
spiky trees, Wilson's uniform spanning trees, open rooms, S and G as gaps in the ring, rectangles. A model that
saw one style fails on the others, so training mixes them all.

Drawing: a maze of mh x mw lattice cells is a (2*mh - 1) x (2*mw - 1) grid of cells at even coordinates and walls
between them; the ring adds one wall line on every side. An even side gets one extra wall line at the bottom
or right. Labels mark one shortest S->G path with 'o'. Training keeps only mazes whose shortest path is unique
(`unique=True`): with several, no single label is right, and a canonical tie-break (say "first neighbour up")
is not symmetric under the dihedral augmentation nor decidable locally. Held-out sets may allow several shortest
paths (`unique=False`); they must then be scored with `model.puzzles.maze.is_shortest_path_answer`, which
accepts any shortest path, not by comparing with the label.

For the size-agnostic `conv` model the mazes are laid into a square canvas one larger than the largest maze,
padded with walls: the model sees its grid as a torus, and the wall line keeps the maze from touching itself
across the seam.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from inference.canvas import canvas_for, canvas_sides
from model.puzzles.maze import GOAL, OPEN, PATH, START, WALL
from training.data.compiled import njit
from training.data.dataset import DatasetMeta, PuzzleSet, save_dataset
from training.data.maze import bfs

log = logging.getLogger(__name__)

GENERATORS = ("backtracker", "prim", "kruskal", "wilson", "hunt_and_kill")


@njit(cache=True)
def _link(grid, w, o, a, b, mw):  # type: ignore[no-untyped-def]
    """Open lattice cells a and b (adjacent) and the wall between them."""
    ra, ca, rb, cb = o + 2 * (a // mw), o + 2 * (a % mw), o + 2 * (b // mw), o + 2 * (b % mw)
    grid[ra * w + ca] = OPEN
    grid[rb * w + cb] = OPEN
    grid[((ra + rb) // 2) * w + (ca + cb) // 2] = OPEN


@njit(cache=True)
def _lattice_neighbours(v, mh, mw, out):  # type: ignore[no-untyped-def]
    """Fill `out` with the lattice neighbours of v (up, down, left, right); returns how many."""
    r, c, k = v // mw, v % mw, 0
    if r > 0:
        out[k] = v - mw
        k += 1
    if r < mh - 1:
        out[k] = v + mw
        k += 1
    if c > 0:
        out[k] = v - 1
        k += 1
    if c < mw - 1:
        out[k] = v + 1
        k += 1
    return k


@njit(cache=True)
def _carve(grid, w, o, mh, mw, kind):  # type: ignore[no-untyped-def]
    """A perfect maze (spanning tree of the lattice) by generator `kind` (an index into GENERATORS)."""
    m = mh * mw
    inside = np.zeros(m, dtype=np.bool_)
    nbs = np.empty(4, dtype=np.int64)
    opts = np.empty(4, dtype=np.int64)
    first = np.random.randint(0, m)
    inside[first] = True
    grid[(o + 2 * (first // mw)) * w + o + 2 * (first % mw)] = OPEN
    if kind == 0 or kind == 4:  # backtracker (DFS stack) / hunt-and-kill (walk, then scan for a restart)
        stack = np.empty(m, dtype=np.int64)
        stack[0], sp, cur = first, 1, first
        while True:
            k, j = _lattice_neighbours(cur, mh, mw, nbs), 0
            for i in range(k):
                if not inside[nbs[i]]:
                    opts[j] = nbs[i]
                    j += 1
            if j > 0:
                nb = opts[np.random.randint(0, j)]
                _link(grid, w, o, cur, nb, mw)
                inside[nb] = True
                stack[sp] = nb
                sp += 1
                cur = nb
                continue
            if kind == 0:
                sp -= 1
                if sp == 0:
                    break
                cur = stack[sp - 1]
                continue
            cur = -1  # hunt: the first outside cell (row-major) next to the tree joins it, and the walk goes on
            for v in range(m):
                if inside[v]:
                    continue
                k, j = _lattice_neighbours(v, mh, mw, nbs), 0
                for i in range(k):
                    if inside[nbs[i]]:
                        opts[j] = nbs[i]
                        j += 1
                if j > 0:
                    _link(grid, w, o, v, opts[np.random.randint(0, j)], mw)
                    inside[v] = True
                    cur = v
                    break
            if cur < 0:
                break
    elif kind == 1:  # Prim: grow from a random frontier cell, joined to a random tree neighbour
        frontier = np.empty(m, dtype=np.int64)
        on_frontier = np.zeros(m, dtype=np.bool_)
        nf, cur = 0, first
        while True:
            k = _lattice_neighbours(cur, mh, mw, nbs)
            for i in range(k):
                if not inside[nbs[i]] and not on_frontier[nbs[i]]:
                    on_frontier[nbs[i]] = True
                    frontier[nf] = nbs[i]
                    nf += 1
            if nf == 0:
                break
            pick = np.random.randint(0, nf)
            cur = frontier[pick]
            nf -= 1
            frontier[pick] = frontier[nf]
            k, j = _lattice_neighbours(cur, mh, mw, nbs), 0
            for i in range(k):
                if inside[nbs[i]]:
                    opts[j] = nbs[i]
                    j += 1
            _link(grid, w, o, cur, opts[np.random.randint(0, j)], mw)
            inside[cur] = True
    elif kind == 2:  # Kruskal: every lattice edge in random order, kept when it joins two components
        parent = np.arange(m)
        edges = np.empty((2 * m, 2), dtype=np.int64)
        ne = 0
        for v in range(m):
            if v % mw < mw - 1:
                edges[ne, 0], edges[ne, 1] = v, v + 1
                ne += 1
            if v // mw < mh - 1:
                edges[ne, 0], edges[ne, 1] = v, v + mw
                ne += 1
        for i in range(ne - 1, 0, -1):
            j = np.random.randint(0, i + 1)
            a, b = edges[i, 0], edges[i, 1]
            edges[i, 0], edges[i, 1] = edges[j, 0], edges[j, 1]
            edges[j, 0], edges[j, 1] = a, b
        for i in range(ne):
            a, b = edges[i, 0], edges[i, 1]
            while parent[a] != a:
                a = parent[a]
            while parent[b] != b:
                b = parent[b]
            if a != b:
                parent[a] = b
                _link(grid, w, o, edges[i, 0], edges[i, 1], mw)
    else:  # Wilson: loop-erased random walks from each outside cell until they hit the tree (uniform trees)
        nxt = np.full(m, -1, dtype=np.int64)
        for start in np.random.permutation(m):
            if inside[start]:
                continue
            cur = start
            while not inside[cur]:  # the last exit from each cell wins, which erases the loops
                k = _lattice_neighbours(cur, mh, mw, nbs)
                nxt[cur] = nbs[np.random.randint(0, k)]
                cur = nxt[cur]
            cur = start
            while not inside[cur]:
                _link(grid, w, o, cur, nxt[cur], mw)
                inside[cur] = True
                cur = nxt[cur]


@njit(cache=True)
def _make(seed, h, w, ring, kind, loops, rooms, doors, far, unique, question, label):  # type: ignore[no-untyped-def]
    """One maze into `question`/`label` (flat h*w); returns the path length in steps, or -1 if no S/G pair fits."""
    np.random.seed(seed)
    o = 1 if ring else 0
    mh, mw = (h - 2 * o + 1) // 2, (w - 2 * o + 1) // 2
    grid = np.full(h * w, WALL, dtype=np.uint8)
    _carve(grid, w, o, mh, mw, kind)
    for r in range(o, o + 2 * mh - 1):  # loops: inner walls between two lattice cells, each opened with p=loops
        for c in range(o, o + 2 * mw - 1):
            if (r - o + c - o) % 2 == 1 and grid[r * w + c] == WALL and np.random.random() < loops:
                grid[r * w + c] = OPEN
    for _ in range(rooms):  # open rooms of 2..3 x 2..3 lattice cells: several shortest paths cross them
        rh, rw = min(mh, np.random.randint(2, 4)), min(mw, np.random.randint(2, 4))
        r0, c0 = np.random.randint(0, mh - rh + 1), np.random.randint(0, mw - rw + 1)
        for r in range(o + 2 * r0, o + 2 * (r0 + rh - 1) + 1):
            for c in range(o + 2 * c0, o + 2 * (c0 + rw - 1) + 1):
                grid[r * w + c] = OPEN
    # Endpoints: lattice cells, or with doors the ring cells in front of edge lattice cells (gaps in the ring).
    ends = np.empty(2 * (mh + mw) + mh * mw, dtype=np.int64)
    n_ends = 0
    if doors and ring:
        bottom, right = 2 * mh, 2 * mw  # the ring lines right after the lattice (an even side has one more line)
        for i in range(mh):
            ends[n_ends], ends[n_ends + 1] = (o + 2 * i) * w, (o + 2 * i) * w + right
            n_ends += 2
        for j in range(mw):
            ends[n_ends], ends[n_ends + 1] = o + 2 * j, bottom * w + o + 2 * j
            n_ends += 2
        for i in range(n_ends):  # doors are dead-end stubs off the ring: opening them all adds no shortcut
            grid[ends[i]] = OPEN
    else:
        for i in range(mh):
            for j in range(mw):
                ends[n_ends] = (o + 2 * i) * w + o + 2 * j
                n_ends += 1
    dist = np.empty(h * w, dtype=np.int64)
    ways = np.empty(h * w, dtype=np.int64)
    queue = np.empty(h * w, dtype=np.int64)
    s = ends[np.random.randint(0, n_ends)]
    if np.random.random() < 0.5:  # half the time start from the end farthest from a random one: long paths
        bfs(grid, h, w, s, dist, ways, queue)
        for i in range(n_ends):
            if dist[ends[i]] > dist[s]:
                s = ends[i]
    bfs(grid, h, w, s, dist, ways, queue)
    longest = 0
    for i in range(n_ends):
        longest = max(longest, dist[ends[i]])
    threshold = max(2, int(far * longest))
    count = 0
    for i in range(n_ends):
        if dist[ends[i]] >= threshold and (ways[ends[i]] == 1 or not unique):
            count += 1
    if count == 0:
        return -1
    pick, g = np.random.randint(0, count), -1
    for i in range(n_ends):
        if dist[ends[i]] >= threshold and (ways[ends[i]] == 1 or not unique):
            if pick == 0:
                g = ends[i]
                break
            pick -= 1
    if doors and ring:
        for i in range(n_ends):
            grid[ends[i]] = WALL
        grid[s], grid[g] = OPEN, OPEN
    question[:] = grid
    question[s], question[g] = START, GOAL
    label[:] = question
    v = g
    while dist[v] > 1:  # walk back from G; with a unique shortest path every closer neighbour is on it
        r, c = v // w, v % w
        for k in range(4):
            nr, nc = r + (k == 1) - (k == 0), c + (k == 3) - (k == 2)
            if 0 <= nr < h and 0 <= nc < w and dist[nr * w + nc] == dist[v] - 1:
                v = nr * w + nc
                break
        label[v] = PATH
    return dist[g]


def generate(
    n: int,
    height: int,
    width: int | None = None,
    generator: str = "backtracker",
    ring: bool = True,
    loops: float = 0.0,
    rooms: int = 0,
    doors: bool = False,
    far: float = 0.6,
    unique: bool = True,
    seed: int = 0,
    max_tries: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` mazes of one style and size: (questions, labels) uint8 [n, height, width] and path lengths [n].

    Args:
        generator: one of GENERATORS (the perfect maze before loops and rooms).
        ring: draw the solid wall ring; without it the lattice touches the grid's edge.
        loops: share of the inner walls opened after carving (0 keeps a tree: one route between any two cells).
        rooms: open rooms of 2..3 x 2..3 lattice cells knocked in.
        doors: with a ring, S and G are gaps in the ring instead of lattice cells.
        far: G is at least this share of the longest distance from S among the candidate ends.
        unique: keep only S/G pairs joined by exactly one shortest path (training labels).
    """
    width = width or height
    if min(height, width) < 3 + 2 * ring:
        raise ValueError(f"a {height}x{width} maze {'with' if ring else 'without'} a ring is too small")
    kind = GENERATORS.index(generator)
    questions = np.zeros((n, height * width), np.uint8)
    labels = np.zeros((n, height * width), np.uint8)
    lengths = np.zeros(n, np.int64)
    seeds = np.random.SeedSequence([seed, height, width, kind]).generate_state(n * max_tries) >> 1
    tries = 0
    for i in range(n):
        while True:
            if tries >= len(seeds):
                raise RuntimeError(f"made only {i} of {n} {generator} mazes {height}x{width} in {tries} tries")
            length = _make(
                int(seeds[tries]), height, width, ring, kind, loops, rooms, doors, far, unique, questions[i], labels[i]
            )
            tries += 1
            if length > 0:
                lengths[i] = length
                break
    return questions.reshape(n, height, width), labels.reshape(n, height, width), lengths


def draw_styles(
    n: int, min_side: int, max_side: int, loops_max: float, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Random styles for a mixed set: generator, ring, sides (half square, half rectangles), loops, rooms, doors."""
    styles = []
    for _ in range(n):
        ring = bool(rng.random() < 0.5)
        height = int(rng.integers(max(min_side, 3 + 2 * ring), max_side + 1))
        width = height if rng.random() < 0.5 else int(rng.integers(max(min_side, 3 + 2 * ring), max_side + 1))
        generator = GENERATORS[int(rng.integers(len(GENERATORS)))]
        styles.append(
            dict(
                generator=generator,
                ring=ring,
                height=height,
                width=width,
                **_texture(height, width, ring, loops_max, rng),
            )
        )
    return styles


def _texture(height: int, width: int, ring: bool, loops_max: float, rng: np.random.Generator) -> dict[str, Any]:
    """A random style's loops, open rooms and doors: perfect in 40% of mazes, rooms in 30%, doors in 30% of ringed
    ones."""
    cells = ((height + 1) // 2) * ((width + 1) // 2)
    return dict(
        loops=0.0 if rng.random() < 0.4 else float(rng.uniform(0.0, loops_max)),
        rooms=0 if rng.random() < 0.7 else int(rng.integers(1, 2 + cells // 24)),
        doors=ring and bool(rng.random() < 0.3),
    )


def held_out_styles(n: int, height: int, width: int, ring: bool, seed: int) -> list[dict[str, Any]]:
    """The style of each maze `held_out` draws: every generator in turn, the loops, rooms and doors of
    `draw_styles`, and the generator's seed. Exposed so a measurement can say which kinds of maze fail."""
    rng = np.random.default_rng([seed, height, width, int(ring)])
    styles = []
    for i in range(n):
        texture = _texture(height, width, ring, 0.2, rng)
        seed_i = int(rng.integers(2**31))
        styles.append(dict(generator=GENERATORS[i % len(GENERATORS)], ring=ring, seed=seed_i, **texture))
    return styles


def held_out(n: int, height: int, width: int, ring: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` mazes of one size for measuring extrapolation (`held_out_styles`), with unique shortest paths;
    (questions, labels) uint8 [n, height, width]."""
    questions = np.zeros((n, height, width), np.uint8)
    labels = np.zeros((n, height, width), np.uint8)
    for i, style in enumerate(held_out_styles(n, height, width, ring, seed)):
        q, a, _ = generate(1, height, width, **style)
        questions[i], labels[i] = q[0], a[0]
    return questions, labels


def place(grids: list[np.ndarray], canvas: int, fill: int) -> np.ndarray:
    """Lay [h, w] grids into the top-left of canvas x canvas ones filled with `fill` (walls for questions, 0 for
    labels so the padding is not scored)."""
    out = np.full((len(grids), canvas, canvas), fill, dtype=np.uint8)
    for i, g in enumerate(grids):
        out[i, : g.shape[0], : g.shape[1]] = g
    return out


def build(
    out_dir: str | Path,
    n_train: int,
    n_test: int,
    max_side: int = 15,
    min_side: int = 5,
    loops_max: float = 0.2,
    seed: int = 0,
    min_canvas: int = 0,
) -> Path:
    """A mixed dataset of people-style mazes (every generator, ring or not, square or not, loops, rooms, doors)
    with sides min_side..max_side, each laid into a (max_side + 1)-square canvas of walls; returns its directory.

    With `min_canvas`, each maze goes instead on the smallest canvas of `inference.canvas.canvas_sides(min_canvas,
    max_side)` that holds it with its wall margin, as the server lays a maze out, and is stored in the top-left
    corner of the largest one with its own canvas in the `canvas` extra (`training.sampler` batches one canvas at
    a time and cuts it out): a 9x9 maze among 31x31 ones costs a 16x16 step, not a 32x32 one.

    Every maze has a unique shortest path. Duplicates are dropped so no test maze is also a training maze.
    """
    canvases = canvas_sides(min_canvas, max_side) if min_canvas else [max_side + 1]
    canvas = canvases[-1]  # the storage canvas
    rng = np.random.default_rng(seed)
    want = n_train + n_test
    styles = draw_styles(want + want // 4 + 16, min_side, max_side, loops_max, rng)
    questions, labels, extras = [], [], []
    for i, style in enumerate(styles):
        q, a, lengths = generate(1, seed=int(rng.integers(2**31)), far=0.6, **style)
        questions.append(q[0])
        labels.append(a[0])
        extras.append((int(lengths[0]), style["height"], style["width"], int(style["ring"]), i))
    q_all, a_all = place(questions, canvas, WALL), place(labels, canvas, 0)
    flat = np.ascontiguousarray(q_all.reshape(len(q_all), -1))
    _, first = np.unique(flat.view(np.dtype((np.void, flat.shape[1]))), return_index=True)
    keep = np.sort(first)[:want]
    if len(keep) < want:
        raise RuntimeError(f"only {len(keep)} distinct mazes of sides {min_side}..{max_side}, {want} needed")
    table = np.array(extras, dtype=np.int64)[keep]
    kinds = np.array([GENERATORS.index(styles[i]["generator"]) for i in table[:, 4]], dtype=np.int32)
    bucketed: dict[str, np.ndarray] = {}  # each maze's own canvas, only when there are several
    if min_canvas:
        longest = np.maximum(table[:, 1], table[:, 2])
        bucketed["canvas"] = np.array([canvas_for(int(side), min_canvas, max_side) for side in longest], np.int16)

    def split(rows: np.ndarray) -> PuzzleSet:
        n = len(rows)
        return PuzzleSet(
            inputs=q_all[keep[rows]].reshape(n, -1),
            labels=a_all[keep[rows]].reshape(n, -1),
            puzzle_ids=np.zeros(n, dtype=np.int32),
            groups=np.arange(n, dtype=np.int32),
            extras={
                "path_length": table[rows, 0].astype(np.int32),
                "height": table[rows, 1].astype(np.int32),
                "width": table[rows, 2].astype(np.int32),
                "ring": table[rows, 3].astype(np.int32),
                "generator": kinds[rows],
                **{name: values[rows] for name, values in bucketed.items()},
            },
        )

    rows = np.arange(want)
    source: dict[str, object] = {
        "generator": "training.data.mazes_people.build",
        "seed": seed,
        "min_side": min_side,
        "max_side": max_side,
        "canvas": canvas,
        **({"canvases": canvases} if min_canvas else {}),
        "loops_max": loops_max,
        "generators": list(GENERATORS),
        "mean_path_length": float(table[:, 0].mean()) if want else 0.0,
    }
    desc = (
        f"people-style mazes, sides {min_side}..{max_side} (square and rectangular, with and without the wall "
        f"ring, {len(GENERATORS)} generators, loops up to p={loops_max}, open rooms, doors), unique shortest "
        f"paths, in a {canvas}x{canvas} wall canvas"
        if not min_canvas
        else f"paths, each in the smallest of the {'/'.join(map(str, canvases))} wall canvases that holds it"
    )
    log.info("%s: %d train / %d test, mean path %.1f", desc, n_train, n_test, source["mean_path_length"])
    meta = DatasetMeta("maze", 6, canvases[0] ** 2, 1, "dihedral", desc, source)  # the model's own: the smallest
    return save_dataset(out_dir, meta, {"train": split(rows[:n_train]), "test": split(rows[n_train:])})

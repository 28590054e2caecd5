"""Mazes: parse request grids, pad them to the model's square, decode the marked path, check it is a shortest one.

Tokens follow `TinyRecursiveModels:dataset/build_maze_dataset.py`: 0 PAD, 1 '#', 2 ' ', 3 'S', 4 'G', 5 'o'. A
model is trained on one side N (30 for Maze-Hard); a smaller maze is served by padding it with walls on the bottom
and right, which cannot create a new path, and the prediction is cropped back before it is returned.

Most generators draw a maze inside a solid ring of walls. The ring carries no information (nothing can pass it),
so a maze that has one is solved without it, as a maze two cells smaller: the shape the shipped models were
trained on, and it fits a model two sizes smaller. The answer puts the ring back as it was given.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from model.puzzles.base import Codec, PuzzleError

CHARS = "\0# SGo"  # token id -> character; index 0 (PAD) never appears in a grid
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
_QUESTION_CHARS = "# SG."  # '.' is an open cell too, as many maze files write it; the answer keeps it
_TOKEN_OF = {ch: i for i, ch in enumerate(CHARS) if i}
# Token -> character for decoding; anything outside the alphabet (PAD, junk) shows as '?', which verify rejects.
_DECODE = np.array(["?", "#", " ", "S", "G", "o"])


def chars_to_tokens(rows: list[str]) -> np.ndarray:
    """uint8 token grid [h, w] from already validated rows over '# SGo' ('.' reads as ' ', an open cell)."""
    lookup = np.zeros(128, dtype=np.uint8)
    for ch, tok in _TOKEN_OF.items():
        lookup[ord(ch)] = tok
    lookup[ord(".")] = OPEN
    codes = np.array([[ord(ch) for ch in row] for row in rows], dtype=np.int64)
    return lookup[codes]


def tokens_to_chars(grid: np.ndarray) -> list[str]:
    """Rows of characters for a token grid [h, w]."""
    g = np.asarray(grid, dtype=np.int64)
    return ["".join(row) for row in _DECODE[np.where((g >= 0) & (g < len(_DECODE)), g, 0)]]


def bfs_distances(grid: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """4-connected distances from `start` over non-wall cells of a token grid; -1 where unreachable."""
    h, w = grid.shape
    open_ = (grid != WALL) & (grid != 0)
    dist = np.full((h, w), -1, dtype=np.int32)
    dist[start] = 0
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        d = dist[r, c] + 1
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < h and 0 <= nc < w and open_[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = d
                queue.append((nr, nc))
    return dist


def has_ring(grid: np.ndarray) -> bool:
    """Whether a token grid's outermost rows and columns are all walls (S and G then lie inside)."""
    h, w = grid.shape
    if h < 3 or w < 3:
        return False
    return bool((grid[[0, -1], :] == WALL).all() and (grid[:, [0, -1]] == WALL).all())


def inside(grid: np.ndarray) -> np.ndarray:
    """The part of a maze the model solves: inside its wall ring when it has one, else all of it."""
    return grid[1:-1, 1:-1] if has_ring(grid) else grid


def _outer_cells(raw: Any) -> set[str] | None:
    """The characters on a raw request maze's outermost rows and columns, or None when `raw` is not a list of at
    least three strings of at least three characters (too small to have a ring)."""
    if not isinstance(raw, list) or len(raw) < 3 or not all(isinstance(row, str) and len(row) >= 3 for row in raw):
        return None
    return set(raw[0]) | set(raw[-1]) | {row[0] for row in raw} | {row[-1] for row in raw}


def _longest(raw: Any) -> int | None:
    if not isinstance(raw, list) or not raw or not all(isinstance(row, str) for row in raw):
        return None
    return max(len(raw), max(len(row) for row in raw))


def solved_side(raw: Any) -> int | None:
    """The longer side of the part of a raw request maze that is solved (two less with a solid wall ring, which is
    taken off), or None when `raw` is not a list of strings; routing needs it before the maze is parsed."""
    longest = _longest(raw)
    return None if longest is None else longest - 2 * (_outer_cells(raw) == {"#"})


def drawn_side(raw: Any) -> int | None:
    """The side routing compares models at: the longer side inside the wall ring whenever the maze is drawn with
    one, doors included (S or G set in the ring, as many generators draw entrance and exit), else the whole side.

    A maze with doors keeps its ring (S and G are on it) and is solved at its whole size, but it is a ring-drawn
    maze: the held-out records routing reads (`server.registry.measured_maze_accuracy`) count such mazes among the
    ring-drawn ones, by the side inside the ring. Keyed by its whole side it would go where unbordered mazes of
    that size do best, to a fixed-size model that never saw a ring."""
    longest = _longest(raw)
    outer = _outer_cells(raw)
    return None if longest is None else longest - 2 * (outer is not None and outer <= {"#", "S", "G"})


class Maze(np.ndarray):  # type: ignore[type-arg]
    """A parsed maze: its token grid [h, w], which also remembers the rows exactly as they were given.

    Open cells may be written ' ' or '.'; the answer must be those rows with only open cells turned 'o', so the
    codec needs the characters back. Anything derived from a Maze (a slice, a copy, arithmetic) is a plain grid
    that has forgotten them, so `given` is only ever read from the object `MazeCodec.parse` returned.
    """

    given: tuple[str, ...] | None

    def __array_finalize__(self, obj: Any) -> None:
        self.given = None

    @classmethod
    def of(cls, rows: list[str]) -> Maze:
        maze = chars_to_tokens(rows).view(cls)
        maze.given = tuple(rows)
        return maze


def _as_tokens(grid: np.ndarray | list[str]) -> np.ndarray:
    """Helpers take a token grid, or rows of characters as a convenience for callers holding raw mazes."""
    return chars_to_tokens(grid) if isinstance(grid, list) else np.asarray(grid)


def _find(grid: np.ndarray, token: int) -> tuple[int, int]:
    r, c = np.argwhere(grid == token)[0]
    return int(r), int(c)


def shortest_path(grid: np.ndarray | list[str]) -> list[tuple[int, int]] | None:
    """Cells of one shortest S->G path (both ends included), or None when G is unreachable.

    Walks back from G choosing the first neighbour one step closer in (up, down, left, right) order, so the result
    is deterministic even where several shortest paths exist.
    """
    grid = _as_tokens(grid)
    start, goal = _find(grid, START), _find(grid, GOAL)
    dist = bfs_distances(grid, start)
    if dist[goal] < 0:
        return None
    h, w = grid.shape
    path = [goal]
    r, c = goal
    while (r, c) != start:
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < h and 0 <= nc < w and dist[nr, nc] == dist[r, c] - 1:
                r, c = nr, nc
                break
        path.append((r, c))
    return path[::-1]


def count_shortest_paths(grid: np.ndarray | list[str], cap: int = 2) -> int:
    """Number of distinct shortest S->G paths, saturating at `cap` (0 when unreachable)."""
    grid = _as_tokens(grid)
    start, goal = _find(grid, START), _find(grid, GOAL)
    dist = bfs_distances(grid, start)
    if dist[goal] < 0:
        return 0
    ways = np.zeros(dist.shape, dtype=np.int64)
    ways[start] = 1
    h, w = grid.shape
    for flat in np.argsort(dist, axis=None, kind="stable"):
        r, c = divmod(int(flat), w)
        if dist[r, c] <= 0:
            continue
        total = 0
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < h and 0 <= nc < w and dist[nr, nc] == dist[r, c] - 1:
                total += ways[nr, nc]
        ways[r, c] = min(total, cap)
    return int(ways[goal])


def mark_path(grid: np.ndarray) -> np.ndarray:
    """The label for a question grid: a copy with the inner cells of a shortest path set to 'o'."""
    path = shortest_path(grid)
    if path is None:
        raise ValueError("maze has no path from S to G")
    out = np.array(grid, dtype=np.uint8, copy=True)
    for r, c in path[1:-1]:
        out[r, c] = PATH
    return out


def project(question: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The answer a prediction gives for `question`: the question with only its open cells that the prediction
    marks 'o' turned into 'o'. Walls, S and G are the user's and never change, whatever the model predicts; a
    prediction that needs them changed simply is not a path, and the rule check says so."""
    predicted = np.asarray(predicted)
    return np.where((question == OPEN) & (predicted == PATH), PATH, question).astype(predicted.dtype)


def is_shortest_path_answer(question: np.ndarray, answer: np.ndarray) -> bool:
    """True iff `answer` is `question` with some open cells turned 'o' that form a shortest S->G path."""
    if answer.shape != question.shape:
        return False
    marked = answer == PATH
    same = (answer == question) | (marked & (question == OPEN))
    if not same.all():
        return False
    start, goal = _find(question, START), _find(question, GOAL)
    shortest = bfs_distances(question, start)[goal]
    if shortest < 0 or int(marked.sum()) != shortest - 1:
        return False
    # A connected set of exactly shortest+1 cells holding S and G can only be a shortest path.
    only_path = np.where(marked | (question == START) | (question == GOAL), OPEN, WALL)
    return bool(bfs_distances(only_path, start)[goal] == shortest)


class MazeCodec(Codec):
    """Codec for mazes that fit the model's N x N canvas, square or not; puzzles are `Maze` grids at their own size.

    `margin` walls are kept below and to the right of every maze. A size-agnostic (`conv`) model mixes cells on a
    torus, so without a wall row and column between a maze's last and first rows and columns, a ring-free maze
    would wrap into itself; the fixed-size models read the canvas as a plane and need none.
    """

    family = "maze"
    vocab_size = 6

    def __init__(self, seq_len: int = 900, margin: int = 0) -> None:
        super().__init__(seq_len)
        self.side = math.isqrt(seq_len)
        self.margin = margin
        if self.side * self.side != seq_len or self.side < 2:
            raise ValueError(f"maze seq_len must be a square (900 for 30x30), got {seq_len}")

    @property
    def fits(self) -> int:
        """The longest side of a maze (inside its wall ring, if any) this canvas takes."""
        return self.side - self.margin

    def parse(self, raw: Any) -> Maze:
        """Validate a maze: equal-length strings over '#', ' ' or '.', 'S', 'G', with a path from S to G."""
        if not isinstance(raw, list) or not raw:
            raise PuzzleError("grid must be a non-empty list of strings over '#', ' ' or '.', 'S', 'G'")
        for r, row in enumerate(raw):
            if not isinstance(row, str):
                raise PuzzleError(f"grid[{r}] is not a string", field=f"grid[{r}]")
        width = len(raw[0])
        for r, row in enumerate(raw):
            if len(row) != width:
                raise PuzzleError(
                    f"grid[{r}] has {len(row)} characters, expected {width} (as grid[0]; a maze is a rectangle)",
                    field=f"grid[{r}]",
                )
        if width == 0:
            raise PuzzleError("grid rows are empty", field="grid[0]")
        for r, row in enumerate(raw):
            for c, ch in enumerate(row):
                if ch not in _QUESTION_CHARS:
                    raise PuzzleError(
                        f"grid[{r}][{c}] is {ch!r}, expected one of '#', ' ', '.', 'S', 'G'", field=f"grid[{r}][{c}]"
                    )
        grid = Maze.of(raw)
        h, w = inside(grid).shape
        if max(h, w) > self.fits:
            ring = f" ({h}x{w} inside its wall ring)" if (h, w) != grid.shape else ""
            raise PuzzleError(
                f"maze is {grid.shape[0]}x{grid.shape[1]}{ring}, larger than this model's {self.fits}x{self.fits}"
            )
        for name, tok in (("S", START), ("G", GOAL)):
            n = int((grid == tok).sum())
            if n == 0:
                raise PuzzleError(f"maze has no {name}")
            if n > 1:
                raise PuzzleError(f"maze has {n} {name}s")
        if shortest_path(grid) is None:
            raise PuzzleError("maze has no path from S to G")
        return grid

    def encode(self, puzzle: np.ndarray) -> np.ndarray:
        padded = np.full((self.side, self.side), WALL, dtype=np.uint8)
        solved = inside(puzzle)
        h, w = solved.shape
        padded[:h, :w] = solved
        return padded.reshape(-1)

    def decode(self, tokens: np.ndarray, puzzle: np.ndarray) -> list[str]:
        """The maze as given (its wall ring included, open cells in the characters given), with the predicted
        path's open cells marked 'o' (`project`)."""
        solved = inside(puzzle)
        h, w = solved.shape
        grid = np.asarray(tokens)[: self.seq_len].reshape(self.side, self.side)[:h, :w]
        answer = np.array(puzzle, copy=True)
        if solved.shape == puzzle.shape:
            answer = project(solved, grid)
        else:
            answer[1:-1, 1:-1] = project(solved, grid)
        rows = tokens_to_chars(answer)
        given = getattr(puzzle, "given", None)
        if given is None:
            return rows
        return [
            "".join(g if g == "." and a == " " else a for g, a in zip(gr, ar, strict=True))
            for gr, ar in zip(given, rows, strict=True)
        ]

    def verify(self, puzzle: np.ndarray, answer: Any) -> bool:
        """True iff `answer` (rows of '# SGo', '.' as ' ') marks a shortest S->G path with 'o'; malformed answers are
        False."""
        h, w = puzzle.shape
        if not isinstance(answer, list) or len(answer) != h:
            return False
        if not all(isinstance(row, str) and len(row) == w and set(row) <= set("# .SGo") for row in answer):
            return False
        return is_shortest_path_answer(puzzle, chars_to_tokens(answer))

    def settle(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        # The padding around a smaller maze is walls in the input, so whatever is predicted there goes too.
        return project(np.asarray(inputs), np.asarray(answers))

    def check_tokens(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        n, side = len(inputs), self.side
        questions = np.asarray(inputs)[:, : self.seq_len].reshape(n, side, side).astype(np.uint8)
        predicted = np.asarray(answers)[:, : self.seq_len].reshape(n, side, side)
        return np.array([is_shortest_path_answer(q, project(q, p)) for q, p in zip(questions, predicted, strict=True)])

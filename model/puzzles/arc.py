"""ARC tasks: validation of the JSON task shape and the reference token layout of one grid.

Token layout (TinyRecursiveModels `build_arc_dataset.py`, TRM_REFERENCE §3.2 and §9): a grid of colours 0..9 sits
at the top-left of a side x side canvas as tokens colour+2 (2..11); PAD (0) fills the rest; EOS (1) marks the row
just below the grid (grid columns only) and the column just right of it (grid rows only), so the corner cell
diagonal to the grid stays PAD. A grid that reaches the canvas edge gets no EOS on that side. Training may translate
a grid (`offset`); inference never does, so a prediction is always read from the top-left corner.

A model's codec covers one test input per sequence. An ARC task may have several test inputs: `encode` encodes the
FIRST one (enough for the common single-test case), and callers that need all of them use `encode_test_inputs` or
`encode_grid` per input. There is no rule check for ARC, so `verify` returns None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from model.puzzles.base import PAD, Codec, PuzzleError

EOS = 1
COLOR_OFFSET = 2  # token = colour + 2, so colours 0..9 are tokens 2..11
NUM_COLORS = 10
MAX_SIDE = 30  # ARC grids are at most 30x30; the reference canvas is 30x30 = 900 tokens
MAX_CANVAS = 32
"""The largest canvas a size-agnostic model lays a task on: a 30x30 grid, its EOS border and padding to a
multiple of 8 (`inference.canvas.canvas_sides`)."""

Grid = list[list[int]]


@dataclass(frozen=True)
class ArcPair:
    """One example of a task; `output` is None for a test input whose answer is unknown (the serving case)."""

    input: np.ndarray  # uint8 [H, W], colours 0..9
    output: np.ndarray | None = None


@dataclass(frozen=True)
class ArcTask:
    """A validated ARC task: demonstration pairs and test inputs (answers optional)."""

    train: tuple[ArcPair, ...]
    test: tuple[ArcPair, ...]

    def pairs(self) -> tuple[ArcPair, ...]:
        """All examples, demonstrations first: the order in which augmentation hashes and data builders see them."""
        return self.train + self.test


def side_from_seq_len(seq_len: int, largest: int = MAX_SIDE) -> int:
    """Canvas side for a sequence length; ARC canvases are square and at most 30x30 (tiny test models use less),
    or `largest` (`MAX_CANVAS` for a size-agnostic model's canvases)."""
    side = math.isqrt(seq_len)
    if side * side != seq_len or not 1 <= side <= largest:
        raise ValueError(f"ARC needs a square seq_len with side 1..{largest}, got {seq_len}")
    return side


def _parse_grid(raw: Any, field: str, side: int) -> np.ndarray:
    """Validate one grid (list of equal-length int lists, values 0..9, each side 1..side) into uint8 [H, W]."""
    if not isinstance(raw, list):
        raise PuzzleError(f"{field} must be a list of rows, got {type(raw).__name__}", field)
    if not raw:
        raise PuzzleError(f"{field} has no rows", field)
    width = -1
    for r, row in enumerate(raw):
        if not isinstance(row, list):
            raise PuzzleError(f"{field}[{r}] must be a list of ints, got {type(row).__name__}", f"{field}[{r}]")
        if r == 0:
            width = len(row)
            if width == 0:
                raise PuzzleError(f"{field}[0] has no cells", f"{field}[0]")
        elif len(row) != width:
            raise PuzzleError(f"{field}[{r}] has {len(row)} cells, expected {width}", f"{field}[{r}]")
    if len(raw) > side or width > side:
        raise PuzzleError(f"ARC grid {len(raw)}x{width} exceeds {side}x{side}", field)
    for r, row in enumerate(raw):
        for c, value in enumerate(row):
            # bool is an int subclass; JSON true/false is not a colour.
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < NUM_COLORS:
                where = f"{field}[{r}][{c}]"
                raise PuzzleError(f"value {value!r} at {where}, expected 0..9", where)
    return np.array(raw, dtype=np.uint8)


def _parse_pairs(raw: Any, field: str, side: int, need_output: bool) -> tuple[ArcPair, ...]:
    if not isinstance(raw, list):
        raise PuzzleError(f"{field} must be a list of examples", field)
    pairs = []
    for i, example in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(example, dict):
            raise PuzzleError(f"{where} must be an object with 'input' and 'output'", where)
        if "input" not in example:
            raise PuzzleError(f"{where}.input is missing", f"{where}.input")
        grid = _parse_grid(example["input"], f"{where}.input", side)
        output = None
        if example.get("output") is not None:
            output = _parse_grid(example["output"], f"{where}.output", side)
        elif need_output:
            raise PuzzleError(f"{where}.output is missing", f"{where}.output")
        pairs.append(ArcPair(grid, output))
    return tuple(pairs)


def parse_task(raw: Any, side: int = MAX_SIDE, field: str = "task") -> ArcTask:
    """Validate a raw ARC task `{"train": [{"input", "output"}...], "test": [{"input", "output"?}...]}`.

    Errors are PuzzleErrors whose `field` is the JSON path of the fault ("task.train[1].output[2]"), so the HTTP
    layer can point at it. Demonstrations need outputs; test outputs are optional (unknown when serving).
    """
    if not isinstance(raw, dict):
        raise PuzzleError(f"{field} must be an object with 'train' and 'test'", field)
    train = _parse_pairs(raw.get("train", []), f"{field}.train", side, need_output=True)
    if not train:  # the demonstrations are the only statement of the task's rule
        raise PuzzleError("task has no demonstrations: train needs at least one input/output pair", f"{field}.train")
    if "test" not in raw:
        raise PuzzleError("task has no test inputs", f"{field}.test")
    test = _parse_pairs(raw["test"], f"{field}.test", side, need_output=False)
    if not test:
        raise PuzzleError("task has no test inputs", f"{field}.test")
    return ArcTask(train, test)


def needed_side(task: ArcTask) -> int:
    """The longest side a task's grids need: every given grid, and each test output as the demonstrations suggest.

    A size-agnostic model runs a task on a canvas chosen before the answer exists, so the canvas must already hold
    the output. When every demonstration scales a dimension by the same factor (3x3 -> 9x9) the test input's is
    scaled by it too; otherwise the largest given grid decides (a test output larger than every grid of its task
    and not a fixed multiple of its input is not foreseen, and the answer is clipped to the canvas).
    """
    given = [g.shape for pair in task.pairs() for g in (pair.input, pair.output) if g is not None]
    side = int(max(max(shape) for shape in given))
    for axis in (0, 1):
        ratios = {pair.output.shape[axis] / pair.input.shape[axis] for pair in task.train if pair.output is not None}
        if len(ratios) == 1 and (ratio := ratios.pop()) > 1:
            side = max(side, *(math.ceil(int(pair.input.shape[axis]) * ratio) for pair in task.test))
    return min(side, MAX_SIDE)


def encode_grid(grid: np.ndarray | Sequence[Sequence[int]], side: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Tokens uint8 [side*side] of one grid placed at `offset` (row, col) with the reference EOS border.

    Args:
        grid: colours 0..9, shape [H, W] with H, W <= side - offset.
        side: canvas side (30 for the reference models).
        offset: top-left position; (0, 0) except for the translation augmentation of the training split.
    """
    arr = np.asarray(grid, dtype=np.uint8)
    h, w = arr.shape
    r0, c0 = offset
    if r0 < 0 or c0 < 0 or r0 + h > side or c0 + w > side:
        raise PuzzleError(f"ARC grid {h}x{w} at offset {offset} exceeds {side}x{side}")
    canvas = np.full((side, side), PAD, dtype=np.uint8)
    canvas[r0 : r0 + h, c0 : c0 + w] = arr + COLOR_OFFSET
    if r0 + h < side:
        canvas[r0 + h, c0 : c0 + w] = EOS
    if c0 + w < side:
        canvas[r0 : r0 + h, c0 + w] = EOS
    return canvas.reshape(-1)


def crop_shape(tokens: np.ndarray, side: int) -> tuple[int, int]:
    """(rows, cols) of the largest-area top-left rectangle of colour tokens, as the reference evaluator's `_crop`.

    Row r may use only the columns that are colours in every row above it (the width shrinks at the first
    non-colour token and never grows back); among those staircase rectangles the one of largest area wins (the
    first on ties). A well-formed prediction (grid, then EOS border) yields exactly the grid; a noisy one still
    gives the best-supported rectangle rather than nothing.
    """
    canvas = np.asarray(tokens).reshape(side, side)
    is_color = (canvas >= COLOR_OFFSET) & (canvas < COLOR_OFFSET + NUM_COLORS)
    # Length of the colour prefix of every row, then the running minimum: the usable width for rows 0..r.
    prefix = np.where(is_color.all(axis=1), side, np.argmin(is_color, axis=1))
    widths = np.minimum.accumulate(prefix)
    areas = widths * np.arange(1, side + 1)
    best = int(np.argmax(areas))
    if areas[best] == 0:
        return 0, 0
    return best + 1, int(widths[best])


def decode_grid(tokens: np.ndarray, side: int) -> Grid:
    """Predicted tokens [side*side] -> the cropped grid of colours 0..9 as int lists; [] when nothing is a colour."""
    canvas = np.asarray(tokens).reshape(side, side)
    rows, cols = crop_shape(canvas, side)
    return (canvas[:rows, :cols].astype(np.int64) - COLOR_OFFSET).tolist()  # type: ignore[no-any-return]


class ArcCodec(Codec):
    """ARC on a side x side canvas (900 tokens for the reference models; any square up to 30x30 for tiny ones)."""

    family: ClassVar[str] = "arc"
    vocab_size: ClassVar[int] = 12  # PAD, EOS, colours 0..9

    def __init__(self, seq_len: int = MAX_SIDE * MAX_SIDE, margin: int = 0) -> None:
        super().__init__(seq_len)
        self.side = side_from_seq_len(seq_len, MAX_CANVAS if margin else MAX_SIDE)
        self.fits = min(self.side - margin, MAX_SIDE)
        """The longest grid side this canvas takes: all of it for the reference layout, where a grid may touch
        the edge; less the `margin` a size-agnostic model keeps between a grid and its wrapped copy."""

    def parse(self, raw: Any) -> ArcTask:
        return parse_task(raw, self.fits)

    def encode(self, puzzle: ArcTask) -> np.ndarray:
        """Tokens of the FIRST test input; see `encode_test_inputs` for tasks with several."""
        return encode_grid(puzzle.test[0].input, self.side)

    def encode_test_inputs(self, puzzle: ArcTask) -> np.ndarray:
        """Tokens uint8 [num_test, seq_len], one row per test input, in task order."""
        return np.stack([encode_grid(pair.input, self.side) for pair in puzzle.test])

    def decode(self, tokens: np.ndarray, puzzle: ArcTask) -> Grid:
        return decode_grid(tokens, self.side)

    def verify(self, puzzle: ArcTask, answer: Any) -> bool | None:
        """ARC has no rule to check an answer against; only the hidden test output can judge it."""
        return None

"""Sudoku: parse request grids, tokenise them exactly like the reference, decode predictions, check the rules.

Tokens follow `TinyRecursiveModels:dataset/build_sudoku_dataset.py`: every cell value is shifted by one, so
0 is PAD (never produced by a grid), 1 is a blank and 2..side+1 are the digits 1..side. The same codec serves the
9x9 paper models (seq_len 81, 3x3 boxes) and 4x4 toy models (seq_len 16, 2x2 boxes) used in fast tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from model.puzzles.base import Codec, PuzzleError

_COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def side_for_seq_len(seq_len: int) -> int:
    """Grid side for a model's sequence length; only square sides with square boxes (4x4, 9x9) make sense."""
    side = math.isqrt(seq_len)
    if side * side != seq_len or side not in (4, 9):
        raise ValueError(f"sudoku seq_len must be 81 (9x9) or 16 (4x4), got {seq_len}")
    return side


def encode_grids(grids: np.ndarray) -> np.ndarray:
    """Tokens [N, side*side] uint8 for value grids [N, side, side] (0 = blank): token = value + 1."""
    grids = np.asarray(grids)
    return (grids.reshape(len(grids), -1).astype(np.int16) + 1).astype(np.uint8)


def decode_tokens(tokens: np.ndarray, side: int = 9) -> np.ndarray:
    """Value grids [..., side, side] int8 from tokens [..., side*side]; anything but a digit token becomes 0."""
    t = np.asarray(tokens).astype(np.int16)
    values = np.where((t >= 2) & (t <= side + 1), t - 1, 0).astype(np.int8)
    return values.reshape(*values.shape[:-1], side, side)


def is_valid_solution(grids: np.ndarray, puzzles: np.ndarray | None = None) -> np.ndarray:
    """Rule check over a batch: every row, column and box a permutation of 1..side, agreeing with the givens.

    Args:
        grids: candidate solutions [..., side, side] of values (0 = blank, which never passes).
        puzzles: the questions, same shape; their non-zero cells must be kept. None skips that check.
    Returns:
        bool array of the leading shape ([] for a single grid): vectorised so evaluation can check a whole batch.
    """
    g = np.asarray(grids).astype(np.int64)
    side = g.shape[-1]
    box = math.isqrt(side)
    lead = g.shape[:-2]
    flat = g.reshape(-1, side, side)
    boxes = flat.reshape(-1, box, box, box, box).transpose(0, 1, 3, 2, 4).reshape(-1, side, side)
    target = np.arange(1, side + 1)
    ok = np.ones(len(flat), dtype=bool)
    for units in (flat, flat.transpose(0, 2, 1), boxes):
        ok &= (np.sort(units, axis=-1) == target).all(axis=(1, 2))
    if puzzles is not None:
        p = np.asarray(puzzles).astype(np.int64).reshape(-1, side, side)
        ok &= ((p == 0) | (p == flat)).all(axis=(1, 2))
    return ok.reshape(lead)


def _first_duplicate(units: np.ndarray) -> tuple[int, int, int] | None:
    """(unit, position of the repeat, digit) of the first repeated non-zero digit in [side, side] units."""
    for u, unit in enumerate(units):
        seen: set[int] = set()
        for pos, value in enumerate(unit):
            v = int(value)
            if v and v in seen:
                return u, pos, v
            seen.add(v)
    return None


def _count_word(n: int) -> str:
    return _COUNT_WORDS[n] if n < len(_COUNT_WORDS) else str(n)


class SudokuCodec(Codec):
    """Codec for side x side Sudoku (side 9 or 4) with sqrt(side) boxes; puzzles are int8 [side, side] grids."""

    family = "sudoku"
    vocab_size = 11

    def __init__(self, seq_len: int = 81) -> None:
        super().__init__(seq_len)
        self.side = side_for_seq_len(seq_len)
        self.box = math.isqrt(self.side)

    def parse(self, raw: Any) -> np.ndarray:
        """Validate a grid (list of int lists, or a digit string with '0'/'.' blanks) and check the givens."""
        grid = self._parse_string(raw) if isinstance(raw, str) else self._parse_rows(raw)
        self._check_givens(grid)
        return grid

    def _parse_string(self, raw: str) -> np.ndarray:
        # Whitespace is layout, not content: a grid pasted as 9 lines (or with spaced digits) reads the same.
        s, n = "".join(raw.split()), self.side * self.side
        if len(s) != n:
            raise PuzzleError(f"grid has {len(s)} characters other than whitespace, expected {n}")
        values = np.zeros(n, dtype=np.int8)
        for i, ch in enumerate(s):
            if ch in ".0":
                continue
            if not ("1" <= ch <= "9" and int(ch) <= self.side):
                raise PuzzleError(
                    f"grid character {i + 1} (row {i // self.side + 1}, column {i % self.side + 1}) is {ch!r}, "
                    f"expected a digit 1-{self.side}, '0' or '.'"
                )
            values[i] = int(ch)
        return values.reshape(self.side, self.side)

    def _parse_rows(self, raw: Any) -> np.ndarray:
        side = self.side
        if not isinstance(raw, list):
            raise PuzzleError(f"grid must be a {side}x{side} list of int lists or a {side * side}-character string")
        if len(raw) != side:
            raise PuzzleError(f"grid has {len(raw)} rows, expected {side}")
        grid = np.zeros((side, side), dtype=np.int8)
        for r, row in enumerate(raw):
            if not isinstance(row, list):
                raise PuzzleError(f"grid[{r}] is not a list", field=f"grid[{r}]")
            if len(row) != side:
                raise PuzzleError(f"grid[{r}] has {len(row)} cells, expected {side}", field=f"grid[{r}]")
            for c, v in enumerate(row):
                # bool is a subclass of int in Python, but `true` in a JSON grid is a client bug, not a 1.
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= side:
                    shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
                    raise PuzzleError(f"grid[{r}][{c}] is {shown}, expected 0..{side}", field=f"grid[{r}][{c}]")
                grid[r, c] = v
        return grid

    def _check_givens(self, grid: np.ndarray) -> None:
        """Reject givens that repeat a digit in a row, column or box: such a puzzle has no solution."""
        side, b = self.side, self.box
        boxes = grid.reshape(b, b, b, b).transpose(0, 2, 1, 3).reshape(side, side)
        for kind, units in (("row", grid), ("column", grid.T), ("box", boxes)):
            dup = _first_duplicate(units)
            if dup is None:
                continue
            u, pos, digit = dup
            if kind == "row":
                r, c = u, pos
            elif kind == "column":
                r, c = pos, u
            else:
                r, c = (u // b) * b + pos // b, (u % b) * b + pos % b
            count = int((units[u] == digit).sum())
            raise PuzzleError(f"{kind} {u + 1} has {_count_word(count)} {digit}s", field=f"grid[{r}][{c}]")

    def encode(self, puzzle: np.ndarray) -> np.ndarray:
        tokens: np.ndarray = encode_grids(np.asarray(puzzle)[None])[0]
        return tokens

    def decode(self, tokens: np.ndarray, puzzle: Any = None) -> list[list[int]]:
        """The predicted grid; with `puzzle`, its givens stand whatever was predicted in their cells."""
        grid = decode_tokens(np.asarray(tokens)[: self.seq_len], self.side)
        if puzzle is not None:
            given = np.asarray(puzzle)
            grid = np.where(given != 0, given, grid)
        return [[int(v) for v in row] for row in grid]

    def verify(self, puzzle: np.ndarray, answer: Any) -> bool:
        """True iff `answer` is a complete valid grid that keeps every given; malformed answers are simply False."""
        try:
            arr = np.asarray(answer)
        except (ValueError, TypeError):
            return False
        if arr.shape != (self.side, self.side) or arr.dtype.kind not in "iu":
            return False
        return bool(is_valid_solution(arr, np.asarray(puzzle)))

    def settle(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        inputs = np.asarray(inputs)
        settled: np.ndarray = np.where(inputs >= 2, inputs, answers)  # token 1 is a blank, 2.. a given digit
        return settled

    def check_tokens(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        puzzles = decode_tokens(np.asarray(inputs)[:, : self.seq_len], self.side)
        ok: np.ndarray = is_valid_solution(decode_tokens(np.asarray(answers)[:, : self.seq_len], self.side), puzzles)
        return ok

"""Puzzle codecs by family name: `get_codec("sudoku", 81)` is what the server and the data builders call."""

from __future__ import annotations

from model.puzzles.base import PAD, Codec, PuzzleError
from model.puzzles.maze import MazeCodec
from model.puzzles.sudoku import SudokuCodec

CODECS: dict[str, type[Codec]] = {"sudoku": SudokuCodec, "maze": MazeCodec}

# ARC lives in its own module with its own dependencies; when that module is absent (a trimmed install, or while
# it is being written) Sudoku and mazes keep working and only the "arc" family is missing.
try:
    from model.puzzles.arc import ArcCodec
except ModuleNotFoundError as exc:
    if exc.name != "model.puzzles.arc":
        raise
else:
    CODECS["arc"] = ArcCodec

__all__ = ["CODECS", "PAD", "Codec", "MazeCodec", "PuzzleError", "SudokuCodec", "get_codec"]


def get_codec(family: str, seq_len: int) -> Codec:
    """A codec bound to one model's sequence length (81 for 9x9 Sudoku, 900 for 30x30 mazes and ARC)."""
    if family not in CODECS:
        raise ValueError(f"unknown puzzle family {family!r}; known: {', '.join(sorted(CODECS))}")
    return CODECS[family](seq_len)

"""Example puzzles for `GET /puzzles/random` and the page's Generate: the shipped samples file, or a fresh maze of
any asked size."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

from model.puzzles.maze import tokens_to_chars
from server.solve import ApiError

log = logging.getLogger(__name__)
SAMPLE_KINDS = ("sudoku", "maze", "arc")


def fresh_maze(kind: str, side: int | None, width: int | None, limit: int) -> dict[str, Any]:
    """A maze drawn by one of `training.data.mazes_people`'s generators, inside a wall ring, at the asked size."""
    if kind != "maze":
        raise ApiError(422, "invalid_request", f"side and width make mazes; kind is {kind!r}", "side")
    height, width = side or width or 0, width or side or 0
    for name, value in (("side", height), ("width", width)):
        if not 5 <= value <= limit + 2:
            message = f"{name} is {value}: a generated maze has 5 to {limit + 2} cells a side, ring included"
            raise ApiError(422, "invalid_request", message, name)
    from training.data.mazes_people import GENERATORS, generate

    generator = GENERATORS[secrets.randbelow(len(GENERATORS))]
    questions, _, _ = generate(1, height, width, generator=generator, ring=True, seed=secrets.randbits(31))
    return {"puzzle": "maze", "grid": tokens_to_chars(questions[0]), "generator": generator}


def sample_side(sample: Any) -> int:
    """The side a model's square needs for a sample: a maze's row count, an ARC task's largest grid dimension."""
    if isinstance(sample, dict):  # ARC: {"task_id", "task": {"train": [...], "test": [...]}}
        grids = [g for pairs in sample["task"].values() for pair in pairs for g in pair.values()]
        return max(max(len(g), len(g[0]) if g else 0) for g in grids)
    return len(sample)


def load_samples(path: Path) -> dict[str, list[Any]]:
    """Example puzzles by kind; Sudoku strings become 9x9 int grids, the request format most clients send."""
    if not path.is_file():
        log.warning("%s not found: /puzzles/random will answer 404", path)
        return {}
    data = json.loads(path.read_text())
    out = {kind: list(data.get(kind, [])) for kind in SAMPLE_KINDS}
    out["sudoku"] = [[[int(ch) for ch in s[r * 9 : r * 9 + 9]] for r in range(9)] for s in out["sudoku"]]
    return out

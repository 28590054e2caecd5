"""Which canvas a size-agnostic model runs a puzzle on: one rule for the server's pools, training and evaluation.

A `conv` model has no size, but a batch needs one shape, so the server keeps a few canvas sizes and runs each
puzzle on the smallest that takes it with a one-cell margin (the mixer wraps around a torus, and the margin keeps
a grid's last row from touching its first: walls for a maze, the EOS border and padding for an ARC grid). The
model's pooled summary reads the whole canvas, so the canvas a puzzle lands on is part of the answer;
`training.evaluate` lays mazes out, and the ARC data builder lays tasks out, through this module, so training and
scoring see what the server runs.
"""

from __future__ import annotations

DEFAULT_MAX_MAZE_SIDE = 128
"""The longest maze side (inside its wall ring) served by default; the server's `max_maze_side` setting."""
MARGIN = 1
"""Wall rows and columns kept below and right of every maze on a canvas."""


def canvas_sides(trained: int, limit: int = DEFAULT_MAX_MAZE_SIDE) -> list[int]:
    """Canvas sides of a size-agnostic model's pools: its trained canvas, then steps of about 4/3 (multiples of
    8) up to the first that takes a `limit`-side maze and its margin.

    Each maze runs on the smallest canvas that takes it, so at most about 1.8x of a step's cells are padding, and
    the few pools keep the number of batch shapes (and of warm-ups, and of compiled graphs) small. A step costs
    more than its cell count once the batch's activations leave the CPU's caches (batch 64: 0.82 s on 16x16,
    12.3 s on 40x40), so a 30x30 maze, the paper's size, gets a 32x32 canvas rather than a 40x40 one.
    """
    last = -(-(limit + MARGIN) // 8) * 8
    sides = [trained]
    while sides[-1] - MARGIN < limit:
        sides.append(min(max(-(-sides[-1] * 4 // 3 // 8) * 8, sides[-1] + 8), last))
    return sides


def canvas_for(side: int, trained: int, limit: int = DEFAULT_MAX_MAZE_SIDE) -> int:
    """The canvas side a grid whose longer side (a maze's inside its ring) is `side` runs on; ValueError past
    `limit`."""
    if side > limit:
        raise ValueError(f"grid side {side} is over the limit of {limit}")
    return next(c for c in canvas_sides(trained, limit) if c - MARGIN >= side)

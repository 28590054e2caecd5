"""The 8 symmetries of the square (the dihedral group D4), numbered exactly as the reference code.

The reference (`TinyRecursiveModels:dataset/common.py: dihedral_transform`) numbers them 0 identity, 1-3
`np.rot90` with k=1..3, 4 `fliplr`, 5 `flipud`, 6 transpose, 7 `fliplr(rot90(g))` (the anti-transpose). ARC variant
names embed this id ("t<tid>"), so the numbering is part of the data format and must not change. Both functions act
on the last two axes, so one call transforms a single grid [H, W] or a batch [..., H, W].
"""

from __future__ import annotations

import math

import numpy as np

NUM_DIHEDRAL = 8

# inverse_tid = DIHEDRAL_INVERSE[tid]: rotations by 90 and 270 undo each other; flips and transposes are involutions.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def _check(grid: np.ndarray, tid: int) -> None:
    if not 0 <= tid < NUM_DIHEDRAL:
        raise ValueError(f"dihedral id {tid} out of range 0..7")
    if grid.ndim < 2:
        raise ValueError(f"dihedral transforms need at least 2 axes, got shape {grid.shape}")


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """Apply symmetry `tid` to the last two axes of `grid` (returns a view where numpy can)."""
    _check(grid, tid)
    axes = (-2, -1)
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid, axes=axes)
    if tid == 4:
        return np.flip(grid, axis=-1)
    if tid == 5:
        return np.flip(grid, axis=-2)
    if tid == 6:
        return np.swapaxes(grid, -2, -1)
    return np.flip(np.rot90(grid, k=1, axes=axes), axis=-1)


def inverse_dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """Undo `dihedral(grid, tid)`: maps a prediction on an augmented grid back to the original orientation."""
    _check(grid, tid)
    return dihedral(grid, DIHEDRAL_INVERSE[tid])


def dihedral_rows(tokens: np.ndarray, tids: np.ndarray) -> np.ndarray:
    """Apply symmetry tids[i] to row i of a batch of flattened square grids [B, N*N] (returns a new array)."""
    b, length = tokens.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"rows of {length} tokens are not square grids")
    grids = np.asarray(tokens).reshape(b, side, side)
    out = np.empty_like(grids)
    for tid in range(NUM_DIHEDRAL):  # 8 vectorised calls, one per symmetry, instead of B small ones
        rows = np.flatnonzero(tids == tid)
        if len(rows):
            out[rows] = dihedral(grids[rows], tid)
    return out.reshape(b, length)

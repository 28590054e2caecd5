"""The 8 symmetries keep the reference numbering and invert exactly, on single grids and batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.puzzles.dihedral import DIHEDRAL_INVERSE, dihedral, inverse_dihedral

G = np.arange(6).reshape(2, 3)
REFERENCE = [
    G,
    np.rot90(G, 1),
    np.rot90(G, 2),
    np.rot90(G, 3),
    np.fliplr(G),
    np.flipud(G),
    G.T,
    np.fliplr(np.rot90(G)),
]


@pytest.mark.parametrize("tid", range(8))
def test_ids_match_reference_numbering(tid: int) -> None:
    np.testing.assert_array_equal(dihedral(G, tid), REFERENCE[tid])


def test_inverse_table_matches_reference() -> None:
    assert DIHEDRAL_INVERSE == (0, 3, 2, 1, 4, 5, 6, 7)


@pytest.mark.parametrize("tid", range(8))
def test_batch_transforms_each_grid_on_last_two_axes(tid: int) -> None:
    batch = np.stack([G, G + 10, G + 20])[None]  # [1, 3, 2, 3]
    out = dihedral(batch, tid)
    for i in range(3):
        np.testing.assert_array_equal(out[0, i], REFERENCE[tid] + 10 * i)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6))), st.integers(0, 7))
def test_inverse_undoes_transform(grid: np.ndarray, tid: int) -> None:
    np.testing.assert_array_equal(inverse_dihedral(dihedral(grid, tid), tid), grid)


def test_rejects_bad_id_and_1d_input() -> None:
    with pytest.raises(ValueError, match="out of range"):
        dihedral(G, 8)
    with pytest.raises(ValueError, match="2 axes"):
        dihedral(np.arange(3), 1)

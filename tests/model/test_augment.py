"""ARC variants: exact inversion, reference naming, de-duplication, and (count, mean q) voting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.puzzles.arc import parse_task
from model.puzzles.augment import (
    IDENTITY,
    Variant,
    apply_variant,
    invert_variant,
    make_variants,
    parse_variant_name,
    random_variant,
    task_hash,
    variant_name,
    vote,
)

grids = arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.integers(0, 9))
perms = st.permutations(list(range(1, 10))).map(lambda p: (0, *p))


@settings(max_examples=60, deadline=None)
@given(grids, st.integers(0, 7), perms)
def test_invert_undoes_apply(grid: np.ndarray, tid: int, perm: tuple[int, ...]) -> None:
    variant = Variant(tid, perm)
    np.testing.assert_array_equal(invert_variant(apply_variant(grid, variant), variant), grid)


def test_colours_are_mapped_before_the_symmetry_and_black_stays() -> None:
    perm = (0, 2, 3, 4, 5, 6, 7, 8, 9, 1)
    out = apply_variant(np.array([[0, 1, 9]], np.uint8), Variant(1, perm))
    np.testing.assert_array_equal(out, np.rot90(np.array([[0, 2, 1]])))


def test_batch_of_grids_is_augmented_alike() -> None:
    batch = np.random.default_rng(0).integers(0, 10, (4, 3, 5)).astype(np.uint8)
    variant = Variant(7, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1))
    out = apply_variant(batch, variant)
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out[2], apply_variant(batch[2], variant))
    np.testing.assert_array_equal(invert_variant(out, variant), batch)


def test_variant_name_round_trip_and_reference_format() -> None:
    variant = Variant(3, (0, 3, 1, 2, 4, 5, 6, 7, 8, 9))
    assert variant_name("007bbfb7", variant) == "007bbfb7|||t3|||0312456789"
    assert parse_variant_name("007bbfb7|||t3|||0312456789") == ("007bbfb7", variant)
    assert variant_name("007bbfb7", IDENTITY) == "007bbfb7"
    assert parse_variant_name("007bbfb7") == ("007bbfb7", IDENTITY)
    rng = np.random.default_rng(1)
    for _ in range(20):
        v = random_variant(rng)
        assert parse_variant_name(variant_name("abc", v)) == ("abc", v)


@pytest.mark.parametrize("name", ["a|||x3|||0123456789", "a|||t3", "a|||t9|||0123456789", "a|||t1|||1023456789"])
def test_malformed_variant_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        parse_variant_name(name)


def test_variant_rejects_perm_moving_black() -> None:
    with pytest.raises(ValueError, match="keep 0 fixed"):
        Variant(0, (1, 0, 2, 3, 4, 5, 6, 7, 8, 9))


ASYMMETRIC = {
    "train": [{"input": [[1, 2, 3], [4, 5, 6]], "output": [[7, 8], [9, 1]]}],
    "test": [{"input": [[2, 3], [4, 0]], "output": [[5]]}],
}
SYMMETRIC = {  # one colour, square and symmetric: only the colour choice (9 options) can differ
    "train": [{"input": [[0, 1, 0], [1, 1, 1], [0, 1, 0]], "output": [[1]]}],
    "test": [{"input": [[1, 0, 1], [0, 0, 0], [1, 0, 1]]}],
}


def test_make_variants_are_distinct_and_identity_first() -> None:
    task = parse_task(ASYMMETRIC)
    variants = make_variants(task, 50, np.random.default_rng(42))
    assert len(variants) == 50 and variants[0] == IDENTITY
    assert len({task_hash(task, v) for v in variants}) == 50


def test_symmetric_task_gets_fewer_variants() -> None:
    variants = make_variants(parse_task(SYMMETRIC), 50, np.random.default_rng(42), max_tries=2000)
    assert len(variants) == 9  # the task only uses colour 1; 9 places it can go, symmetries change nothing
    assert make_variants(parse_task(SYMMETRIC), 0, np.random.default_rng(0)) == []


def test_make_variants_is_seeded() -> None:
    task = parse_task(ASYMMETRIC)
    assert make_variants(task, 20, np.random.default_rng(7)) == make_variants(task, 20, np.random.default_rng(7))


def test_vote_picks_majority_then_mean_probability() -> None:
    a, b, c = [[1]], [[2]], [[3, 3]]
    ranked = vote([(a, 0.1), (b, 0.9), (a, 0.2), (c, 0.5), (np.array(b), 0.8), (c, 0.6)])
    # a, b and c have 2 votes each: ranked by mean q, b (0.85) > c (0.55) > a (0.15)
    assert ranked == [b, c, a]
    assert vote([(a, 0.1), (b, 0.99), (a, 0.1)]) == [a, b]


def test_vote_keeps_first_seen_on_full_tie_and_handles_empty() -> None:
    assert vote([([[1]], 0.5), ([[2]], 0.5)]) == [[[1]], [[2]]]
    assert vote([([], 0.4), ([[1]], 0.3), ([], 0.2)]) == [[], [[1]]]
    assert vote([]) == []

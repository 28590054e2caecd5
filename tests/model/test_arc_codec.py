"""ARC codec: reference token layout, cropping like the reference evaluator, and field-precise errors."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from model.puzzles import get_codec
from model.puzzles.arc import ArcCodec, ArcPair, ArcTask, crop_shape, decode_grid, encode_grid, needed_side, parse_task
from model.puzzles.base import PuzzleError


def _task(**overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}],
        "test": [{"input": [[5, 6, 7]]}],
    }
    task.update(overrides)
    return task


def test_eos_layout_of_2x3_grid_matches_reference() -> None:
    tokens = encode_grid([[0, 1, 2], [3, 4, 9]], side=5).reshape(5, 5)
    expected = np.array(
        [
            [2, 3, 4, 1, 0],
            [5, 6, 11, 1, 0],
            [1, 1, 1, 0, 0],  # EOS under the grid columns only; the corner stays PAD
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(tokens, expected)
    assert tokens.dtype == np.uint8


def test_grid_touching_canvas_edge_gets_no_eos_there() -> None:
    tokens = encode_grid(np.full((3, 2), 7), side=3).reshape(3, 3)
    np.testing.assert_array_equal(tokens[:, 2], [1, 1, 1])
    assert (tokens[:, :2] == 9).all()


def test_offset_translates_grid_and_border() -> None:
    tokens = encode_grid([[1]], side=4, offset=(1, 2)).reshape(4, 4)
    assert tokens[1, 2] == 3 and tokens[2, 2] == 1 and tokens[1, 3] == 1
    assert tokens.sum() == 5


@pytest.mark.parametrize("size", range(1, 31))
def test_round_trip_every_size(size: int) -> None:
    rng = np.random.default_rng(size)
    for shape in [(size, size), (size, max(1, 31 - size)), (1, size)]:
        grid = rng.integers(0, 10, shape).tolist()
        assert decode_grid(encode_grid(grid, 30), 30) == grid


def test_crop_takes_largest_top_left_colour_rectangle() -> None:
    canvas = np.zeros((6, 6), np.uint8)
    canvas[:2, :5] = 3  # 2x5 = 10 cells
    canvas[2:5, :2] = 4  # rows 0..4 at width 2 = 10 cells: tie, the first (2x5) wins
    assert crop_shape(canvas.reshape(-1), 6) == (2, 5)
    canvas[5, :2] = 5  # 6x2 = 12 cells now beats 2x5
    assert crop_shape(canvas.reshape(-1), 6) == (6, 2)


def test_crop_of_non_colour_corner_is_empty() -> None:
    canvas = np.full(25, 3, np.uint8)
    canvas[0] = 1
    assert decode_grid(canvas, 5) == []
    assert decode_grid(np.zeros(25, np.uint8), 5) == []


def test_codec_encodes_first_test_input_and_decodes() -> None:
    codec = ArcCodec(100)
    assert codec.side == 10 and codec.vocab_size == 12 and codec.family == "arc"
    task = codec.parse(_task(test=[{"input": [[5, 6, 7]]}, {"input": [[1]]}]))
    tokens = codec.encode(task)
    assert tokens.shape == (100,)
    assert codec.decode(tokens, task) == [[5, 6, 7]]
    assert codec.encode_test_inputs(task).shape == (2, 100)
    assert codec.verify(task, [[5, 6, 7]]) is None


def test_registry_knows_arc() -> None:
    assert isinstance(get_codec("arc", 900), ArcCodec)


@pytest.mark.parametrize("seq_len", [0, 99, 961])
def test_rejects_non_square_or_too_large_canvas(seq_len: int) -> None:
    with pytest.raises(ValueError, match="square seq_len"):
        ArcCodec(seq_len)


def test_test_outputs_are_optional_and_parsed_when_present() -> None:
    task = parse_task(_task(test=[{"input": [[1]], "output": [[2]]}, {"input": [[3]]}]))
    assert task.test[0].output is not None and task.test[0].output.tolist() == [[2]]
    assert task.test[1].output is None
    assert task.train[0].input.dtype == np.uint8


@pytest.mark.parametrize(
    ("raw", "message", "field"),
    [
        (_task(test=[{"input": [[0, 0]] * 31}]), "ARC grid 31x2 exceeds 30x30", "task.test[0].input"),
        (
            _task(train=[_task()["train"][0], {"input": [[1]], "output": [[1] * 5, [1] * 5, [1] * 4]}]),
            "task.train[1].output[2] has 4 cells, expected 5",
            "task.train[1].output[2]",
        ),
        (
            _task(train=[{"input": [[0] * 4, [0, 0, 0, 10]], "output": [[1]]}]),
            "value 10 at task.train[0].input[1][3], expected 0..9",
            "task.train[0].input[1][3]",
        ),
        (_task(test=[]), "task has no test inputs", "task.test"),
        ({"train": []}, "task has no demonstrations", "task.train"),
        (_task(train=[]), "train needs at least one input/output pair", "task.train"),
        ({"test": [{"input": [[1]]}]}, "task has no demonstrations", "task.train"),
        (_task(test=[{"input": [[True]]}]), "value True at task.test[0].input[0][0]", "task.test[0].input[0][0]"),
        (_task(test=[{"input": [[1.5]]}]), "value 1.5 at", "task.test[0].input[0][0]"),
        (_task(test=[{"input": []}]), "task.test[0].input has no rows", "task.test[0].input"),
        (_task(test=[{"input": [[]]}]), "task.test[0].input[0] has no cells", "task.test[0].input[0]"),
        (_task(test=[{"input": "12"}]), "must be a list of rows", "task.test[0].input"),
        (_task(test=[{"input": [1, 2]}]), "must be a list of ints", "task.test[0].input[0]"),
        (_task(test=[{}]), "task.test[0].input is missing", "task.test[0].input"),
        (_task(train=[{"input": [[1]]}]), "task.train[0].output is missing", "task.train[0].output"),
        (_task(train=[[1]]), "must be an object", "task.train[0]"),
        (_task(train={}), "must be a list of examples", "task.train"),
        ([1], "must be an object", "task"),
    ],
)
def test_parse_errors_name_the_field(raw: Any, message: str, field: str) -> None:
    with pytest.raises(PuzzleError, match=re.escape(message)) as err:
        parse_task(raw)
    assert err.value.field == field


def test_small_canvas_limits_grid_size() -> None:
    with pytest.raises(PuzzleError, match="ARC grid 11x1 exceeds 10x10"):
        ArcCodec(100).parse(_task(test=[{"input": [[1]] * 11}]))


def test_needed_side_foresees_outputs_scaled_like_the_demonstrations() -> None:
    """A 3x3 -> 9x9 task asked about a 4x4 input needs a 12-side canvas; a task that keeps sizes needs its largest
    grid; nothing past 30."""

    def task(pairs: list[tuple[int, int]], test: int) -> ArcTask:
        demo = tuple(ArcPair(np.zeros((i, i), np.uint8), np.zeros((o, o), np.uint8)) for i, o in pairs)
        return ArcTask(demo, (ArcPair(np.zeros((test, test), np.uint8)),))

    assert needed_side(task([(3, 9), (2, 6)], 4)) == 12
    assert needed_side(task([(5, 5), (7, 7)], 6)) == 7
    assert needed_side(task([(3, 9), (2, 4)], 4)) == 9  # no common factor: the largest grid decides
    assert needed_side(task([(10, 30)], 12)) == 30


def test_size_agnostic_canvases_round_trip_30x30_grids_and_outputs_larger_than_inputs() -> None:
    """A size-agnostic model's canvas keeps a one-cell margin (its EOS border) and may be 32 wide: a 30x30 grid
    and a 4x4 input whose 12x12 output the demonstrations foresee both round-trip through the canvas they get."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 10, (30, 30))
    codec = ArcCodec(32 * 32, margin=1)
    assert (codec.side, codec.fits) == (32, 30)
    assert decode_grid(encode_grid(big, 32), 32) == big.tolist()
    small = rng.integers(0, 10, (4, 4))
    output = np.kron(small, np.ones((3, 3), np.int64))
    demo = ArcPair(np.zeros((3, 3), np.uint8), np.zeros((9, 9), np.uint8))
    side = needed_side(ArcTask((demo,), (ArcPair(small.astype(np.uint8)),)))
    canvas = ArcCodec(20 * 20, margin=1)
    assert side == 12 <= canvas.fits
    assert decode_grid(encode_grid(output, 20), 20) == output.tolist()
    with pytest.raises(PuzzleError, match="exceeds 19x19"):
        canvas.parse(_task(test=[{"input": [[1] * 20]}]))
    with pytest.raises(ValueError, match="square seq_len"):
        ArcCodec(33 * 33, margin=1)

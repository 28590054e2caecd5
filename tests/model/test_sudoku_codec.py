"""SudokuCodec: reference tokenisation, request validation with precise messages, decoding and the rule check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.puzzles import CODECS, get_codec
from model.puzzles.base import PuzzleError
from model.puzzles.sudoku import SudokuCodec, decode_tokens, encode_grids, is_valid_solution

# A valid 9x9 solution from the classic shifted pattern, and a puzzle made by blanking some of its cells.
SOLUTION = [[(r * 3 + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)]
BLANKS = {(0, 0), (0, 4), (1, 1), (2, 8), (4, 4), (5, 2), (6, 6), (7, 3), (8, 8), (8, 0)}
PUZZLE = [[0 if (r, c) in BLANKS else SOLUTION[r][c] for c in range(9)] for r in range(9)]
SOLUTION_4 = [[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]]


@pytest.fixture
def codec() -> SudokuCodec:
    return SudokuCodec(81)


def test_encode_uses_reference_tokens_blank_1_digits_plus_one(codec: SudokuCodec) -> None:
    tokens = codec.encode(codec.parse(PUZZLE))
    assert tokens.dtype == np.uint8 and tokens.shape == (81,)
    flat = np.array(PUZZLE).reshape(-1)
    assert (tokens[flat == 0] == 1).all()
    assert (tokens[flat > 0] == flat[flat > 0] + 1).all()
    assert tokens.min() >= 1 and tokens.max() <= 10  # PAD (0) never appears in an input


def test_string_forms_parse_like_the_list_form(codec: SudokuCodec) -> None:
    flat = [v for row in PUZZLE for v in row]
    dots = "".join(str(v) if v else "." for v in flat)
    zeros = "".join(str(v) for v in flat)
    expected = codec.parse(PUZZLE)
    assert expected.dtype == np.int8 and expected.shape == (9, 9)
    assert (codec.parse(dots) == expected).all()
    assert (codec.parse(zeros) == expected).all()


def test_decode_round_trips_and_non_digit_tokens_become_blank(codec: SudokuCodec) -> None:
    puzzle = codec.parse(PUZZLE)
    assert codec.decode(codec.encode(np.array(SOLUTION, dtype=np.int8)), puzzle) == SOLUTION
    tokens = codec.encode(np.array(SOLUTION, dtype=np.int8))
    tokens[:3] = [0, 1, 11]
    assert codec.decode(tokens)[0][:4] == [0, 0, 0, SOLUTION[0][3]]
    # With the puzzle, its givens stand whatever was predicted in their cells; other cells read as predicted.
    assert codec.decode(tokens, puzzle)[0][:3] == [int(v) if v else 0 for v in puzzle[0][:3]]


def test_settle_keeps_every_given_and_takes_the_prediction_elsewhere(codec: SudokuCodec) -> None:
    puzzle = codec.encode(codec.parse(PUZZLE))[None]
    predicted = np.full_like(puzzle, 7)
    settled = codec.settle(puzzle, predicted)
    given = puzzle >= 2
    assert (settled[given] == puzzle[given]).all() and (settled[~given] == 7).all()
    solution = codec.encode(np.array(SOLUTION, dtype=np.int8))[None]
    assert codec.check_tokens(puzzle, solution).tolist() == [True]
    assert codec.check_tokens(puzzle, settled).tolist() == [False]


def test_batch_helpers_agree_with_the_codec(codec: SudokuCodec) -> None:
    grids = np.array([PUZZLE, SOLUTION], dtype=np.int8)
    tokens = encode_grids(grids)
    assert tokens.shape == (2, 81) and (tokens[0] == codec.encode(grids[0])).all()
    assert (decode_tokens(tokens) == grids).all()
    assert is_valid_solution(grids).tolist() == [False, True]
    assert is_valid_solution(np.array(SOLUTION)).shape == ()


def test_four_by_four_codec_uses_two_by_two_boxes() -> None:
    codec = SudokuCodec(16)
    assert codec.verify(codec.parse("1234341221434321"), SOLUTION_4)
    with pytest.raises(PuzzleError, match="box 1 has two 1s"):
        codec.parse([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(PuzzleError, match=r"expected 0\.\.4"):
        codec.parse([[5, 0, 0, 0]] + [[0] * 4] * 3)


@pytest.mark.parametrize("seq_len", [80, 25, 900])
def test_unsupported_sequence_lengths_are_rejected(seq_len: int) -> None:
    with pytest.raises(ValueError, match="seq_len"):
        SudokuCodec(seq_len)


def _with(r: int, c: int, value: object) -> list[list[object]]:
    grid: list[list[object]] = [list(row) for row in PUZZLE]
    grid[r][c] = value
    return grid


def test_a_string_grid_may_be_laid_out_with_whitespace(codec: SudokuCodec) -> None:
    flat = "".join(str(v) for row in PUZZLE for v in row)
    lines = "\n".join(" ".join(flat[r * 9 : r * 9 + 9]) for r in range(9)) + "\n"
    assert np.array_equal(codec.parse(lines), codec.parse(flat))
    assert np.array_equal(codec.parse(flat), np.array(PUZZLE))


@pytest.mark.parametrize(
    ("raw", "message", "field"),
    [
        (PUZZLE[:8], "grid has 8 rows, expected 9", "grid"),
        ([*PUZZLE[:3], [*PUZZLE[3], 1], *PUZZLE[4:]], "grid[3] has 10 cells, expected 9", "grid[3]"),
        ([*PUZZLE[:3], "123456789", *PUZZLE[4:]], "grid[3] is not a list", "grid[3]"),
        (_with(2, 5, 12), "grid[2][5] is 12, expected 0..9", "grid[2][5]"),
        (_with(2, 5, -1), "grid[2][5] is -1, expected 0..9", "grid[2][5]"),
        (_with(2, 5, True), "grid[2][5] is True, expected 0..9", "grid[2][5]"),
        (_with(1, 1, "5"), "grid[1][1] is '5', expected 0..9", "grid[1][1]"),
        (_with(1, 1, 5.0), "grid[1][1] is 5.0, expected 0..9", "grid[1][1]"),
        (_with(1, 1, None), "grid[1][1] is None, expected 0..9", "grid[1][1]"),
        ({"grid": 1}, "grid must be a 9x9 list", "grid"),
        ("1" * 80, "grid has 80 characters other than whitespace, expected 81", "grid"),
        ("x" + "." * 80, "grid character 1 (row 1, column 1) is 'x'", "grid"),
        ("." * 80 + "é", "grid character 81 (row 9, column 9) is 'é'", "grid"),
    ],
)
def test_malformed_grids_name_the_field_and_fault(codec: SudokuCodec, raw: object, message: str, field: str) -> None:
    with pytest.raises(PuzzleError) as err:
        codec.parse(raw)
    assert message in err.value.message
    assert err.value.field == field


def _empty_with(*cells: tuple[int, int, int]) -> list[list[int]]:
    grid = [[0] * 9 for _ in range(9)]
    for r, c, v in cells:
        grid[r][c] = v
    return grid


@pytest.mark.parametrize(
    ("cells", "message", "field"),
    [
        ([(2, 0, 5), (2, 7, 5)], "row 3 has two 5s", "grid[2][7]"),
        ([(0, 6, 1), (8, 6, 1)], "column 7 has two 1s", "grid[8][6]"),
        ([(3, 3, 9), (4, 4, 9)], "box 5 has two 9s", "grid[4][4]"),
        ([(6, 0, 4), (7, 1, 4), (8, 2, 4)], "box 7 has three 4s", "grid[7][1]"),
        ([(0, 0, 3), (0, 4, 3), (0, 8, 3)], "row 1 has three 3s", "grid[0][4]"),
    ],
)
def test_conflicting_givens_are_reported_in_human_numbering(
    codec: SudokuCodec, cells: list[tuple[int, int, int]], message: str, field: str
) -> None:
    with pytest.raises(PuzzleError) as err:
        codec.parse(_empty_with(*cells))
    assert err.value.message == message
    assert err.value.field == field


def test_verify_accepts_the_solution_and_rejects_broken_answers(codec: SudokuCodec) -> None:
    puzzle = codec.parse(PUZZLE)
    assert codec.verify(puzzle, SOLUTION)
    swapped = [list(row) for row in SOLUTION]
    swapped[0][0], swapped[0][1] = swapped[0][1], swapped[0][0]  # rows stay permutations, columns break
    assert not codec.verify(puzzle, swapped)
    holed = [list(row) for row in SOLUTION]
    holed[4][4] = 0
    assert not codec.verify(puzzle, holed)
    relabelled = [[v % 9 + 1 for v in row] for row in SOLUTION]  # a valid grid that ignores the givens
    assert is_valid_solution(np.array(relabelled)) and not codec.verify(puzzle, relabelled)
    for junk in (None, "123", SOLUTION[:8], [[True] * 9] * 9, [[1] * 9] * 8 + [[1] * 8]):
        assert codec.verify(puzzle, junk) is False


@st.composite
def _shuffled_solutions(draw: st.DrawFn) -> np.ndarray:
    """A valid grid from SOLUTION by solution-preserving moves: relabel, swap bands/rows, transpose."""
    grid = np.array(SOLUTION)
    perm = np.array(draw(st.permutations(range(1, 10))))
    grid = perm[grid - 1]
    bands = draw(st.permutations(range(3)))
    rows = [b * 3 + i for b in bands for i in draw(st.permutations(range(3)))]
    grid = grid[rows]
    return grid.T if draw(st.booleans()) else grid


@settings(max_examples=40, deadline=None)
@given(_shuffled_solutions(), st.integers(0, 80), st.integers(1, 8))
def test_verify_accepts_valid_grids_and_rejects_any_single_change(grid: np.ndarray, cell: int, shift: int) -> None:
    codec = SudokuCodec(81)
    empty = np.zeros((9, 9), dtype=np.int8)
    assert codec.verify(empty, grid.tolist())
    broken = grid.copy()
    broken.flat[cell] = (broken.flat[cell] - 1 + shift) % 9 + 1
    assert not codec.verify(empty, broken.tolist())
    givens = np.where(np.arange(81).reshape(9, 9) % 7 == 0, grid, 0)
    assert codec.verify(codec.parse(givens.tolist()), grid.tolist())


def test_registry_builds_bound_codecs() -> None:
    assert CODECS["sudoku"] is SudokuCodec
    codec = get_codec("sudoku", 16)
    assert isinstance(codec, SudokuCodec) and codec.side == 4 and codec.vocab_size == 11
    with pytest.raises(ValueError, match="unknown puzzle family 'chess'"):
        get_codec("chess", 64)

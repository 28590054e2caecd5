"""MazeCodec: validation messages, wall padding to the model's side, cropping on decode, shortest-path checking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.puzzles import CODECS, get_codec
from model.puzzles.base import PuzzleError
from model.puzzles.maze import (
    PATH,
    WALL,
    MazeCodec,
    chars_to_tokens,
    count_shortest_paths,
    drawn_side,
    is_shortest_path_answer,
    mark_path,
    shortest_path,
    solved_side,
    tokens_to_chars,
)

MAZE = [
    "S   #",
    "### #",
    "#   #",
    "# ###",
    "#   G",
]
ANSWER = [
    "Sooo#",
    "###o#",
    "#ooo#",
    "#o###",
    "#oooG",
]
# Two equally short routes around the middle wall block.
OPEN_MAZE = ["S   ", " ## ", " ## ", "   G"]


@pytest.fixture
def codec() -> MazeCodec:
    return MazeCodec(900)


def test_small_maze_is_padded_with_walls_and_decoded_back_to_its_size(codec: MazeCodec) -> None:
    puzzle = codec.parse(MAZE)
    tokens = codec.encode(puzzle)
    assert tokens.shape == (900,) and tokens.dtype == np.uint8
    grid = tokens.reshape(30, 30)
    assert (grid[:5, :5] == chars_to_tokens(MAZE)).all()
    assert (grid[5:, :] == WALL).all() and (grid[:, 5:] == WALL).all()
    assert codec.decode(tokens, puzzle) == MAZE
    label = codec.encode(mark_path(puzzle))
    assert codec.decode(label, puzzle) == ANSWER
    assert codec.verify(puzzle, codec.decode(label, puzzle))


def test_tokens_follow_the_reference_alphabet() -> None:
    assert chars_to_tokens(["# SGo"]).tolist() == [[1, 2, 3, 4, 5]]
    assert tokens_to_chars(np.array([[0, 1, 2, 3, 4, 5, 9]])) == ["?# SGo?"]


def test_full_size_maze_fills_the_sequence_exactly() -> None:
    codec = MazeCodec(25)
    assert (codec.encode(codec.parse(MAZE)) == chars_to_tokens(MAZE).reshape(-1)).all()


@pytest.mark.parametrize("seq_len", [899, 0])
def test_non_square_sequence_lengths_are_rejected(seq_len: int) -> None:
    with pytest.raises(ValueError, match="square"):
        MazeCodec(seq_len)


@pytest.mark.parametrize(
    ("raw", "message", "field"),
    [
        (["    #", *MAZE[1:]], "maze has no S", "grid"),
        ([*MAZE[:4], "#G  G"], "maze has 2 Gs", "grid"),
        (["S  S#", *MAZE[1:]], "maze has 2 Ss", "grid"),
        ([*MAZE[:4], "#   G "], "grid[4] has 6 characters, expected 5 (as grid[0]; a maze is a rectangle)", "grid[4]"),
        (["S  ", "  G", "    "], "grid[2] has 4 characters, expected 3", "grid[2]"),
        (["", ""], "grid rows are empty", "grid[0]"),
        (
            ["S" + " " * 34] + [" " * 35] * 33 + [" " * 34 + "G"],
            "maze is 35x35, larger than this model's 30x30",
            "grid",
        ),
        ([*MAZE[:2], "#  x#", *MAZE[3:]], "grid[2][3] is 'x', expected one of '#', ' ', '.', 'S', 'G'", "grid[2][3]"),
        ([*MAZE[:2], "#  o#", *MAZE[3:]], "grid[2][3] is 'o', expected one of", "grid[2][3]"),
        ([*MAZE[:2], "# →##", *MAZE[3:]], "grid[2][2] is '→', expected", "grid[2][2]"),
        ([*MAZE[:2], "#\ud800  #", *MAZE[3:]], "grid[2][1] is '\\ud800', expected", "grid[2][1]"),
        ([*MAZE[:2], "#\n  #", *MAZE[3:]], "grid[2][1] is '\\n', expected", "grid[2][1]"),
        ([*MAZE[:2], "#####", *MAZE[3:]], "maze has no path from S to G", "grid"),
        ([*MAZE[:2], 7, *MAZE[3:]], "grid[2] is not a string", "grid[2]"),
        ("S G", "grid must be a non-empty list", "grid"),
        ([], "grid must be a non-empty list", "grid"),
    ],
)
def test_malformed_mazes_name_the_field_and_fault(codec: MazeCodec, raw: object, message: str, field: str) -> None:
    with pytest.raises(PuzzleError) as err:
        codec.parse(raw)
    assert message in err.value.message
    assert err.value.field == field


def test_verify_accepts_any_shortest_path_and_rejects_everything_else() -> None:
    codec = MazeCodec(16)
    puzzle = codec.parse(OPEN_MAZE)
    assert count_shortest_paths(puzzle) == 2
    assert codec.verify(puzzle, ["Sooo", " ##o", " ##o", "   G"])
    assert codec.verify(puzzle, ["S   ", "o## ", "o## ", "oooG"])
    bad = [
        ["Sooo", "o##o", "o##o", "oooG"],  # both routes: too many 'o'
        ["Soo ", " ##o", " ##o", "   G"],  # right count minus one, broken
        ["Sooo", " ##o", " ##o", "  oG"],  # one 'o' too many
        ["Soo ", " ##o", " ##o", "o  G"],  # right count, but not connected
        ["Sooo", " #oo", " ## ", "   G"],  # an 'o' on a wall
        ["oooo", " ##o", " ##o", "   G"],  # S overwritten
        ["Sooo", " ##o", " ##o", "   G", "    "],  # wrong shape
        ["Sooo", " ##o", " ##o", "  xG"],  # foreign character
        "Sooo ##o ##o   G",
        None,
    ]
    for answer in bad:
        assert codec.verify(puzzle, answer) is False, answer


def test_shortest_path_helpers() -> None:
    grid = chars_to_tokens(MAZE)
    path = shortest_path(grid)
    assert path is not None and path[0] == (0, 0) and path[-1] == (4, 4) and len(path) == 13
    assert all(abs(a - c) + abs(b - d) == 1 for (a, b), (c, d) in itertools.pairwise(path))
    assert count_shortest_paths(grid) == 1
    walled = chars_to_tokens(["S#", "#G"])
    assert shortest_path(walled) is None and count_shortest_paths(walled) == 0
    with pytest.raises(ValueError, match="no path"):
        mark_path(walled)


@st.composite
def _random_mazes(draw: st.DrawFn) -> np.ndarray:
    side = draw(st.integers(2, 8))
    walls = draw(st.lists(st.booleans(), min_size=side * side, max_size=side * side))
    grid = np.where(np.array(walls).reshape(side, side), 1, 2).astype(np.uint8)
    s, g = draw(st.lists(st.integers(0, side * side - 1), min_size=2, max_size=2, unique=True))
    grid.flat[s], grid.flat[g] = 3, 4
    return grid


@settings(max_examples=60, deadline=None)
@given(_random_mazes())
def test_marked_shortest_path_verifies_and_a_detour_does_not(grid: np.ndarray) -> None:
    codec = MazeCodec(64)
    rows = tokens_to_chars(grid)
    if shortest_path(grid) is None:
        with pytest.raises(PuzzleError, match="no path"):
            codec.parse(rows)
        return
    puzzle = codec.parse(rows)
    label = mark_path(puzzle)
    assert codec.verify(puzzle, tokens_to_chars(label))
    assert is_shortest_path_answer(puzzle, label)
    spare = np.argwhere(label == 2)
    if len(spare):  # one more 'o' anywhere makes it longer than the shortest path
        extra = label.copy()
        extra[tuple(spare[0])] = 5
        assert not codec.verify(puzzle, tokens_to_chars(extra))


def test_registry_has_maze() -> None:
    assert CODECS["maze"] is MazeCodec
    codec = get_codec("maze", 900)
    assert isinstance(codec, MazeCodec) and codec.side == 30 and codec.vocab_size == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=49, max_size=49))
def test_an_answer_never_alters_a_wall_s_or_g_whatever_the_model_predicts(predicted: list[int]) -> None:
    codec = MazeCodec(49)  # a 7x7 model: the 5x5 maze is padded with walls
    puzzle = codec.parse(MAZE)
    tokens = np.array(predicted, dtype=np.uint8)
    answer = codec.decode(tokens, puzzle)
    for row, given_row in zip(answer, MAZE, strict=True):
        for ch, given_ch in zip(row, given_row, strict=True):
            assert ch == given_ch or (given_ch == " " and ch == "o")  # only open cells may become path
    settled = codec.settle(codec.encode(puzzle)[None], tokens[None])[0]
    assert tokens_to_chars(settled.reshape(7, 7)[:5, :5]) == answer
    assert codec.check_tokens(codec.encode(puzzle)[None], tokens[None]).tolist() == [codec.verify(puzzle, answer)]


def test_the_rule_check_accepts_the_marked_shortest_path_and_settling_it_changes_nothing() -> None:
    codec = MazeCodec(49)
    puzzle = codec.parse(MAZE)
    padded = codec.encode(puzzle).reshape(7, 7)
    solved = mark_path(padded)
    assert codec.check_tokens(padded.reshape(1, -1), solved.reshape(1, -1)).tolist() == [True]
    assert (codec.settle(padded.reshape(1, -1), solved.reshape(1, -1)) == solved.reshape(1, -1)).all()


def bordered(rows: list[str]) -> list[str]:
    width = len(rows[0]) + 2
    return ["#" * width, *(f"#{row}#" for row in rows), "#" * width]


def test_a_maze_drawn_inside_a_wall_ring_is_solved_inside_it_and_answered_with_the_ring() -> None:
    codec = MazeCodec(25)  # a 5x5 model serves the 7x7 bordered maze: its inside is 5x5
    ringed = bordered(MAZE)
    assert solved_side(ringed) == 5 and solved_side(MAZE) == 5 and solved_side(["ab"]) == 2  # the longer side
    puzzle = codec.parse(ringed)
    np.testing.assert_array_equal(codec.encode(puzzle), codec.encode(codec.parse(MAZE)))
    solution = mark_path(chars_to_tokens(MAZE))
    answer = codec.decode(solution.reshape(-1), puzzle)
    assert answer == bordered(tokens_to_chars(solution)) and codec.verify(puzzle, answer)
    assert codec.decode(np.full(25, PATH), puzzle)[0] == "#" * 7  # the ring stays whatever is predicted
    with pytest.raises(PuzzleError, match=r"maze is 9x9 \(7x7 inside its wall ring\), larger than"):
        codec.parse(bordered(bordered(MAZE)))


def test_a_ring_with_a_door_is_part_of_the_maze() -> None:
    door = bordered(MAZE)
    door[0] = "#S" + "#" * 5
    door[1] = "#" + " " + door[1][2:]  # the maze's own S becomes open, entered from the ring
    assert solved_side(door) == 7
    # routing still compares models on ring-drawn mazes of the size inside the ring, where held-out records count it
    assert drawn_side(door) == 5 and drawn_side(bordered(MAZE)) == 5
    assert drawn_side(MAZE) == 5 and drawn_side(["ab"]) == 2 and drawn_side("not rows") is None
    opening = bordered(MAZE)
    opening[0] = "# " + "#" * 5  # a gap that is neither S nor G: not a ring
    assert drawn_side(opening) == 7 == solved_side(opening)


RECT = [
    "S    #   ",
    "#### # # ",
    "       #G",
]
RING_DOTS = [
    "#######",
    "#S....#",
    "#.###.#",
    "#....G#",
    "#######",
]


def test_rectangles_parse_pad_into_the_canvas_and_round_trip() -> None:
    codec = MazeCodec(100)
    puzzle = codec.parse(RECT)
    assert puzzle.shape == (3, 9)
    grid = codec.encode(puzzle).reshape(10, 10)
    assert (grid[:3, :9] == chars_to_tokens(RECT)).all() and (grid[3:] == WALL).all() and (grid[:, 9:] == WALL).all()
    assert codec.decode(codec.encode(puzzle), puzzle) == RECT
    label = codec.encode(mark_path(puzzle))
    answer = codec.decode(label, puzzle)
    assert codec.verify(puzzle, answer) and sum(row.count("o") for row in answer) == len(shortest_path(puzzle)) - 2
    assert codec.parse(["".join(col) for col in zip(*RECT, strict=True)]).shape == (9, 3)  # tall as well as wide


def test_dots_are_open_cells_and_the_answer_keeps_them_and_the_ring() -> None:
    codec = MazeCodec(25)  # 5x5 canvas: the 7x5 bordered maze is solved inside its ring, 5x3
    puzzle = codec.parse(RING_DOTS)
    assert (puzzle == chars_to_tokens([row.replace(".", " ") for row in RING_DOTS])).all()
    answer = codec.decode(codec.encode(mark_path(puzzle)), puzzle)
    assert codec.verify(puzzle, answer)
    assert answer[0] == answer[-1] == "#######" and all(r[0] == r[-1] == "#" for r in answer)
    for row, got in zip(RING_DOTS, answer, strict=True):
        for g, a in zip(row, got, strict=True):
            assert a == g or (g == "." and a == "o")  # only open cells change, and only to 'o'
    assert "." in "".join(answer)  # open cells off the path stay as the user wrote them


def test_a_margin_keeps_a_wall_row_and_column_past_every_maze() -> None:
    codec = MazeCodec(36, margin=1)
    assert codec.fits == 5
    grid = codec.encode(codec.parse(MAZE)).reshape(6, 6)
    assert (grid[5] == WALL).all() and (grid[:, 5] == WALL).all()
    with pytest.raises(PuzzleError, match="larger than this model's 5x5"):
        codec.parse(["S" + " " * 5] + [" " * 6] * 4 + [" " * 5 + "G"])


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_decode_never_alters_a_wall_s_g_or_a_dot_whatever_the_model_predicts(data: st.DataObject) -> None:
    codec = MazeCodec(100, margin=1)
    puzzle = codec.parse(RING_DOTS)
    predicted = np.array(data.draw(st.lists(st.integers(0, 9), min_size=100, max_size=100)), dtype=np.int64)
    answer = codec.decode(predicted, puzzle)
    assert len(answer) == len(RING_DOTS)
    for row, got in zip(RING_DOTS, answer, strict=True):
        assert len(got) == len(row)
        for g, a in zip(row, got, strict=True):
            assert a == g or (g in " ." and a == "o")

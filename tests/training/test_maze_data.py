"""Maze data: generated mazes and labels (checked with the codec's own BFS), CSV I/O, dihedral augmentation, build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.puzzles.dihedral import DIHEDRAL_INVERSE, dihedral, dihedral_rows
from model.puzzles.maze import (
    GOAL,
    OPEN,
    PATH,
    START,
    WALL,
    MazeCodec,
    count_shortest_paths,
    is_shortest_path_answer,
    tokens_to_chars,
)
from training.data import maze
from training.data.dataset import load_meta, load_split


@pytest.fixture(scope="module")
def mazes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return maze.generate(40, side=15, seed=3, workers=1)


def test_generated_mazes_have_one_s_one_g_and_a_unique_marked_shortest_path(
    mazes: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    questions, labels, lengths = mazes
    assert questions.shape == labels.shape == (40, 15, 15) and questions.dtype == np.uint8
    assert ((questions == START).sum(axis=(1, 2)) == 1).all() and ((questions == GOAL).sum(axis=(1, 2)) == 1).all()
    assert set(np.unique(questions)) <= {WALL, OPEN, START, GOAL}
    assert ((labels == PATH).sum(axis=(1, 2)) == lengths - 1).all()
    codec = MazeCodec(225)
    for q, a in zip(questions, labels, strict=True):
        assert count_shortest_paths(q) == 1
        assert is_shortest_path_answer(q, a)
        puzzle = codec.parse(tokens_to_chars(q))  # generated mazes are valid requests too
        assert codec.verify(puzzle, tokens_to_chars(a))


def test_mazes_have_loops_so_they_are_not_all_trees(mazes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    questions = mazes[0]
    open_ = questions != WALL
    cells = open_.sum(axis=(1, 2))
    edges = (open_[:, 1:, :] & open_[:, :-1, :]).sum(axis=(1, 2)) + (open_[:, :, 1:] & open_[:, :, :-1]).sum(
        axis=(1, 2)
    )
    assert (edges >= cells - 1).all()  # connected lattice mazes
    assert (edges > cells - 1).mean() > 0.9  # with cycles, unlike perfect mazes
    trees = maze.generate(10, side=15, loops=0.0, seed=3, workers=1)[0] != WALL
    tree_edges = (trees[:, 1:, :] & trees[:, :-1, :]).sum(axis=(1, 2)) + (trees[:, :, 1:] & trees[:, :, :-1]).sum(
        axis=(1, 2)
    )
    assert (tree_edges == trees.sum(axis=(1, 2)) - 1).all()


@pytest.mark.parametrize("side", [5, 30])
def test_hard_filter_and_sizes(side: int) -> None:
    min_path = 110 if side == 30 else 4
    questions, labels, lengths = maze.generate(12, side=side, min_path=min_path, seed=1, workers=1)
    assert questions.shape == (12, side, side)
    assert (lengths >= min_path).all()
    assert all(is_shortest_path_answer(q, a) for q, a in zip(questions, labels, strict=True))


def test_generation_is_deterministic_in_seed_and_independent_of_workers() -> None:
    one = maze.generate(260, side=7, seed=5, workers=1)
    two = maze.generate(260, side=7, seed=5, workers=2)
    assert all((x == y).all() for x, y in zip(one, two, strict=True))
    assert (maze.generate(20, side=7, seed=6, workers=1)[0] != one[0][:20]).any()


def test_bad_settings_fail_loudly() -> None:
    with pytest.raises(ValueError, match=r"5\.\.30"):
        maze.generate(1, side=31)
    with pytest.raises(RuntimeError, match="made only"):
        maze.generate(1, side=5, min_path=100, workers=1, max_tries_per_maze=5)


def test_dihedral_augmentation_keeps_answers_valid_and_inverts_exactly(
    mazes: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    questions, labels, _ = mazes
    inputs, targets = questions.reshape(40, -1), labels.reshape(40, -1)
    aug_in, aug_lab = maze.augment_batch(inputs, targets, np.random.default_rng(0))
    assert aug_in.shape == inputs.shape and aug_in.dtype == np.uint8
    assert all(
        is_shortest_path_answer(q, a)
        for q, a in zip(aug_in.reshape(-1, 15, 15), aug_lab.reshape(-1, 15, 15), strict=True)
    )
    tids = np.arange(40) % 8
    there = dihedral_rows(inputs, tids)
    back = dihedral_rows(there, np.array(DIHEDRAL_INVERSE)[tids])
    assert (back == inputs).all()
    eight = dihedral_rows(np.repeat(inputs[:1], 8, axis=0), np.arange(8))
    assert len({row.tobytes() for row in eight}) == 8  # an asymmetric maze has 8 distinct images
    assert all((eight[t].reshape(15, 15) == dihedral(questions[0], t)).all() for t in range(8))
    assert (dihedral_rows(inputs, np.full(40, 6)).reshape(-1, 15, 15) == questions.transpose(0, 2, 1)).all()


def test_csv_round_trip(tmp_path: Path, mazes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    questions, labels, lengths = mazes
    path = tmp_path / "maze.csv"
    maze.write_csv(path, questions, labels, source="unit")
    header, first = path.read_text().splitlines()[:2]
    assert header == "source,question,answer,rating" and first.startswith("unit,")
    q, a, rating = maze.read_csv(path)
    assert (q == questions).all() and (a == labels).all() and (rating == lengths).all()
    assert len(maze.read_csv(path, limit=3)[0]) == 3


QUESTION = "S  #" + " # #" + " #  " + "   G"
ANSWER = "S  #" + "o# #" + "o#  " + "oooG"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (f"x,{QUESTION},{ANSWER}", "expected 4 columns"),
        (f"x,{QUESTION} ,{ANSWER} ,0", "square-length"),
        (f"x,{QUESTION[:-1]}x,{ANSWER},0", "characters outside"),
        (f"x,{QUESTION[:-1]}o,{ANSWER},0", "characters outside"),
        (f"x,{QUESTION[:-1]}S,{ANSWER[:-1]}S,0", "exactly one S and one G"),
        (f"x,{QUESTION},{ANSWER[:-1]}o,0", "answer differs"),
        (f"x,{QUESTION},o{ANSWER[1:]},0", "answer differs"),
    ],
)
def test_csv_reader_rejects_bad_rows_with_line_numbers(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"source,question,answer,rating\nok,{QUESTION},{ANSWER},7\n{row}\n")
    with pytest.raises(ValueError, match=f"bad.csv:3: .*{message}"):
        maze.read_csv(path)
    path.write_text(f"source,question,answer,rating\nok,{QUESTION},{ANSWER},7\n")
    q, a, rating = maze.read_csv(path)
    assert is_shortest_path_answer(q[0], a[0]) and rating.tolist() == [7.0]


def test_build_writes_a_loadable_dataset(tmp_path: Path) -> None:
    root = maze.build(tmp_path / "ds", n_train=50, n_test=20, side=9, min_path=6, seed=0, workers=1)
    meta = load_meta(root)
    assert (meta.family, meta.vocab_size, meta.seq_len, meta.num_puzzle_ids, meta.augment) == (
        "maze",
        6,
        81,
        1,
        "dihedral",
    )
    train, test = load_split(root, "train"), load_split(root, "test")
    assert len(train) == 50 and len(test) == 20
    assert (train.puzzle_ids == 0).all() and (train.groups == np.arange(50)).all()
    assert not {r.tobytes() for r in train.inputs} & {r.tobytes() for r in test.inputs}
    assert (train.extras["path_length"] >= 6).all()
    assert all(
        is_shortest_path_answer(q.reshape(9, 9), a.reshape(9, 9)) for q, a in zip(test.inputs, test.labels, strict=True)
    )


def test_build_from_csv(tmp_path: Path, mazes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    questions, labels, lengths = mazes
    maze.write_csv(tmp_path / "train.csv", questions, labels)
    maze.write_csv(tmp_path / "test.csv", questions[:5], labels[:5])
    root = maze.build_from_csv(tmp_path / "ds", tmp_path / "train.csv", tmp_path / "test.csv")
    train, test = load_split(root, "train"), load_split(root, "test")
    assert len(train) == 40 and len(test) == 5 and load_meta(root).seq_len == 225
    assert (train.extras["path_length"] == lengths).all()


def test_build_mixes_smaller_sides_padded_like_the_server(tmp_path: Path) -> None:
    root = maze.build(tmp_path / "ds", n_train=60, n_test=24, side=11, min_path=12, seed=0, workers=1, min_side=6)
    meta = load_meta(root)
    assert meta.seq_len == 121 and meta.source["min_side"] == 7
    train, test = load_split(root, "train"), load_split(root, "test")
    assert sorted(np.unique(train.extras["side"], return_counts=True)[1]) == [20, 20, 20]
    assert sorted(np.unique(test.extras["side"], return_counts=True)[1]) == [8, 8, 8]
    assert len(set(test.extras["side"][:8].tolist())) > 1  # shuffled, so a periodic-eval prefix sees every size
    codec = MazeCodec(121)
    for split in (train, test):
        for q, a, s, length in zip(
            split.inputs, split.labels, split.extras["side"], split.extras["path_length"], strict=True
        ):
            grid, label = q.reshape(11, 11), a.reshape(11, 11)
            maze_q, maze_a = grid[:s, :s], label[:s, :s]
            assert (codec.encode(maze_q) == q).all()  # exactly the server's padding of an s x s maze
            padding = np.ones((11, 11), dtype=bool)
            padding[:s, :s] = False
            assert (label[padding] == 0).all()  # the padding is not scored
            assert is_shortest_path_answer(maze_q, maze_a)
            assert length >= round(12 * s * s / 121) and length == (maze_a == PATH).sum() + 1


def test_build_with_min_side_equal_to_side_is_the_one_side_set(tmp_path: Path) -> None:
    one = maze.build(tmp_path / "one", n_train=30, n_test=10, side=9, min_path=6, seed=5, workers=1)
    same = maze.build(tmp_path / "same", n_train=30, n_test=10, side=9, min_path=6, seed=5, workers=1, min_side=9)
    for split in ("train", "test"):
        a, b = load_split(one, split), load_split(same, split)
        assert (a.inputs == b.inputs).all() and (a.labels == b.labels).all()
    with pytest.raises(ValueError, match=r"min_side must be 5\.\.9"):
        maze.build(tmp_path / "bad", n_train=3, n_test=1, side=9, min_side=4, workers=1)

"""Sudoku data: generator correctness (checked by an independent brute-force counter), CSV I/O, augmentation, build."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from model.puzzles.sudoku import decode_tokens, encode_grids, is_valid_solution
from training.data import sudoku, sudoku_hard
from training.data.dataset import load_meta, load_split


def brute_force_count(grid: np.ndarray, limit: int = 2) -> int:
    """Plain backtracking, sharing no code with the generator's solver: the cell with fewest candidates first."""
    g = [list(map(int, row)) for row in grid]
    side = len(g)
    box = math.isqrt(side)

    def candidates(r: int, c: int) -> set[int]:
        used = set(g[r]) | {g[i][c] for i in range(side)}
        br, bc = r - r % box, c - c % box
        used |= {g[i][j] for i in range(br, br + box) for j in range(bc, bc + box)}
        return set(range(1, side + 1)) - used

    def count() -> int:
        empty = [(len(candidates(r, c)), r, c) for r in range(side) for c in range(side) if g[r][c] == 0]
        if not empty:
            return 1
        _, r, c = min(empty)
        total = 0
        for v in candidates(r, c):
            g[r][c] = v
            total += count()
            g[r][c] = 0
            if total >= limit:
                break
        return total

    return count()


@pytest.fixture(scope="module")
def nine() -> sudoku.SudokuPuzzles:
    return sudoku.generate(40, side=9, givens=(24, 32), seed=7, workers=1)


def test_generated_9x9_puzzles_are_valid_unique_and_within_givens(nine: sudoku.SudokuPuzzles) -> None:
    assert nine.puzzles.shape == (40, 9, 9) and nine.puzzles.dtype == np.int8
    assert is_valid_solution(nine.solutions, nine.puzzles).all()
    givens = (nine.puzzles != 0).sum(axis=(1, 2))
    assert givens.min() >= 24 and givens.max() <= 32
    for puzzle in nine.puzzles[:3]:
        assert brute_force_count(puzzle) == 1


def test_generated_4x4_puzzles_have_unique_solutions_by_brute_force() -> None:
    data = sudoku.generate(60, side=4, givens=(4, 7), seed=1, workers=1)
    assert is_valid_solution(data.solutions, data.puzzles).all()
    givens = (data.puzzles != 0).sum(axis=(1, 2))
    assert givens.min() >= 4 and givens.max() <= 7
    assert all(brute_force_count(p) == 1 for p in data.puzzles)


def test_solution_grids_are_diverse_not_relabelings_of_one_grid(nine: sudoku.SudokuPuzzles) -> None:
    # Relabel each grid so its first row reads 1..9: relabelings of one base grid would all become identical.
    canon = {tuple(np.argsort(s[0])[s - 1].reshape(-1)) for s in nine.solutions}
    assert len(canon) == len(nine.solutions)


def test_generation_is_deterministic_in_seed_and_independent_of_workers() -> None:
    one = sudoku.generate(300, side=4, givens=(5, 8), seed=3, workers=1)
    two = sudoku.generate(300, side=4, givens=(5, 8), seed=3, workers=2)
    assert (one.puzzles == two.puzzles).all() and (one.ratings == two.ratings).all()
    other = sudoku.generate(300, side=4, givens=(5, 8), seed=4, workers=1)
    assert (one.puzzles != other.puzzles).any()


def test_rating_counts_search_nodes_and_filters_by_difficulty(nine: sudoku.SudokuPuzzles) -> None:
    assert [sudoku.rating(p) for p in nine.puzzles[:5]] == nine.ratings[:5].tolist()
    assert sudoku.rating(nine.solutions[0]) == 0
    hard = sudoku.generate(4, side=9, givens=(22, 27), min_rating=2, seed=5, workers=1)
    assert (hard.ratings >= 2).all() and is_valid_solution(hard.solutions, hard.puzzles).all()
    easy = sudoku.generate(10, side=9, givens=(30, 40), max_rating=0, seed=5, workers=1)
    assert (easy.ratings == 0).all()
    found, nodes = sudoku.count_solutions(np.zeros((4, 4), np.int8), limit=1000)
    assert found == 288 and nodes > 0  # the number of 4x4 Sudoku grids


def test_impossible_settings_fail_loudly() -> None:
    with pytest.raises(ValueError, match="givens"):
        sudoku.generate(1, side=9, givens=(40, 30))
    with pytest.raises(RuntimeError, match="made only"):
        sudoku.generate(1, side=4, givens=(1, 2), seed=0, workers=1, max_tries_per_puzzle=20)


def test_csv_round_trip_and_reference_format(tmp_path: Path, nine: sudoku.SudokuPuzzles) -> None:
    path = tmp_path / "train.csv"
    sudoku.write_csv(path, nine, source="unit")
    header, first = path.read_text().splitlines()[:2]
    assert header == "source,question,answer,rating"
    assert first.startswith("unit,") and "." in first.split(",")[1] and "0" not in first.split(",")[1]
    back = sudoku.read_csv(path)
    assert (back.puzzles == nine.puzzles).all() and (back.solutions == nine.solutions).all()
    assert (back.ratings == nine.ratings).all() and back.sources == ["unit"] * 40
    assert len(sudoku.read_csv(path, limit=5).puzzles) == 5


Q = "".join(str((r * 3 + r // 3 + c) % 9 + 1) for r in range(9) for c in range(9))


def _csv_with(tmp_path: Path, row: str, header: str = "source,question,answer,rating") -> Path:
    path = tmp_path / "bad.csv"
    path.write_text(f"{header}\nok,{Q},{Q},0\n{row}\n")
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (f"x,{Q},{Q}", "bad.csv:3: expected 4 columns"),
        (f"x,{Q}1,{Q},0", "bad.csv:3: expected 4 columns"),
        (f"x,x{Q[1:]},{Q},0", "bad.csv:3: characters outside"),
        (f"x,{Q},{Q[1:]}1,0", "bad.csv:3: answer does not solve"),
    ],
)
def test_csv_reader_rejects_bad_rows_with_line_numbers(tmp_path: Path, row: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sudoku.read_csv(_csv_with(tmp_path, row))


def test_csv_reader_rejects_a_foreign_header(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="header"):
        sudoku.read_csv(_csv_with(tmp_path, f"x,{Q},{Q},0", header="question,answer"))


@pytest.mark.parametrize("side", [9, 4])
def test_augmentation_keeps_solutions_valid_and_consistent_with_inputs(side: int) -> None:
    data = sudoku.generate(64, side=side, givens=(30, 40) if side == 9 else (6, 9), seed=2, workers=1)
    inputs, labels = encode_grids(data.puzzles), encode_grids(data.solutions)
    rng = np.random.default_rng(0)
    aug_in, aug_lab = sudoku.augment_batch(inputs, labels, rng)
    assert aug_in.dtype == np.uint8 and aug_in.shape == inputs.shape
    assert is_valid_solution(decode_tokens(aug_lab, side), decode_tokens(aug_in, side)).all()
    assert ((aug_in == 1).sum(axis=1) == (inputs == 1).sum(axis=1)).all()  # blanks move but are never relabelled
    assert (aug_in != inputs).any(axis=1).mean() > 0.9  # each row gets its own draw
    again = sudoku.augment_batch(inputs, labels, np.random.default_rng(0))
    assert (again[0] == aug_in).all() and (again[1] == aug_lab).all()


def test_augmentation_moves_are_exactly_the_reference_ones() -> None:
    # Tokens above the digit range pass through unchanged, so a grid of distinct ones (11 + position) reveals the
    # position map of every row: it must be a transpose or not, then band-respecting row and column permutations.
    b = 400
    probe = np.tile(np.arange(11, 92, dtype=np.uint8), (b, 1))
    digits = encode_grids(np.tile(np.arange(1, 10, dtype=np.int8), (b, 9)).reshape(b, 9, 9))
    moved, relabelled = sudoku.augment_batch(probe, digits, np.random.default_rng(1))
    index = moved.astype(int).reshape(b, 9, 9) - 11
    transposed = (index % 9 == index[:, :, :1] % 9).all(axis=(1, 2))
    assert 0.4 < transposed.mean() < 0.6
    for grid, t in zip(index, transposed, strict=True):
        rows = grid[:, 0] % 9 if t else grid[:, 0] // 9
        cols = grid[0, :] // 9 if t else grid[0, :] % 9
        expected = cols[None, :] * 9 + rows[:, None] if t else rows[:, None] * 9 + cols[None, :]
        assert (grid == expected).all()
        for perm in (rows, cols):
            assert sorted(perm) == list(range(9))
            assert all(len(set(perm[k : k + 3] // 3)) == 1 for k in (0, 3, 6))  # rows stay inside a band
    before = index.reshape(b, 81) % 9 + 2  # the digit token each output cell came from
    maps = [
        sorted(set(zip(src.tolist(), dst.tolist(), strict=True))) for src, dst in zip(before, relabelled, strict=True)
    ]
    digits = list(range(2, 11))
    assert all([s for s, _ in m] == digits and sorted(d for _, d in m) == digits for m in maps)  # one bijection
    assert len({tuple(m) for m in maps}) > 100  # drawn independently per row


def test_build_writes_a_loadable_dataset(tmp_path: Path) -> None:
    root = sudoku.build(tmp_path / "ds", n_train=120, n_test=30, givens=(5, 9), seed=0, side=4, workers=1)
    meta = load_meta(root)
    assert (meta.family, meta.vocab_size, meta.seq_len, meta.num_puzzle_ids, meta.augment) == (
        "sudoku",
        11,
        16,
        1,
        "sudoku",
    )
    train, test = load_split(root, "train"), load_split(root, "test")
    assert len(train) == 120 and len(test) == 30
    assert (train.puzzle_ids == 0).all() and (train.groups == np.arange(120)).all()
    assert is_valid_solution(decode_tokens(train.labels, 4), decode_tokens(train.inputs, 4)).all()
    assert train.labels.min() >= 2  # labels are the full solution, givens included
    assert not {r.tobytes() for r in train.inputs} & {r.tobytes() for r in test.inputs}
    assert "rating" in train.extras

    # Batches leave the read-only memory map as int64 copies, which torch can own without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs, labels, ids = train.tensors(10, 42, torch.device("cpu"))
    assert inputs.dtype == labels.dtype == ids.dtype == torch.int64
    assert (inputs.numpy() == train.inputs[10:42]).all() and (labels.numpy() == train.labels[10:42]).all()
    assert ids.shape == (32,)


def test_build_from_csv_subsamples_train_with_a_seed(tmp_path: Path, nine: sudoku.SudokuPuzzles) -> None:
    sudoku.write_csv(tmp_path / "train.csv", nine)
    sudoku.write_csv(tmp_path / "test.csv", nine)
    root = sudoku.build_from_csv(
        tmp_path / "ds", tmp_path / "train.csv", tmp_path / "test.csv", subsample=10, test_limit=7, seed=1
    )
    train, test = load_split(root, "train"), load_split(root, "test")
    assert len(train) == 10 and len(test) == 7 and load_meta(root).seq_len == 81
    assert (test.inputs == encode_grids(nine.puzzles[:7])).all()


EASY_NEWSPAPER = "003020600900305001001806400008102900700000008006708200002609500800203009005010300"
NORVIG_HARDEST_FIRST = "85...24..72......9..4.........1.7..23.5...9...4...........8..7..17..........36.4."


def _grid(text: str) -> np.ndarray:
    return np.array([0 if ch in ".0" else int(ch) for ch in text], dtype=np.int8).reshape(9, 9)


def test_rating_puts_a_newspaper_puzzle_below_the_first_of_norvigs_hardest() -> None:
    easy, hard = _grid(EASY_NEWSPAPER), _grid(NORVIG_HARDEST_FIRST)
    assert sudoku.count_solutions(easy)[0] == 1 and sudoku.count_solutions(hard)[0] == 1
    assert sudoku.rating(easy) == 0  # singles alone solve it
    assert sudoku.rating(hard) >= 3  # over the hard floor the hard-Sudoku preset trains on


@pytest.fixture(scope="module")
def hard() -> sudoku.SudokuPuzzles:
    return sudoku_hard.generate(24, givens=(17, 23), min_rating=3, seed=11, workers=1, per_walk=2)


def test_hard_puzzles_have_one_solution_their_givens_and_rating(hard: sudoku.SudokuPuzzles) -> None:
    assert is_valid_solution(hard.solutions, hard.puzzles).all()
    givens = (hard.puzzles != 0).sum(axis=(1, 2))
    assert givens.min() >= 17 and givens.max() <= 23
    assert [sudoku.rating(p) for p in hard.puzzles] == hard.ratings.tolist()
    assert hard.ratings.min() >= 3
    for puzzle in hard.puzzles[:4]:
        assert brute_force_count(puzzle) == 1


def test_hard_puzzles_are_minimal_so_every_given_is_needed(hard: sudoku.SudokuPuzzles) -> None:
    for puzzle in hard.puzzles[:3]:
        for r, c in zip(*np.nonzero(puzzle), strict=True):
            fewer = puzzle.copy()
            fewer[r, c] = 0
            assert sudoku.count_solutions(fewer)[0] == 2


def test_the_walk_reaches_fewer_givens_and_harder_puzzles_than_plain_removal() -> None:
    plain = sudoku.generate(64, 9, (17, 30), seed=5, workers=1)
    walked = sudoku_hard.generate(64, (17, 25), min_rating=3, seed=5, workers=1)
    assert (walked.puzzles != 0).sum(axis=(1, 2)).mean() < (plain.puzzles != 0).sum(axis=(1, 2)).mean() - 1
    assert np.median(walked.ratings) > np.median(plain.ratings)


def test_hard_generation_is_deterministic_in_seed() -> None:
    one = sudoku_hard.generate(6, (20, 25), min_rating=2, seed=3, workers=1)
    two = sudoku_hard.generate(6, (20, 25), min_rating=2, seed=3, workers=1)
    assert np.array_equal(one.puzzles, two.puzzles)
    assert not np.array_equal(one.puzzles, sudoku_hard.generate(6, (20, 25), min_rating=2, seed=4, workers=1).puzzles)


def test_hard_settings_below_seventeen_givens_are_refused() -> None:
    with pytest.raises(ValueError, match="17"):
        sudoku_hard.generate(4, givens=(16, 22))


def test_hard_augmentation_keeps_puzzles_and_solutions_valid(hard: sudoku.SudokuPuzzles) -> None:
    inputs, labels = encode_grids(hard.puzzles), encode_grids(hard.solutions)
    a_in, a_lab = sudoku.augment_batch(inputs, labels, np.random.default_rng(0))
    puzzles, solutions = decode_tokens(a_in).reshape(-1, 9, 9), decode_tokens(a_lab).reshape(-1, 9, 9)
    assert is_valid_solution(solutions, puzzles).all()
    assert [sudoku.count_solutions(p)[0] for p in puzzles[:4]] == [1] * 4


def test_hard_build_mixes_easy_puzzles_into_train_only(tmp_path: Path) -> None:
    root = sudoku_hard.build(tmp_path / "d", n_train=40, n_test=8, givens=(19, 24), min_rating=2, easy_share=0.25)
    train, test = load_split(root, "train"), load_split(root, "test")
    givens_train = (np.asarray(train.inputs) > 1).sum(axis=1)
    givens_test = (np.asarray(test.inputs) > 1).sum(axis=1)
    assert len(train) == 40 and len(test) == 8
    assert (givens_train > 24).sum() >= 5  # the plain share, 22-40 givens, mostly above the hard range
    assert givens_test.max() <= 24 and (np.asarray(test.extras["rating"]) >= 2).all()
    rows = {bytes(r) for r in np.asarray(train.inputs)}
    assert not any(bytes(r) in rows for r in np.asarray(test.inputs))
    source = load_meta(root).source
    assert sum(source["hard_givens_histogram"].values()) == 30 + 8

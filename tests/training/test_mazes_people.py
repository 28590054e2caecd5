"""People-style mazes: every generator, ring or not, square or not, loops, rooms, doors give valid puzzles whose
label is a shortest path; the mixed set for the size-agnostic model lays them into one wall canvas."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from inference.canvas import canvas_for
from model.puzzles.maze import GOAL, OPEN, PATH, START, WALL, count_shortest_paths, is_shortest_path_answer
from training.config import load_preset
from training.data import mazes_people
from training.data.dataset import by_canvas, load_meta, load_split
from training.loop import STAGE_SETTINGS
from training.sampler import BatchStream


def border(grid: np.ndarray) -> np.ndarray:
    return np.concatenate([grid[0], grid[-1], grid[1:-1, 0], grid[1:-1, -1]])


@pytest.mark.parametrize("generator", mazes_people.GENERATORS)
@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize("shape", [(9, 9), (7, 13), (12, 15)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_generator_makes_valid_mazes_whose_label_is_the_unique_shortest_path(
    generator: str, ring: bool, shape: tuple[int, int]
) -> None:
    questions, labels, lengths = mazes_people.generate(8, *shape, generator=generator, ring=ring, seed=1)
    assert questions.shape == labels.shape == (8, *shape)
    for q, a, length in zip(questions, labels, lengths, strict=True):
        assert (q == START).sum() == 1 and (q == GOAL).sum() == 1
        assert set(np.unique(q)) <= {WALL, OPEN, START, GOAL}
        assert is_shortest_path_answer(q, a) and count_shortest_paths(q) == 1
        assert (a == PATH).sum() + 1 == length
        if ring:
            assert (border(q) == WALL).all()
        else:  # without the ring the lattice reaches the top-left edge
            assert q[0, 0] != WALL


@pytest.mark.parametrize("generator", mazes_people.GENERATORS)
def test_perfect_mazes_are_spanning_trees_of_the_lattice(generator: str) -> None:
    questions, _, _ = mazes_people.generate(5, 11, 15, generator=generator, ring=True, seed=2)
    for q in questions:
        lattice = q[1:-1:2, 1:-1:2]
        assert (lattice != WALL).all()  # every lattice cell is reached
        open_cells = int((q != WALL).sum())
        assert open_cells == 2 * lattice.size - 1  # m cells joined by m - 1 passages: a tree


def test_loops_and_rooms_make_several_shortest_paths_which_held_out_sets_may_keep() -> None:
    questions, labels, _ = mazes_people.generate(40, 15, 15, generator="prim", loops=0.2, rooms=2, unique=False, seed=4)
    ways = [count_shortest_paths(q) for q in questions]
    assert max(ways) == 2 and min(ways) >= 1
    assert all(is_shortest_path_answer(q, a) for q, a in zip(questions, labels, strict=True))
    uniq, _, _ = mazes_people.generate(10, 15, 15, generator="prim", loops=0.2, rooms=2, unique=True, seed=4)
    assert all(count_shortest_paths(q) == 1 for q in uniq)


@pytest.mark.parametrize("shape", [(11, 11), (10, 14)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_doors_put_s_and_g_in_the_ring(shape: tuple[int, int]) -> None:
    questions, labels, _ = mazes_people.generate(10, *shape, generator="kruskal", ring=True, doors=True, seed=5)
    for q, a in zip(questions, labels, strict=True):
        for token in (START, GOAL):
            r, c = np.argwhere(q == token)[0]
            assert r in (0, 2 * ((shape[0] - 1) // 2)) or c in (0, 2 * ((shape[1] - 1) // 2))
        assert is_shortest_path_answer(q, a)


def test_generation_is_deterministic_in_the_seed() -> None:
    one = mazes_people.generate(6, 9, 11, generator="wilson", seed=7)
    two = mazes_people.generate(6, 9, 11, generator="wilson", seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(one, two, strict=True))
    assert not np.array_equal(one[0], mazes_people.generate(6, 9, 11, generator="wilson", seed=8)[0])
    with pytest.raises(ValueError, match="too small"):
        mazes_people.generate(1, 4, 9, ring=True)


def test_mixed_set_lays_every_style_into_one_wall_canvas_without_train_test_overlap(tmp_path: Path) -> None:
    root = mazes_people.build(tmp_path / "d", 300, 60, max_side=11, min_side=5, seed=3)
    meta = load_meta(root)
    assert (meta.family, meta.vocab_size, meta.seq_len, meta.augment) == ("maze", 6, 144, "dihedral")
    train, test = load_split(root, "train", mmap=False), load_split(root, "test", mmap=False)
    assert len(train) == 300 and len(test) == 60
    for split in (train, test):
        q, a = split.inputs.reshape(-1, 12, 12), split.labels.reshape(-1, 12, 12)
        h, w = split.extras["height"], split.extras["width"]
        assert (q[:, -1] == WALL).all() and (q[:, :, -1] == WALL).all()  # the seam of the torus
        for i in range(len(q)):
            assert (q[i, h[i] :] == WALL).all() and (a[i, h[i] :] == 0).all()  # padding: walls, not scored
            assert is_shortest_path_answer(q[i, : h[i], : w[i]], a[i, : h[i], : w[i]])
    assert set(np.unique(train.extras["generator"])) == set(range(len(mazes_people.GENERATORS)))
    assert set(np.unique(train.extras["ring"])) == {0, 1} and (train.extras["height"] != train.extras["width"]).any()
    seen = {row.tobytes() for row in train.inputs}
    assert not any(row.tobytes() in seen for row in test.inputs)


def test_larger_mazes_go_on_the_smallest_canvas_that_holds_them_as_the_server_lays_them(tmp_path: Path) -> None:
    root = mazes_people.build(tmp_path / "d", 200, 40, max_side=23, min_side=5, seed=3, min_canvas=16)
    assert load_meta(root).seq_len == 16 * 16  # the model's own canvas is the smallest
    train = load_split(root, "train", mmap=False)
    h, w, canvas = train.extras["height"], train.extras["width"], train.extras["canvas"]
    assert [canvas_for(int(max(a, b)), 16, 23) for a, b in zip(h, w, strict=True)] == canvas.tolist()
    assert set(canvas.tolist()) == {16, 24}
    parts = dict(by_canvas(train))
    for side, part in parts.items():
        q, a = part.inputs.reshape(-1, side, side), part.labels.reshape(-1, side, side)
        assert (q[:, -1] == WALL).all() and (q[:, :, -1] == WALL).all()  # the seam of the torus
        ph, pw = part.extras["height"], part.extras["width"]
        for i in range(len(q)):
            assert (q[i, ph[i] :] == WALL).all() and (a[i, :, pw[i] :] == 0).all()
            assert is_shortest_path_answer(q[i, : ph[i], : pw[i]], a[i, : ph[i], : pw[i]])
    stream = BatchStream(train, 8, seed=0, bucket_run=1)
    assert {int(np.sqrt(stream.next().inputs.shape[1])) for _ in range(12)} == {16, 24}


def test_maze_any_cpu_preset_is_a_conv_model_on_small_people_mazes() -> None:
    preset = load_preset("maze-any-cpu")
    assert preset.model.mixer == "conv" and preset.model.pos_encodings == "none"
    assert preset.data.builder == "maze-people" and preset.data.grid_size <= 15
    assert preset.model.seq_len == (preset.data.grid_size + 1) ** 2
    assert preset.train.threads == 1 and preset.train.dtype == "float32" and preset.train.save_every_steps > 0


def test_the_second_maze_any_stage_trains_the_same_model_on_larger_mazes_on_its_own_canvases() -> None:
    first, second = load_preset("maze-any-cpu"), load_preset("maze-any-cpu-stage2")
    # init_from needs the same architecture, and the server the same canvas; only the ACT schedule may change
    schedule = {name: getattr(first.model, name) for name in STAGE_SETTINGS}
    assert dataclasses.replace(second.model, training=first.model.training, **schedule) == first.model
    assert second.model.halt_max_steps > first.model.halt_max_steps  # big mazes train past stage 1's horizon
    assert second.train.init_from == "weights/maze-any" and second.data.builder == "maze-people"
    assert second.data.grid_size > first.data.grid_size and second.data.min_canvas == first.data.grid_size + 1
    assert second.data.seed != first.data.seed  # fresh mazes, not the first stage's again

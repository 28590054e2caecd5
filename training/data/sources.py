"""From a preset's `[data]` section (or an evaluation spec) to built, memory-mapped splits.

Datasets are built once into the cache directory; `data_config.json` there records what was built, so a
changed `[data]` section rebuilds instead of silently training on stale data.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from inference.canvas import MARGIN, canvas_for
from model.config import TRMConfig
from model.puzzles.maze import WALL, MazeCodec, inside
from training.config import DataConfig, Preset
from training.data import maze, sudoku
from training.data.dataset import DatasetMeta, PuzzleSet, load_meta, load_split
from training.sampler import Augment

log = logging.getLogger(__name__)


def _csv_pair(path: str) -> tuple[Path, Path]:
    root = Path(path)
    train, test = root / "train.csv", root / "test.csv"
    for p in (train, test):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: this preset reads the public CSVs from data.path={path!r}")
    return train, test


def build(data: DataConfig, out: Path) -> Path:
    """Run the builder `data.builder` into `out`."""
    if data.builder == "sudoku":
        return sudoku.build(
            out, data.n_train, data.n_test, (data.givens_min, data.givens_max), data.seed, side=data.grid_size
        )
    if data.builder == "sudoku-hard":
        from training.data import sudoku_hard

        return sudoku_hard.build(
            out,
            data.n_train,
            data.n_test,
            (data.givens_min, data.givens_max),
            data.min_rating,
            data.easy_share,
            data.seed,
        )
    if data.builder == "sudoku-csv":
        train, test = _csv_pair(data.path)
        return sudoku.build_from_csv(
            out, train, test, subsample=data.subsample or None, test_limit=data.n_test or None, seed=data.seed
        )
    if data.builder == "maze":
        return maze.build(
            out,
            data.n_train,
            data.n_test,
            side=data.grid_size,
            loops=data.maze_loops,
            min_path=data.min_path,
            seed=data.seed,
            min_side=data.min_grid_size,
        )
    if data.builder == "maze-people":
        from training.data import mazes_people

        return mazes_people.build(
            out,
            data.n_train,
            data.n_test,
            max_side=data.grid_size,
            min_side=data.min_grid_size or 5,
            loops_max=data.maze_loops,
            seed=data.seed,
            min_canvas=data.min_canvas,
        )
    if data.builder == "maze-csv":
        train, test = _csv_pair(data.path)
        return maze.build_from_csv(out, train, test, test_limit=data.n_test or None)
    if data.builder == "arc":
        from training.data import arc

        return arc.build(
            out,
            source=data.arc_source,
            subsets=data.arc_subsets or None,
            test_set=data.arc_test_set,
            canvas=data.min_canvas,
            num_aug=data.num_aug,
            seed=data.seed,
            max_tasks=data.arc_max_tasks or None,
            side=data.grid_size,
        )
    raise ValueError(f"unknown data builder {data.builder!r}")


def build_or_load(preset: Preset) -> tuple[DatasetMeta, PuzzleSet, PuzzleSet | None]:
    """The preset's dataset, built into its cache directory on first use."""
    root = preset.cache_dir
    stamp = root / "data_config.json"
    wanted = {k: v for k, v in asdict(preset.data).items() if k != "cache_dir"}  # where, not what
    # A field added to DataConfig since the cache was built is still at its default there, so it is filled in
    # rather than taken for a change (a rebuild of the hard-Sudoku set takes minutes); a field since renamed or
    # removed no longer describes anything and is dropped.
    defaults = {k: v for k, v in asdict(DataConfig()).items() if k != "cache_dir"}
    root.parent.mkdir(parents=True, exist_ok=True)
    # Two runs of one preset started together (a run and its benchmark twin) would otherwise build into the same
    # directory at once, and one would read the other's half-written arrays; the second waits and reuses the set.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamped = json.loads(stamp.read_text()) if stamp.is_file() else None
        built = {**defaults, **{k: v for k, v in stamped.items() if k in defaults}} if stamped is not None else None
        if built != wanted:
            if root.exists():
                log.info("data config changed; rebuilding %s", root)
                shutil.rmtree(root)
            log.info("building dataset %s with builder %s", root, preset.data.builder)
            build(preset.data, root)
            stamp.write_text(json.dumps(wanted, indent=2))
    meta = load_meta(root)
    test = load_split(root, "test") if (root / "test").is_dir() else None
    return meta, load_split(root, "train"), test


def fit_to_data(preset: Preset, meta: DatasetMeta) -> Preset:
    """The preset with the model sized to its dataset (sequence length, puzzle-table rows) and the data described
    in the model's training record, which travels into config.json; an error if the dataset is another family."""
    if meta.family != preset.model.family or meta.vocab_size != preset.model.vocab_size:
        raise ValueError(
            f"dataset is {meta.family}/vocab {meta.vocab_size}, preset model wants "
            f"{preset.model.family}/vocab {preset.model.vocab_size}"
        )
    model = replace(
        preset.model,
        seq_len=meta.seq_len,
        num_puzzle_ids=meta.num_puzzle_ids,
        training={**preset.model.training, "data": meta.description, "data_source": meta.source},
    )
    return replace(preset, model=model)


def augmentation_for(meta: DatasetMeta) -> Augment | None:
    """The on-the-fly augmentation named in the dataset's meta."""
    table: dict[str, Augment | None] = {
        "sudoku": sudoku.augment_batch,
        "dihedral": maze.augment_batch,
        "none": None,
    }
    if meta.augment not in table:
        raise ValueError(f"dataset asks for unknown augmentation {meta.augment!r}")
    return table[meta.augment]


def pad_mazes(data: PuzzleSet, side: int, model_side: int) -> PuzzleSet:
    """Lay smaller mazes into a larger model's grid the way the server does: walls around, the padding unscored."""
    if side == model_side:
        return data
    n = len(data)
    inputs = maze.pad(np.asarray(data.inputs).reshape(n, side, side), model_side, WALL)
    labels = maze.pad(np.asarray(data.labels).reshape(n, side, side), model_side, 0)
    return PuzzleSet(inputs.reshape(n, -1), labels.reshape(n, -1), data.puzzle_ids, data.groups, dict(data.extras))


def serve_layout(questions: np.ndarray, labels: np.ndarray, config: TRMConfig) -> PuzzleSet:
    """Mazes [n, h, w] and their labels as the server runs them on this model: the ring stripped, laid into the
    model's grid, or for a size-agnostic model into the canvas `inference.canvas` picks, with a wall margin; the
    padding is unscored (label 0). All mazes must land on one canvas (a set of one size does, ring or not, unless
    the ring takes it under a canvas boundary)."""
    solved = [inside(q).shape for q in questions]
    if config.mixer == "conv":
        sides = {canvas_for(max(h, w), config.grid_side) for h, w in solved}
        if len(sides) != 1:
            raise ValueError(f"these mazes run on canvases {sorted(sides)} in the server; evaluate them apart")
        side = sides.pop()
        codec = MazeCodec(side * side, margin=MARGIN)
    else:
        codec = MazeCodec(config.seq_len)
        side = codec.side
    longest = max((max(shape) for shape in solved), default=0)
    if longest > codec.fits:
        raise ValueError(f"mazes of side {longest} do not fit this model's {codec.fits}x{codec.fits} grid")
    n = len(questions)
    inputs = np.stack([codec.encode(q) for q in questions])
    marked = np.stack([codec.encode(a) for a in labels])
    scored = np.zeros((n, side, side), dtype=bool)
    for i, (h, w) in enumerate(solved):
        scored[i, :h, :w] = True
    return PuzzleSet(
        inputs,
        np.where(scored.reshape(n, -1), marked, 0).astype(np.uint8),
        np.zeros(n, dtype=np.int32),
        np.arange(n, dtype=np.int32),
        {
            "height": np.array([q.shape[0] for q in questions], np.int32),
            "width": np.array([q.shape[1] for q in questions], np.int32),
        },
    )


def _people_mazes(spec: str, fields: list[str], config: TRMConfig) -> PuzzleSet:
    from training.data import mazes_people

    try:
        nums = [int(x) for x in fields]
    except ValueError:
        raise ValueError(f"evaluation data {spec!r}: the generate: fields must be numbers") from None
    if not 3 <= len(nums) <= 5 or (len(nums) == 5 and nums[4] not in (0, 1)):
        raise ValueError(f"evaluation data {spec!r}: expected generate:maze-people:N:H:W[:SEED[:RING]], RING 0 or 1")
    n, h, w = nums[:3]
    seed = nums[3] if len(nums) > 3 else 12345
    ring = bool(nums[4]) if len(nums) > 4 else True
    questions, labels = mazes_people.held_out(n, h, w, ring, seed)
    return serve_layout(questions, labels, config)


EVAL_CACHE = Path(os.environ.get("TRM_EVAL_CACHE", "data_cache/eval"))
"""Where generated held-out sets are kept, one directory per spec: generation is deterministic by seed, and the
hard-Sudoku generator takes minutes for a few hundred puzzles of 17-21 givens, so each set is built once.
`TRM_EVAL_CACHE` moves it (the tests send it, and the CLIs they start, to a temporary directory)."""


def _keep(build: Callable[[Path], object], cache: Path) -> Path:
    """Build a set into a new directory beside `cache` and move it there in one rename, so a half-built set is
    never read. Where the cache cannot be written (a read-only tree) the set is built in a temporary directory for
    this run alone; where another process got there first, its copy is used."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        built, writable = Path(tempfile.mkdtemp(prefix=".build-", dir=cache.parent)), True
    except OSError:
        built, writable = Path(tempfile.mkdtemp(prefix="trm-eval-")), False
    build(built)
    if not writable:
        return built
    try:
        built.rename(cache)
    except OSError:
        shutil.rmtree(built, ignore_errors=True)
    return cache


def load_eval_data(spec: str, config: TRMConfig) -> PuzzleSet:
    """Held-out puzzles for `training.evaluate`.

    `spec` is a built dataset directory (its test split), a CSV file in the public Sudoku-Extreme / Maze-Hard
    format, or `generate:sudoku:N:GMIN:GMAX[:SEED]`, `generate:sudoku-hard:N:GMIN:GMAX:FLOOR[:SEED]` (FLOOR: the
    least rating, `training.data.sudoku_hard`), `generate:maze:N:SIDE:MINPATH[:SEED[:LOOPS]]` (LOOPS: the
    share of inner walls opened, 0.1 as in training by default; 0 gives perfect mazes, one route from S to G) or
    `generate:maze-people:N:H:W[:SEED[:RING]]` (`mazes_people.held_out`; RING 1, the default, draws the wall ring,
    0 leaves it out), laid out as the server lays them out. Generated sets built to disk are kept in `EVAL_CACHE`.
    """
    if spec.startswith("generate:"):
        _, kind, *fields = spec.split(":")
        if kind == "maze-people":
            return _people_mazes(spec, fields, config)
        ints = 5 if kind == "sudoku-hard" else 4
        try:
            nums = [int(x) for x in fields[:ints]]
            loops = float(fields[4]) if kind == "maze" and len(fields) > 4 else maze.DEFAULT_LOOPS
        except ValueError:
            raise ValueError(f"evaluation data {spec!r}: the generate: fields must be numbers") from None
        if len(nums) < ints - 1 or len(fields) > (5 if kind == "maze" else ints):
            raise ValueError(
                f"evaluation data {spec!r}: expected generate:sudoku:N:GMIN:GMAX[:SEED], "
                "generate:sudoku-hard:N:GMIN:GMAX:FLOOR[:SEED] or generate:maze:N:SIDE:MINPATH[:SEED[:LOOPS]]"
            )
        if kind not in ("sudoku", "sudoku-hard", "maze"):
            raise ValueError(f"cannot generate {kind!r} puzzles (sudoku, sudoku-hard or maze)")
        seed = nums[ints - 1] if len(nums) > ints - 1 else 12345
        side = int(config.seq_len**0.5)
        key = f"{kind}-{'-'.join(map(str, nums))}-seed{seed}" + (f"-loops{loops}" if kind == "maze" else f"-side{side}")
        cached = EVAL_CACHE / key
        if not (cached / "test").is_dir():

            def build(out: Path) -> None:
                if kind == "sudoku-hard":
                    from training.data import sudoku_hard

                    sudoku_hard.build(out, 0, nums[0], (nums[1], nums[2]), min_rating=nums[3], seed=seed)
                elif kind == "sudoku":
                    sudoku.build(out, 0, nums[0], (nums[1], nums[2]), seed=seed, side=side)
                else:
                    maze.build(out, 0, nums[0], side=nums[1], min_path=nums[2], seed=seed, loops=loops)

            cached = _keep(build, cached)
        data = load_split(cached, "test", mmap=False)
        return pad_mazes(data, nums[1], config.grid_side) if kind == "maze" else data
    path = Path(spec)
    if path.is_dir():
        return load_split(path, "test")
    if path.suffix == ".csv":
        tmp = Path(tempfile.mkdtemp(prefix="trm-eval-"))
        if config.family == "sudoku":
            sudoku.build_from_csv(tmp, path, path)
        elif config.family == "maze":
            maze.build_from_csv(tmp, path, path)
        else:
            raise ValueError("CSV evaluation data is for Sudoku and maze models")
        return load_split(tmp, "test", mmap=False)
    raise FileNotFoundError(f"evaluation data {spec!r}: not a dataset directory, CSV file or generate: spec")

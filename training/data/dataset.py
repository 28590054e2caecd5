"""The on-disk dataset format every builder writes and the training loop streams from.

Layout of a built dataset directory:

    meta.json                   DatasetMeta: family, vocab, seq_len, puzzle-id count, augmentation, provenance
    identifiers.json            list of puzzle-id names; index = id (id 0 is "<blank>", shared by Sudoku/maze)
    <split>/inputs.npy          uint8 [N, seq_len]  input tokens
    <split>/labels.npy          uint8 [N, seq_len]  target tokens; 0 (PAD) marks positions the loss ignores
    <split>/puzzle_ids.npy      int32 [N]           row of the puzzle-embedding table for each example
    <split>/groups.npy          int32 [N]           original puzzle each example came from (augmented copies share it)
    <split>/<extra>.npy         optional per-example arrays a family needs (e.g. ARC test-input indices)

Arrays are plain .npy so they can be memory-mapped: a split is read lazily, never unpickled.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

CORE_ARRAYS = ("inputs", "labels", "puzzle_ids", "groups")
CSV_HEADER = ["source", "question", "answer", "rating"]
"""Columns of the public Sudoku-Extreme and Maze-Hard CSV files."""


@dataclass
class DatasetMeta:
    """What a dataset holds and how to train on it.

    `augment` names the on-the-fly augmentation the loop applies to training batches ("sudoku" for digit and
    band/stack shuffles, "dihedral" for the 8 symmetries, "none" where variants were built ahead, as for ARC).
    """

    family: str
    vocab_size: int
    seq_len: int
    num_puzzle_ids: int = 1
    augment: str = "none"
    description: str = ""
    source: dict[str, object] = field(default_factory=dict)


@dataclass
class PuzzleSet:
    """One split in memory (or memory-mapped)."""

    inputs: np.ndarray
    labels: np.ndarray
    puzzle_ids: np.ndarray
    groups: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.inputs)
        if self.inputs.shape != self.labels.shape or self.inputs.ndim != 2:
            raise ValueError(f"inputs {self.inputs.shape} and labels {self.labels.shape} must be equal [N, L]")
        for name, arr in [("puzzle_ids", self.puzzle_ids), ("groups", self.groups), *self.extras.items()]:
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows, inputs have {n}")

    def __len__(self) -> int:
        return len(self.inputs)

    def tensors(self, lo: int, hi: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Rows lo..hi as int64 tensors (inputs, labels, puzzle ids) on `device`. The rows are copied out of the
        read-only memory map first: torch must not wrap memory it cannot write."""

        def rows(arr: np.ndarray) -> Tensor:
            return torch.from_numpy(np.array(arr[lo:hi], dtype=np.int64)).to(device)

        return rows(self.inputs), rows(self.labels), rows(self.puzzle_ids)

    def subset(self, index: np.ndarray) -> PuzzleSet:
        return PuzzleSet(
            self.inputs[index],
            self.labels[index],
            self.puzzle_ids[index],
            self.groups[index],
            {k: v[index] for k, v in self.extras.items()},
        )


def save_dataset(
    root: str | Path, meta: DatasetMeta, splits: dict[str, PuzzleSet], identifiers: list[str] | None = None
) -> Path:
    """Write a dataset directory; returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        d = root / name
        d.mkdir(exist_ok=True)
        np.save(d / "inputs.npy", np.ascontiguousarray(split.inputs, dtype=np.uint8))
        np.save(d / "labels.npy", np.ascontiguousarray(split.labels, dtype=np.uint8))
        np.save(d / "puzzle_ids.npy", np.ascontiguousarray(split.puzzle_ids, dtype=np.int32))
        np.save(d / "groups.npy", np.ascontiguousarray(split.groups, dtype=np.int32))
        for key, arr in split.extras.items():
            np.save(d / f"{key}.npy", np.ascontiguousarray(arr))
    ids = identifiers if identifiers is not None else ["<blank>"]
    (root / "identifiers.json").write_text(json.dumps(ids))
    (root / "meta.json").write_text(json.dumps(asdict(meta), indent=2))
    return root


def load_meta(root: str | Path) -> DatasetMeta:
    return DatasetMeta(**json.loads((Path(root) / "meta.json").read_text()))


def load_identifiers(root: str | Path) -> list[str]:
    names: list[str] = json.loads((Path(root) / "identifiers.json").read_text())
    return names


def load_split(root: str | Path, split: str, mmap: bool = True) -> PuzzleSet:
    """Read one split; memory-mapped by default so large sets stream from disk."""
    d = Path(root) / split
    if not d.is_dir():
        raise FileNotFoundError(f"dataset split not found: {d}")
    mode: Literal["r"] | None = "r" if mmap else None
    arrays = {name: np.load(d / f"{name}.npy", mmap_mode=mode) for name in CORE_ARRAYS}
    extras = {p.stem: np.load(p, mmap_mode=mode) for p in sorted(d.glob("*.npy")) if p.stem not in CORE_ARRAYS}
    return PuzzleSet(**arrays, extras=extras)


def read_csv_rows(path: str | Path, limit: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of a public puzzle CSV after checking its header; at most `limit` rows."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != CSV_HEADER:
            raise ValueError(f"{path}: header is {header}, expected {','.join(CSV_HEADER)}")
        for count, (line, row) in enumerate(enumerate(reader, start=2)):
            if limit is not None and count >= limit:
                return
            yield line, row


def write_csv_rows(path: str | Path, rows: Iterable[list[object]]) -> None:
    """Write rows under the public CSV header, so generated sets can be shared and re-read."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)


def crop(rows: np.ndarray, canvas: int) -> np.ndarray:
    """Rows [n, side*side] stored on a square canvas cut to their top-left canvas x canvas corner: [n, canvas**2].

    A size-agnostic ARC dataset stores every example on its largest canvas, each in the top-left corner of the
    canvas its task runs on (`training.data.arc.build`), so cutting gives exactly the tokens the model steps."""
    n = len(rows)
    side = math.isqrt(rows.shape[1])
    return np.ascontiguousarray(np.asarray(rows).reshape(n, side, side)[:, :canvas, :canvas].reshape(n, -1))


def by_canvas(data: PuzzleSet) -> list[tuple[int | None, PuzzleSet]]:
    """A split whose examples carry their own canvas (`canvas` extra) as one cut split per canvas, smallest first;
    any other split as [(None, data)]."""
    if "canvas" not in data.extras:
        return [(None, data)]
    canvases = np.asarray(data.extras["canvas"])
    out: list[tuple[int | None, PuzzleSet]] = []
    for c in sorted(int(v) for v in np.unique(canvases)):
        part = data.subset(np.flatnonzero(canvases == c))
        out.append(
            (c, PuzzleSet(crop(part.inputs, c), crop(part.labels, c), part.puzzle_ids, part.groups, part.extras))
        )
    return out

"""A deterministic stream of global training batches.

Each epoch visits every group (original puzzle) once in a shuffled order, takes one random variant (puzzle id)
of it and all that variant's examples, as the reference does; the last partial batch of an epoch is dropped.
Every random choice is derived from (seed, epoch, position), so the stream is resumable from `(epoch, offset)`
alone and identical across data-parallel ranks, which each take their slice of every global batch.

A size-agnostic ARC set (examples with their own `canvas`) is batched per canvas, since a batch needs one shape:
an epoch's examples are split by canvas, cut into batches, and the batches shuffled in runs of `bucket_run` of
one canvas, so the trainer, which restarts its slots when the shape changes, rarely has to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.data.dataset import PuzzleSet, crop

Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass
class Batch:
    inputs: np.ndarray  # (B, L) uint8
    labels: np.ndarray  # (B, L) uint8
    puzzle_ids: np.ndarray  # (B,) int64


class BatchStream:
    def __init__(
        self,
        data: PuzzleSet,
        batch_size: int,
        seed: int,
        augment: Augment | None = None,
        epoch: int = 0,
        offset: int = 0,
        bucket_run: int = 32,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.epoch = epoch
        self.offset = offset
        self.bucket_run = bucket_run
        self._canvas = np.asarray(data.extras["canvas"]) if "canvas" in data.extras else None
        # Examples sorted by (group, puzzle); per group the ranges of each of its puzzles.
        order = np.lexsort((np.asarray(data.puzzle_ids), np.asarray(data.groups)))
        self._sorted = order
        keys = np.stack([np.asarray(data.groups)[order], np.asarray(data.puzzle_ids)[order]], axis=1)
        change = np.ones(len(order), dtype=bool)
        change[1:] = np.any(keys[1:] != keys[:-1], axis=1)
        self._puzzle_starts = np.flatnonzero(change)
        self._puzzle_ends = np.append(self._puzzle_starts[1:], len(order))
        puzzle_group = keys[self._puzzle_starts, 0]
        gchange = np.ones(len(puzzle_group), dtype=bool)
        gchange[1:] = puzzle_group[1:] != puzzle_group[:-1]
        self._group_first = np.flatnonzero(gchange)  # first puzzle of each group
        self._group_count = np.diff(np.append(self._group_first, len(puzzle_group)))
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        if self.examples_per_epoch() < batch_size:
            raise ValueError(f"an epoch has {self.examples_per_epoch()} examples, fewer than the batch {batch_size}")

    @property
    def num_groups(self) -> int:
        return len(self._group_first)

    def examples_per_epoch(self) -> int:
        """Mean examples per epoch (exact for one example per puzzle)."""
        return round(len(self._sorted) * self.num_groups / len(self._puzzle_starts))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            groups = rng.permutation(self.num_groups)
            pick = self._group_first[groups] + (rng.random(len(groups)) * self._group_count[groups]).astype(np.int64)
            parts = [self._sorted[s:e] for s, e in zip(self._puzzle_starts[pick], self._puzzle_ends[pick], strict=True)]
            order = np.concatenate(parts)
            if self._canvas is not None:
                order = self._bucketed(order, rng)
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def _bucketed(self, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The epoch's order regrouped so every batch holds one canvas: per canvas, whole batches in epoch order
        (a partial one dropped), gathered into runs of `bucket_run` batches, and the runs shuffled."""
        assert self._canvas is not None
        canvases = self._canvas[order]
        runs = []
        for c in np.unique(canvases):
            rows = order[canvases == c]
            rows = rows[: len(rows) // self.batch_size * self.batch_size].reshape(-1, self.batch_size)
            runs += [rows[i : i + self.bucket_run].reshape(-1) for i in range(0, len(rows), self.bucket_run)]
        return np.concatenate([runs[i] for i in rng.permutation(len(runs))]) if runs else order[:0]

    def next(self) -> Batch:
        order = self._epoch_order(self.epoch)
        if self.offset + self.batch_size > len(order):
            self.epoch, self.offset = self.epoch + 1, 0
            order = self._epoch_order(self.epoch)
        idx = np.sort(order[self.offset : self.offset + self.batch_size])  # sorted reads are kinder to mmap
        idx = idx[np.random.default_rng([self.seed, self.epoch, self.offset, 1]).permutation(len(idx))]
        inputs = np.asarray(self.data.inputs[idx])
        labels = np.asarray(self.data.labels[idx])
        if self.augment is not None:
            inputs, labels = self.augment(inputs, labels, np.random.default_rng([self.seed, self.epoch, self.offset]))
        ids = np.asarray(self.data.puzzle_ids[idx]).astype(np.int64)
        if self._canvas is not None:
            canvas = int(self._canvas[idx[0]])
            inputs, labels = crop(inputs, canvas), crop(labels, canvas)
        self.offset += self.batch_size
        return Batch(inputs, labels, ids)

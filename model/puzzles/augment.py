"""ARC augmentation and voting, shared by the dataset builder and the server's test-time adaptation.

A variant is one of the 8 dihedral symmetries plus a permutation of the colours 1..9 (0, the black background,
stays fixed), exactly as the reference `build_arc_dataset.py`: colours are mapped first, then the symmetry is
applied; the inverse undoes the symmetry first, then the colours. Each variant gets its own puzzle id, named
`"<task>|||t<tid>|||<perm digits>"`; the un-augmented original keeps the bare task name, as in the reference's
identifiers.json. Predictions of all variants of one test input are mapped back and voted on (TRM_REFERENCE §2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.puzzles.arc import ArcTask, Grid
from model.puzzles.dihedral import NUM_DIHEDRAL, dihedral, inverse_dihedral

SEPARATOR = "|||"
_IDENTITY_PERM = tuple(range(10))


@dataclass(frozen=True)
class Variant:
    """A dihedral id and a colour map: colour c becomes `perm[c]`; perm[0] == 0 always."""

    tid: int = 0
    perm: tuple[int, ...] = _IDENTITY_PERM

    def __post_init__(self) -> None:
        if not 0 <= self.tid < NUM_DIHEDRAL:
            raise ValueError(f"dihedral id {self.tid} out of range 0..7")
        if sorted(self.perm) != list(range(10)) or self.perm[0] != 0:
            raise ValueError(f"colour permutation must permute 0..9 and keep 0 fixed, got {self.perm}")

    @property
    def is_identity(self) -> bool:
        return self.tid == 0 and self.perm == _IDENTITY_PERM


IDENTITY = Variant()


def apply_variant(grid: np.ndarray, variant: Variant) -> np.ndarray:
    """Augment a grid (or a batch [..., H, W]) of colours 0..9: map colours, then apply the symmetry."""
    mapping = np.asarray(variant.perm, dtype=np.uint8)
    return np.ascontiguousarray(dihedral(mapping[np.asarray(grid)], variant.tid))


def invert_variant(grid: np.ndarray, variant: Variant) -> np.ndarray:
    """Map a grid predicted for the augmented task back to the original task's frame and colours."""
    inverse = np.argsort(np.asarray(variant.perm)).astype(np.uint8)
    return np.ascontiguousarray(inverse[inverse_dihedral(np.asarray(grid), variant.tid)])


def variant_name(task: str, variant: Variant) -> str:
    """Puzzle-id name of a variant; the identity keeps the bare task name, as in the reference identifiers."""
    if variant.is_identity:
        return task
    digits = "".join(str(c) for c in variant.perm)
    return f"{task}{SEPARATOR}t{variant.tid}{SEPARATOR}{digits}"


def parse_variant_name(name: str) -> tuple[str, Variant]:
    """Inverse of `variant_name`: (task name, variant); a name without the separator is the identity."""
    if SEPARATOR not in name:
        return name, IDENTITY
    parts = name.split(SEPARATOR)
    if len(parts) != 3 or not parts[1].startswith("t") or not parts[1][1:].isdigit() or not parts[2].isdigit():
        raise ValueError(f"not an ARC variant name: {name!r}")
    return parts[0], Variant(int(parts[1][1:]), tuple(int(d) for d in parts[2]))


def random_variant(rng: np.random.Generator) -> Variant:
    """A uniform dihedral id and a uniform permutation of colours 1..9, drawn in the reference's order."""
    tid = int(rng.integers(0, NUM_DIHEDRAL))
    perm = (0, *(int(c) for c in rng.permutation(np.arange(1, 10))))
    return Variant(tid, perm)


def _grid_hash(grid: np.ndarray) -> bytes:
    # Shape goes into the hash so a 2x3 and a 3x2 grid with the same bytes differ.
    return hashlib.sha256(bytes(grid.shape) + np.ascontiguousarray(grid, dtype=np.uint8).tobytes()).digest()


def task_hash(task: ArcTask, variant: Variant = IDENTITY) -> str:
    """Hash of a task's augmented pairs, order-free (sorted pair hashes), as the reference's `puzzle_hash`.

    Two variants with the same hash present the model with the same puzzle (a symmetric task, or a colour swap of
    colours the task does not use), so only one of them is kept. Test inputs without a known answer hash their
    input alone.
    """
    pair_hashes = []
    for pair in task.pairs():
        out = b"" if pair.output is None else _grid_hash(apply_variant(pair.output, variant))
        pair_hashes.append(_grid_hash(apply_variant(pair.input, variant)) + b"|" + out)
    pair_hashes.sort()
    return hashlib.sha256(b"||".join(pair_hashes)).hexdigest()


def make_variants(task: ArcTask, n: int, rng: np.random.Generator, max_tries: int = 5000) -> list[Variant]:
    """Up to `n` variants of `task` that are pairwise distinct as puzzles, the identity first.

    `n` counts the identity, so the reference's `--num-aug 1000` is `n=1001` with `max_tries=5000`
    (ARCAugmentRetriesFactor 5). Random variants whose augmented pairs hash like an earlier one are dropped, so a
    task with symmetric or few-coloured grids gets fewer than `n`.
    """
    if n <= 0:
        return []
    variants = [IDENTITY]
    seen = {task_hash(task)}
    for _ in range(max_tries):
        if len(variants) >= n:
            break
        variant = random_variant(rng)
        h = task_hash(task, variant)
        if h not in seen:
            seen.add(h)
            variants.append(variant)
    return variants


def vote(candidates: Sequence[tuple[np.ndarray | Grid, float]]) -> list[Grid]:
    """Rank distinct predicted grids by (vote count, mean halting probability), both descending.

    `candidates` are (grid already mapped back to the original frame, sigmoid(q_halt)) for every variant of one
    test input; the first two ranked grids are the ARC submission's attempt_1 and attempt_2. Full ties keep the
    order of first appearance.
    """
    tally: dict[tuple[tuple[int, ...], bytes], list[float]] = {}
    grids: dict[tuple[tuple[int, ...], bytes], Grid] = {}
    for grid, prob in candidates:
        arr = np.asarray(grid, dtype=np.uint8)
        if arr.size == 0:
            arr = arr.reshape(0, 0)
        key = (arr.shape, arr.tobytes())
        if key not in tally:
            tally[key] = []
            grids[key] = arr.astype(np.int64).tolist()
        tally[key].append(float(prob))
    order = sorted(tally, key=lambda k: (len(tally[k]), sum(tally[k]) / len(tally[k])), reverse=True)
    return [grids[k] for k in order]

"""ARC requests: which puzzle vectors a task is run with, and how its variants' answers become two attempts.

A known task (named by `task_id`, or whose demonstrations hash like those of a task in the checkpoint's
`test_puzzles.json`) runs with its trained puzzle-table rows: every trained variant of it that
`identifiers.json` names, up to `arc_max_variants`. Any other task goes through test-time adaptation: the
augmented variants come from `make_variants` (the dataset builder's own augmentation), one puzzle vector per
variant is fitted to the demonstrations with the network frozen (`model.adapt.fit_puzzle_vectors`), in a worker
thread, on a private copy of the network. Either way each (variant, test input) is one scheduler job; the
answers are mapped back to the task's frame and voted on (TRM_REFERENCE §2).

Thread safety: the scheduler thread runs the engine's model under inference mode; adaptation never touches that
model's autograd flags or buffers, it trains vectors on a `frozen_copy` made once per model, and one lock per
model lets a single adaptation run at a time (a second waits, its wait counted against its own deadline).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from inference.arc import ARC_DEFAULTS, ArcRecipe, UnseenAnswer, solve_unseen, unseen_variants
from inference.halting import HaltingPolicy
from model.adapt import demonstration_batch, fit_puzzle_vectors, frozen_copy, known_variants
from model.puzzles.arc import ArcTask, parse_task
from model.puzzles.augment import Variant, task_hash
from model.puzzles.base import PuzzleError
from model.trm import TRM

log = logging.getLogger(__name__)

TASKS_FILE = "test_puzzles.json"  # raw tasks of the checkpoint's dataset, as training.data.arc.build writes them

Mode = Literal["known", "adapted"]


class UnknownTask(KeyError):
    """A `task_id` the model has no trained rows for."""


@dataclass
class ArcPlan:
    """How one ARC request is run: its variants, the vector of each, and (after the run) nothing else."""

    mode: Mode
    task_id: str | None
    variants: list[Variant]
    side: int
    """The canvas the task runs on: the model's own, or for a size-agnostic model the one its grids need."""
    vectors: np.ndarray | None = None  # (V, hidden) fp32, one per variant; None until adaptation ran
    adapt_s: float = 0.0
    losses: list[float] = field(default_factory=list)


def _demo_hash(task: ArcTask) -> str:
    """Order-free hash of a task's demonstration pairs only (test inputs differ between requests of one task)."""
    return task_hash(ArcTask(task.train, ()))


class ArcModel:
    """Per ARC model: the known-task index, the demonstration-hash index, and the adaptation copy."""

    def __init__(
        self, model: TRM, table: np.ndarray, identifiers: list[str], side: int, path: Path, dtype: torch.dtype
    ) -> None:
        self.side = side  # the longest grid side the model takes
        self.dtype = dtype  # the server's `dtype` setting, resolved: test-time training runs in it
        self.table = table
        self._source = model
        self._copy: TRM | None = None
        self._init: torch.Tensor | None = None
        self._lock = threading.Lock()
        # Trained rows of every known task (rows past the table, from a mismatched identifiers.json, are dropped).
        self.known = {
            task: kept
            for task, rows in known_variants(identifiers).items()
            if (kept := [(row, v) for row, v in rows if row < len(table)])
        }
        self.by_hash = self._hash_index(path)

    def _hash_index(self, path: Path) -> dict[str, str]:
        """Demonstration hash -> task id for the known tasks whose raw JSON the checkpoint carries."""
        file = path / TASKS_FILE
        if not file.is_file():
            return {}
        index: dict[str, str] = {}
        try:
            raw_tasks = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot read %s (%s); demonstrations will not be matched", path, TASKS_FILE, exc)
            return {}
        for task_id, raw in raw_tasks.items():
            if task_id not in self.known:
                continue
            try:
                task = parse_task(raw, self.side)
            except PuzzleError:  # larger than this model's canvas: it cannot be asked about anyway
                continue
            index[_demo_hash(task)] = task_id
        return index

    # ---------------------------------------------------------------- planning
    def plan(self, task: ArcTask, task_id: str | None, max_variants: int, adapt_variants: int, side: int) -> ArcPlan:
        """Known rows for a named or recognised task; otherwise the variants to adapt (vectors still to fit).
        `side` is the canvas the task runs on."""
        if task_id is not None and task_id not in self.known:
            raise UnknownTask(task_id)
        if task_id is None and task.train:
            task_id = self.by_hash.get(_demo_hash(task))
        if task_id is not None:
            rows = self.known[task_id][:max_variants]
            vectors = self.table[[r for r, _ in rows]].astype(np.float32)
            return ArcPlan("known", task_id, [v for _, v in rows], side, vectors)
        variants = unseen_variants(task, replace(ARC_DEFAULTS, variants=adapt_variants))
        return ArcPlan("adapted", None, variants, side)

    # ---------------------------------------------------------------- adaptation
    def _start(self) -> torch.Tensor | None:
        """The vectors' starting point, computed once: the average trained embedding, a "typical task" the network
        knows how to read."""
        if self._init is None:
            rows = self.table[1:] if len(self.table) > 1 else self.table
            self._init = torch.as_tensor(rows.mean(axis=0), dtype=torch.float32)
        return self._init

    def solve(
        self, task: ArcTask, plan: ArcPlan, budget_s: float, recipe: ArcRecipe, policy: HaltingPolicy
    ) -> UnseenAnswer:
        """Test-time training and answering of an unseen task (blocking; run it in a worker thread).

        One task at a time per model (the lock): two fine-tunings side by side would each get half the CPU and
        both overrun their budgets. The wait counts against the budget, so the whole call stays within it."""
        start = time.monotonic()
        with self._lock:
            remaining = max(0.0, budget_s - (time.monotonic() - start))
            answer = solve_unseen(self._source, task, plan.side, policy, remaining, recipe, self._start(), self.dtype)
        plan.variants = answer.variants
        plan.adapt_s = time.monotonic() - start
        plan.losses = answer.report.losses
        return answer

    def adapt(
        self, task: ArcTask, plan: ArcPlan, steps: int, budget_s: float, lr: float, supervision_steps: int
    ) -> None:
        """Fit the plan's vectors to the task's demonstrations (blocking; run it in a worker thread)."""
        start = time.monotonic()
        with self._lock:
            if self._copy is None:
                self._copy = frozen_copy(self._source)
            inputs, labels, which = demonstration_batch(task, plan.variants, plan.side)
            remaining = max(0.0, budget_s - (time.monotonic() - start))
            vectors, losses = fit_puzzle_vectors(
                self._copy,
                torch.as_tensor(inputs),
                torch.as_tensor(labels),
                torch.as_tensor(which),
                len(plan.variants),
                steps=steps,
                time_budget_s=remaining,
                lr=lr,
                supervision_steps=supervision_steps,
                init=self._start(),
            )
        plan.vectors = vectors.cpu().numpy()
        plan.losses = losses
        plan.adapt_s = time.monotonic() - start

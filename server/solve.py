"""From a validated request to scheduler jobs, and from finished jobs to the response.

The HTTP layer stays thin: it calls `Solver.prepare` (which raises `ApiError` for anything a client got wrong),
submits the jobs, waits, and renders with `Solver.respond`. The puzzle rules live in the codecs.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.puzzles.base import PuzzleError
from server.registry import ModelEntry, Registry
from server.scheduler import Job, StepRecord
from server.schemas import SolveRequest, SolveResponse, StepState, Timing
from server.settings import Settings


class ApiError(Exception):
    """An error answer: status, machine-readable kind, a message naming the field, optional headers."""

    def __init__(
        self, status: int, kind: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra: dict[str, Any] = {}

    def body(self) -> dict[str, Any]:
        return {"error": self.kind, "message": self.message, "field": self.field}


@dataclass
class Prepared:
    """A request turned into jobs (one per puzzle; ARC has one per test input)."""

    request: SolveRequest
    entry: ModelEntry
    puzzle: Any
    jobs: list[Job]
    arrived: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


def _side_of(req: SolveRequest) -> int | None:
    """Grid side a maze request needs, to pick a model that fits before parsing."""
    if req.puzzle == "maze" and isinstance(req.grid, list):
        return len(req.grid)
    return None


class Solver:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    def prepare(self, req: SolveRequest, arrived: float | None = None) -> Prepared:
        arrived = arrived if arrived is not None else time.monotonic()
        try:
            entry = self.registry.pick(req.puzzle, req.model, _side_of(req))
        except KeyError as exc:
            raise ApiError(404, "unknown_model", str(exc.args[0]), "model") from exc
        except ValueError as exc:
            field_name = "model" if req.model is not None else "grid"
            raise ApiError(422, "invalid_puzzle", str(exc), field_name) from exc

        limit = self.settings.max_steps_limit
        if req.max_steps is not None and req.max_steps > limit:
            raise ApiError(422, "invalid_request", f"max_steps is {req.max_steps}, at most {limit}", "max_steps")
        max_steps = req.max_steps or self.settings.default_max_steps or entry.config.halt_max_steps
        deadline = arrived + self.settings.request_timeout_s

        raw = req.task if req.puzzle == "arc" else req.grid
        if raw is None:
            name = "task" if req.puzzle == "arc" else "grid"
            raise ApiError(422, "invalid_puzzle", f"{name} is required for {req.puzzle}", name)
        try:
            puzzle = entry.codec.parse(raw)
        except PuzzleError as exc:
            field_name = exc.field if req.puzzle != "arc" or exc.field.startswith("task") else f"task.{exc.field}"
            raise ApiError(422, "invalid_puzzle", exc.message, field_name) from exc

        if req.puzzle == "arc":
            encoded = list(entry.codec.encode_test_inputs(puzzle))  # type: ignore[attr-defined]
            vector = entry.engine.vector_for(self._arc_puzzle_id(entry, req.task_id))
        else:
            encoded = [entry.codec.encode(puzzle)]
            vector = entry.engine.vector_for(0)
        jobs = [
            Job(
                tokens=np.asarray(tokens, dtype=np.int64),
                vector=vector,
                max_steps=max_steps,
                halt=req.halt,
                record_steps=req.return_steps or req.stream,
                deadline=deadline,
            )
            for tokens in encoded
        ]
        return Prepared(req, entry, puzzle, jobs, arrived)

    @staticmethod
    def _arc_puzzle_id(entry: ModelEntry, task_id: str | None) -> int:
        """The row of a known task's un-augmented variant; 0 (the blank prefix) for tasks the model never saw."""
        if task_id is None:
            return 0
        try:
            return entry.identifiers.index(task_id)
        except ValueError as exc:
            raise ApiError(
                404, "unknown_task", f"model {entry.name!r} was not trained on task {task_id!r}", "task_id"
            ) from exc

    # ------------------------------------------------------------------ rendering
    def decode(self, prep: Prepared, tokens: np.ndarray, index: int = 0) -> Any:
        codec = prep.entry.codec
        if prep.request.puzzle == "arc":
            from model.puzzles.arc import decode_grid

            return decode_grid(tokens, codec.side)  # type: ignore[attr-defined]
        return codec.decode(tokens, prep.puzzle)

    def step_state(self, prep: Prepared, record: StepRecord, previous: Any) -> StepState:
        solution = self.decode(prep, record.tokens)
        return StepState(
            step=record.step,
            solution=solution,
            halt_probability=round(record.halt_probability, 6),
            changed_cells=changed_cells(previous, solution),
        )

    def respond(self, prep: Prepared) -> SolveResponse:
        """The answer for finished jobs that did not fail (the caller checks errors first)."""
        jobs = prep.jobs
        main = jobs[0]
        assert main.answer is not None and main.halted_by is not None
        if prep.request.puzzle == "arc":
            grids = [self.decode(prep, j.answer if j.answer is not None else np.zeros(0)) for j in jobs]
            solution: Any = [
                {"attempt_1": g, "attempt_2": _second_attempt(self, prep, j, g)}
                for j, g in zip(jobs, grids, strict=True)
            ]
            verified = None
        else:
            solution = self.decode(prep, main.answer)
            verified = prep.entry.codec.verify(prep.puzzle, solution)
        steps = None
        if prep.request.return_steps:
            steps, previous = [], None
            for record in main.steps:
                state = self.step_state(prep, record, previous)
                previous = state.solution
                steps.append(state)
        started = min((j.started_at for j in jobs if j.started_at is not None), default=prep.arrived)
        finished = max(j.finished_at or started for j in jobs)
        slowest = max(jobs, key=lambda j: j.steps_used)
        return SolveResponse(
            id=prep.id,
            model=prep.entry.name,
            puzzle=prep.request.puzzle,
            solution=solution,
            steps_used=slowest.steps_used,
            halted_by=slowest.halted_by.value if slowest.halted_by else "max_steps",
            halt_probability=round(min(j.halt_probability for j in jobs), 6),
            verified=verified,
            timing=Timing(
                queue_ms=round((started - prep.arrived) * 1000, 3),
                compute_ms=round(max(j.compute_s for j in jobs) * 1000, 3),
                total_ms=round((finished - prep.arrived) * 1000, 3),
            ),
            steps=steps,
        )


def _second_attempt(solver: Solver, prep: Prepared, job: Job, first: Any) -> Any:
    """ARC allows two attempts: the latest earlier-step answer that differs from the final one, else the same."""
    for record in reversed(job.steps):
        grid = solver.decode(prep, record.tokens)
        if grid != first and grid:
            return grid
    return first


def changed_cells(previous: Any, current: Any) -> list[tuple[int, int]]:
    """Cells whose value differs from the previous step (all cells at the first step)."""
    rows = current if isinstance(current, list) else []
    changed: list[tuple[int, int]] = []
    for r, row in enumerate(rows):
        prev_row = previous[r] if isinstance(previous, list) and r < len(previous) else None
        for c, value in enumerate(row):
            if prev_row is None or c >= len(prev_row) or prev_row[c] != value:
                changed.append((r, c))
    return changed


def job_error(prep: Prepared) -> ApiError | None:
    """The error to answer with if any of the request's jobs failed."""
    for job in prep.jobs:
        if job.error is None:
            continue
        if job.error == "deadline":
            return ApiError(
                504,
                "deadline_exceeded",
                f"puzzle not finished within the {math.ceil(job.deadline - prep.arrived)} s deadline",
            )
        if job.error == "cancelled":
            return ApiError(499, "cancelled", "request cancelled")
        return ApiError(500, "step_failed", f"the model failed on this puzzle: {job.error}")
    return None

"""From a validated request to scheduler jobs, and from finished jobs to the response.

The HTTP layer stays thin: it calls `Solver.prepare` (which raises `ApiError` for anything a client got wrong),
submits the jobs, waits, and renders with `Solver.respond`. The puzzle rules live in the codecs.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.escalation import Escalation
from inference.halting import HaltingPolicy, HaltReason
from inference.views import apply_view, choose, invert_view, views_for
from model.adapt import predicted_grid, two_attempts, variant_test_inputs
from model.puzzles.arc import ArcTask, decode_grid
from model.puzzles.base import PuzzleError
from model.puzzles.maze import solved_side
from server.arc import ArcModel, ArcPlan, UnknownTask
from server.metrics import Metrics
from server.registry import ModelEntry, Registry
from server.scheduler import Job, Outcome, StepRecord
from server.schemas import SolveRequest, SolveResponse, StepState, Timing
from server.settings import Settings


def supersede(prep: Prepared, job: Job, cancel: Callable[[Job, Outcome], None]) -> None:
    """When one view of a puzzle is verified, stop the others: its answer is the one given (`choose`)."""
    if job.halted_by is HaltReason.VERIFIED and len(prep.jobs) > 1 and prep.arc is None:
        for other in prep.jobs:
            if other is not job and not other.done:
                cancel(other, Outcome.SUPERSEDED)


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
    """A request turned into jobs (one per puzzle, or per view with `views`; ARC has one per (test input, variant))."""

    request: SolveRequest
    entry: ModelEntry
    puzzle: Any
    jobs: list[Job]
    arrived: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    arc: ArcPlan | None = None
    """ARC only: the variants and their vectors; an unseen task has no jobs until `adapt` has run."""
    job_keys: list[tuple[int, int]] = field(default_factory=list)
    """ARC only: (test input, variant) of each job, in job order."""
    tokens: np.ndarray | None = None
    """Sudoku and maze: the puzzle's tokens, which each view turns; job i is view i."""
    policy: HaltingPolicy | None = None
    escalation: Escalation | None = None
    """Sudoku and maze under adaptive halting: how far past the first round an unverified puzzle may go."""


def _side_of(req: SolveRequest) -> int | None:
    """Grid side a maze request is solved at (inside its wall ring, if it has one), to pick a model that fits
    before parsing."""
    return solved_side(req.grid) if req.puzzle == "maze" else None


class Solver:
    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        # Built once per model at load: known-task rows, demonstration hashes; the adaptation copy comes lazily.
        self.arc_models = {
            name: ArcModel(
                entry.checkpoint.model,
                entry.engine.table,
                entry.identifiers,
                entry.codec.side,  # type: ignore[attr-defined]
                entry.checkpoint.path,
            )
            for name, entry in registry.models.items()
            if entry.family == "arc"
        }

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
            if req.views not in (None, 1):
                message = "views applies to sudoku and maze; an ARC task is voted over its own variants"
                raise ApiError(422, "invalid_request", message, "views")
            return self._prepare_arc(req, entry, puzzle, arrived)
        budget = self.settings.default_budget_steps if req.budget is None else req.budget.steps
        if budget > self.settings.max_budget_steps:
            message = f"budget.steps is {budget}, at most {self.settings.max_budget_steps}"
            raise ApiError(422, "invalid_request", message, "budget.steps")
        views = req.views or self.settings.default_views
        policy = entry.policy(views, req.halt, req.max_steps)
        prep = Prepared(req, entry, puzzle, [], arrived, policy=policy)
        prep.tokens = np.asarray(entry.codec.encode(puzzle), dtype=np.int64)
        if policy.checks_answers and budget:
            prep.escalation = Escalation(budget, views_for(entry.family))
        prep.jobs = [self._view(prep, tid, deadline) for tid in range(views)]
        return prep

    def _view(self, prep: Prepared, tid: int, deadline: float) -> Job:
        """The job of view `tid` (`inference.views`): the puzzle turned by symmetry `tid`, or for a Sudoku from view
        8 on relabelled and reshuffled; only view 0 records its steps."""
        assert prep.tokens is not None and prep.policy is not None
        req = prep.request
        return Job(
            tokens=apply_view(prep.tokens[None], tid, prep.entry.family)[0],
            vector=prep.entry.engine.vector_for(0),
            policy=prep.policy,
            record_steps=tid == 0 and (req.return_steps or req.stream),
            deadline=deadline,
        )

    def escalate(self, prep: Prepared) -> list[Job]:
        """The next round of views for a puzzle none of whose views was verified, within its budget
        (`inference.escalation`); none when one was, when a view failed, or when the budget is spent."""
        jobs, escalation, policy = prep.jobs, prep.escalation, prep.policy
        if escalation is None or policy is None or any(j.verified or j.failed for j in jobs):
            return []
        extra = escalation.next_views(len(jobs), sum(j.steps_used for j in jobs), policy.max_steps)
        new = [self._view(prep, tid, jobs[0].deadline) for tid in range(len(jobs), len(jobs) + extra)]
        jobs.extend(new)
        return new

    # ------------------------------------------------------------------ ARC
    def _prepare_arc(self, req: SolveRequest, entry: ModelEntry, task: ArcTask, arrived: float) -> Prepared:
        """Plan the task (known rows, or variants to adapt); jobs now for a known task, after `adapt` otherwise."""
        s = self.settings
        try:
            plan = self.arc_models[entry.name].plan(task, req.task_id, s.arc_max_variants, s.arc_variants)
        except UnknownTask as exc:
            message = (
                f"model {entry.name!r} was not trained on task {req.task_id!r}; "
                "leave task_id out to adapt to the task's demonstrations instead"
            )
            raise ApiError(404, "unknown_task", message, "task_id") from exc
        prep = Prepared(req, entry, task, [], arrived, arc=plan)
        if plan.vectors is not None:
            self._arc_jobs(prep)
        return prep

    def _arc_jobs(self, prep: Prepared) -> None:
        """One job per (test input, variant), test-major, so job 0 is the first test input's first variant."""
        plan, req, entry = prep.arc, prep.request, prep.entry
        assert plan is not None and plan.vectors is not None
        tokens, prep.job_keys = variant_test_inputs(prep.puzzle, plan.variants, entry.codec.side)  # type: ignore[attr-defined]
        policy = entry.policy(1, req.halt, req.max_steps)
        prep.jobs = [
            Job(
                tokens=row.astype(np.int64),
                vector=plan.vectors[v],
                policy=policy,
                record_steps=i == 0 and (req.return_steps or req.stream),
                deadline=prep.arrived + self.settings.request_timeout_s,
            )
            for i, (row, (_, v)) in enumerate(zip(tokens, prep.job_keys, strict=True))
        ]

    async def adapt(self, prep: Prepared) -> None:
        """For an unseen ARC task, fit its variants' vectors in a worker thread, then build its jobs.

        The fit gets `arc_adapt_time_budget_s`, but never more than half of what is left of the request's
        deadline, so the steps that follow have time to run. A known task (or any other puzzle) is left alone.
        """
        plan = prep.arc
        if plan is None:
            return
        name = prep.entry.name
        if plan.vectors is None:
            s = self.settings
            left = prep.arrived + s.request_timeout_s - time.monotonic()
            budget = max(0.0, min(s.arc_adapt_time_budget_s, left / 2))
            await asyncio.to_thread(
                self.arc_models[name].adapt,
                prep.puzzle,
                plan,
                s.arc_adapt_steps,
                budget,
                s.arc_adapt_lr,
                s.arc_adapt_supervision_steps,
            )
            self._arc_jobs(prep)
            if self.metrics is not None:
                self.metrics.adapt_duration.labels(name).observe(plan.adapt_s)
        if self.metrics is not None:
            self.metrics.adapt.labels(name, plan.mode).inc()

    def _arc_solution(self, prep: Prepared) -> list[dict[str, Any]]:
        """Each test input's variants mapped back to the task's frame and voted into attempt_1 and attempt_2."""
        plan, task = prep.arc, prep.puzzle
        assert plan is not None
        side: int = prep.entry.codec.side  # type: ignore[attr-defined]
        candidates: list[list[tuple[Any, float]]] = [[] for _ in task.test]
        for job, (t, v) in zip(prep.jobs, prep.job_keys, strict=True):
            if job.answer is not None:
                candidates[t].append((predicted_grid(job.answer, plan.variants[v], side), job.halt_probability))
        solution = []
        for t, pair in enumerate(task.test):
            ranked = two_attempts(candidates[t], pair.input.shape)
            solution.append({"attempt_1": ranked[0], "attempt_2": ranked[1]})
        return solution

    @staticmethod
    def _chosen(prep: Prepared) -> tuple[Job, np.ndarray, list[float]]:
        """Over the views (`inference.views.choose`): the job that answers, its answer in the puzzle's own
        orientation, and the halting probabilities of the views that agree with it."""
        answered = [(tid, job) for tid, job in enumerate(prep.jobs) if job.answer is not None]
        index, best, agreeing = choose(
            [invert_view(np.asarray(job.answer)[None], tid, prep.entry.family)[0] for tid, job in answered],
            [job.halt_probability for _, job in answered],
            [job.verified for _, job in answered],
            [job.steps_used for _, job in answered],
        )
        answering = answered[index][1] if index is not None else max(prep.jobs, key=lambda j: j.steps_used)
        return answering, best, agreeing

    # ------------------------------------------------------------------ rendering
    def decode(self, prep: Prepared, tokens: np.ndarray, index: int = 0) -> Any:
        """A step's tokens as a grid; for ARC job `index`'s, mapped back through its variant ([] if no colour)."""
        codec = prep.entry.codec
        if prep.arc is not None:
            side: int = codec.side  # type: ignore[attr-defined]
            if not prep.job_keys:
                return decode_grid(tokens, side)
            grid = predicted_grid(tokens, prep.arc.variants[prep.job_keys[index][1]], side)
            return grid if grid is not None else []
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
        adapt_ms = None
        halt_probability = min(j.halt_probability for j in jobs)
        votes = tried = total = None
        answering = max(jobs, key=lambda j: j.steps_used)
        if prep.arc is not None:
            solution: Any = self._arc_solution(prep)
            verified = None
            adapt_ms = round(prep.arc.adapt_s * 1000, 3) if prep.arc.mode == "adapted" else None
        else:
            answer = main.answer
            if len(jobs) > 1:
                answering, answer, agreeing = self._chosen(prep)
                votes, halt_probability = len(agreeing), sum(agreeing) / len(agreeing)
                tried, total = len(jobs), sum(j.steps_used for j in jobs)
            solution = self.decode(prep, answer)
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
        return SolveResponse(
            id=prep.id,
            model=prep.entry.name,
            puzzle=prep.request.puzzle,
            solution=solution,
            steps_used=answering.steps_used,
            halted_by=answering.halted_by.value if answering.halted_by else HaltReason.MAX_STEPS.value,
            halt_probability=round(halt_probability, 6),
            halt_threshold=main.policy.threshold,
            verified=verified,
            votes=votes,
            views_tried=tried,
            steps_total=total,
            timing=Timing(
                queue_ms=round((started - prep.arrived - (adapt_ms or 0.0) / 1000) * 1000, 3),
                compute_ms=round(max(j.compute_s for j in jobs) * 1000, 3),
                total_ms=round((finished - prep.arrived) * 1000, 3),
                adapt_ms=adapt_ms,
            ),
            steps=steps,
        )


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
        if not job.failed:
            continue
        if job.outcome is Outcome.DEADLINE:
            return ApiError(
                504,
                "deadline_exceeded",
                f"puzzle not finished within the {math.ceil(job.deadline - prep.arrived)} s deadline",
            )
        if job.outcome is Outcome.CANCELLED:
            return ApiError(499, "cancelled", "request cancelled")
        if job.outcome is Outcome.SHUTDOWN:
            return ApiError(503, "draining", "server shut down before it finished", headers={"Retry-After": "5"})
        return ApiError(500, "step_failed", f"the model failed on this puzzle: {job.failure}")
    return None

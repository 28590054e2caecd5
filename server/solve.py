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

from inference.arc import UnseenAnswer
from inference.escalation import Escalation
from inference.halting import HaltingPolicy, HaltReason
from inference.views import apply_view, choose, invert_view, views_for
from model.adapt import predicted_grid, two_attempts, variant_test_inputs
from model.precision import resolve_dtype
from model.puzzles.arc import ArcTask, decode_grid, needed_side, parse_task
from model.puzzles.base import PuzzleError
from model.puzzles.maze import drawn_side, solved_side
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
    deadline: float = math.inf
    """When the request must be answered (time.monotonic()): `request_timeout_s` after arrival, plus the test-time
    work granted to an unseen ARC task (`adapt_budget_s`)."""
    adapt_budget_s: float = 0.0
    """ARC, unseen task: seconds of test-time work granted."""


def _side_of(req: SolveRequest) -> int | None:
    """Grid side a request is solved at, to pick a model (and a size-agnostic model's canvas) that fits before
    parsing: a maze's inside its wall ring, if it has one; the longest side an ARC task needs (`needed_side`).
    None where it cannot be told yet: parsing then names what is wrong."""
    if req.puzzle == "maze":
        return solved_side(req.grid)
    if req.puzzle == "arc" and req.task is not None:
        try:
            return needed_side(parse_task(req.task))
        except PuzzleError:
            return None
    return None


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
                (entry.canvases[-1] if entry.canvases else entry).codec.fits,  # type: ignore[attr-defined]
                entry.checkpoint.path,
                resolve_dtype(settings.dtype, next(entry.checkpoint.model.parameters()).device),
            )
            for name, entry in registry.models.items()
            if entry.family == "arc"
        }

    def prepare(self, req: SolveRequest, arrived: float | None = None) -> Prepared:
        arrived = arrived if arrived is not None else time.monotonic()
        if req.adapt_budget_s is not None and req.puzzle != "arc":
            message = "adapt_budget_s applies to ARC tasks (test-time training); sudoku and maze have none"
            raise ApiError(422, "invalid_request", message, "adapt_budget_s")
        try:
            measured_at = drawn_side(req.grid) if req.puzzle == "maze" else None
            entry = self.registry.pick(req.puzzle, req.model, _side_of(req), measured_at)
        except KeyError as exc:
            raise ApiError(404, "unknown_model", str(exc.args[0]), "model") from exc
        except ValueError as exc:
            if req.puzzle == "arc" and req.model is None and req.task is not None:
                # No ARC model takes a grid this large: the largest one's parser names the grid that is too big.
                arc = [e for e in self.registry.models.values() if e.family == "arc"]
                self._parse(max(arc, key=lambda e: e.max_side or e.config.grid_side).for_side(None), req)
            field_name = "model" if req.model is not None else ("task" if req.puzzle == "arc" else "grid")
            raise ApiError(422, "invalid_puzzle", str(exc), field_name) from exc

        limit = self.settings.max_steps_limit
        if req.max_steps is not None and req.max_steps > limit:
            raise ApiError(422, "invalid_request", f"max_steps is {req.max_steps}, at most {limit}", "max_steps")
        deadline = arrived + self.settings.request_timeout_s

        puzzle = self._parse(entry, req)

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
        policy = entry.policy(views, req.halt, req.max_steps, budget)
        prep = Prepared(req, entry, puzzle, [], arrived, policy=policy, deadline=deadline)
        prep.tokens = np.asarray(entry.codec.encode(puzzle), dtype=np.int64)
        if policy.checks_answers and budget:
            prep.escalation = Escalation(budget, views_for(entry.family))
        prep.jobs = [self._view(prep, tid, deadline) for tid in range(views)]
        return prep

    @staticmethod
    def _parse(entry: ModelEntry, req: SolveRequest) -> Any:
        """The request's puzzle parsed by the entry's codec; a 422 naming the field that is wrong."""
        raw = req.task if req.puzzle == "arc" else req.grid
        if raw is None:
            name = "task" if req.puzzle == "arc" else "grid"
            raise ApiError(422, "invalid_puzzle", f"{name} is required for {req.puzzle}", name)
        try:
            return entry.codec.parse(raw)
        except PuzzleError as exc:
            field_name = exc.field if req.puzzle != "arc" or exc.field.startswith("task") else f"task.{exc.field}"
            raise ApiError(422, "invalid_puzzle", exc.message, field_name) from exc

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
            side: int = entry.codec.side  # type: ignore[attr-defined]
            plan = self.arc_models[entry.name].plan(task, req.task_id, s.arc_max_variants, s.arc_variants, side)
        except UnknownTask as exc:
            message = (
                f"model {entry.name!r} was not trained on task {req.task_id!r}; "
                "leave task_id out to adapt to the task's demonstrations instead"
            )
            raise ApiError(404, "unknown_task", message, "task_id") from exc
        budget = s.arc_adapt_time_budget_s if req.adapt_budget_s is None else req.adapt_budget_s
        if budget > s.arc_adapt_max_budget_s:
            limit = s.arc_adapt_max_budget_s
            message = f"adapt_budget_s is {budget:g}, at most {limit:g} (setting arc_adapt_max_budget_s)"
            raise ApiError(422, "invalid_request", message, "adapt_budget_s")
        granted = budget if plan.vectors is None else 0.0
        deadline = arrived + s.request_timeout_s + granted
        prep = Prepared(req, entry, task, [], arrived, arc=plan, deadline=deadline, adapt_budget_s=granted)
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
                deadline=prep.deadline,
            )
            for i, (row, (_, v)) in enumerate(zip(tokens, prep.job_keys, strict=True))
        ]

    async def adapt(self, prep: Prepared) -> None:
        """For an unseen ARC task, adapt to its demonstrations in a worker thread within the granted budget.

        With `arc_ttt = "network"` the worker fine-tunes a copy of the network and answers every (test input,
        variant) with it (`inference.arc.solve_unseen`): the request's jobs come back already answered and never
        queue. With "vectors" it fits the variants' vectors, then the jobs queue like a known task's. A known task
        (or any other puzzle) is left alone.
        """
        plan = prep.arc
        if plan is None:
            return
        name = prep.entry.name
        if plan.vectors is None:
            s = self.settings
            arc_model = self.arc_models[name]
            if s.arc_ttt == "network":
                policy = prep.entry.policy(1, prep.request.halt, prep.request.max_steps)
                answer = await asyncio.to_thread(
                    arc_model.solve, prep.puzzle, plan, prep.adapt_budget_s, s.arc_recipe(), policy
                )
                self._answered_jobs(prep, answer, policy)
            else:
                await asyncio.to_thread(
                    arc_model.adapt,
                    prep.puzzle,
                    plan,
                    s.arc_adapt_steps,
                    prep.adapt_budget_s,
                    s.arc_vector_lr,
                    s.arc_adapt_supervision_steps,
                )
                self._arc_jobs(prep)
            if self.metrics is not None:
                self.metrics.adapt_duration.labels(name).observe(plan.adapt_s)
        if self.metrics is not None:
            self.metrics.adapt.labels(name, plan.mode).inc()

    def _answered_jobs(self, prep: Prepared, answer: UnseenAnswer, policy: HaltingPolicy) -> None:
        """The jobs of a task answered by test-time training: one per (test input, variant), finished, with the
        first one's steps recorded when the request asked for them."""
        assert prep.arc is not None
        req, now = prep.request, time.monotonic()
        prep.job_keys = answer.keys
        prep.jobs = []
        for r in range(len(answer.keys)):
            job = Job(
                tokens=answer.trace[0, r].astype(np.int64),
                vector=np.zeros(0, np.float32),
                policy=policy,
                record_steps=r == 0 and (req.return_steps or req.stream),
                deadline=prep.deadline,
            )
            used = int(answer.steps[r])
            job.answer = answer.trace[used - 1, r].astype(np.int64)
            job.halt_probability = float(answer.probability[r])
            job.steps_used, job.halted_by = used, answer.halted_by[r]
            job.outcome, job.started_at, job.finished_at = Outcome.ANSWERED, now, now
            job.compute_s = max(0.0, answer.seconds - answer.report.total_s)  # answering; the fit is adapt_ms
            if job.record_steps:
                job.steps = [
                    StepRecord(s + 1, answer.trace[s, r].astype(np.int64), float(answer.trace_probability[s, r]))
                    for s in range(used)
                ]
            prep.jobs.append(job)

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

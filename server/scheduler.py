"""Step-level continuous batching, free of any web framework.

Per model, a pool of slots holds running puzzles. Each tick runs ONE supervision step over the occupied slots;
puzzles that their halting policy stops (a verified answer, the Q head, `max_steps`: `inference.halting`) or whose
deadline has passed are finished and their slots refilled from a bounded queue at the next tick. Easy puzzles therefore
leave early and new ones never wait for a whole batch to run 16 steps.

Two baseline policies exist only so benchmarks can measure that gain: `sequential` (one puzzle at a time) and
`static` (textbook static batching: a batch is admitted together and keeps its shape, halted rows included,
until its last puzzle halts; each puzzle is still answered as soon as it halts).

`tick()` is synchronous, so tests drive the scheduler step by step; `Scheduler.start()` runs ticks in a worker
thread, round-robin over the models that have work, so the event loop never blocks on compute. Completion and
per-step callbacks are invoked from that thread; the HTTP layer hands them to its event loop.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

import numpy as np

from inference.halting import HaltingPolicy, HaltReason, Rules
from server.engine import Engine

log = logging.getLogger(__name__)

_ids = itertools.count(1)


class QueueFull(Exception):
    """The model's queue is at capacity; the client should retry later (503)."""


class Draining(Exception):
    """The server is shutting down and takes no new puzzles (503)."""


Policy = Literal["continuous", "static", "sequential"]


@dataclass
class StepRecord:
    step: int
    tokens: np.ndarray
    halt_probability: float


class Outcome(StrEnum):
    """How a job ended, as the halt reasons say why it stopped (`inference.halting.HaltReason`)."""

    ANSWERED = "answered"
    """Its halting policy stopped it: verified, the Q head, or max_steps."""
    DEADLINE = "deadline"
    """The request's deadline passed first; the last answer, if any, is kept for a partial response."""
    CANCELLED = "cancelled"
    """The client went away."""
    SHUTDOWN = "shutdown"
    """The server's drain timed out."""
    SUPERSEDED = "superseded"
    """Another view of the same puzzle was verified first: not a failure, its answer is that view's."""
    FAILED = "failed"
    """The model step raised or gave non-finite values (`Job.failure` says which)."""


@dataclass
class Job:
    """One puzzle's trip through the scheduler. Inputs are set by the caller; the rest is filled in."""

    tokens: np.ndarray
    vector: np.ndarray
    policy: HaltingPolicy
    """When the puzzle stops: the request handling builds it from the checkpoint's calibration (one door)."""
    record_steps: bool = False
    deadline: float = math.inf  # time.monotonic() value
    on_step: Callable[[Job, StepRecord], None] | None = None
    on_done: Callable[[Job], None] | None = None
    id: int = field(default_factory=lambda: next(_ids))
    enqueued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    compute_s: float = 0.0
    steps_used: int = 0
    answer: np.ndarray | None = None
    halt_probability: float = 0.0
    verified: bool | None = None
    """The rule check of `answer` (None: not checked, or the family has none)."""
    halted_by: HaltReason | None = None
    outcome: Outcome | None = None
    """How the job ended (None while it runs)."""
    failure: str | None = None
    """What went wrong, for `Outcome.FAILED` only: a failed or non-finite step."""
    steps: list[StepRecord] = field(default_factory=list)
    cancelled: bool = False
    cancel_reason: Outcome = field(default_factory=lambda: Outcome.CANCELLED)
    """The outcome a cancelled job finishes with: CANCELLED, SHUTDOWN, SUPERSEDED or DEADLINE."""

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    @property
    def failed(self) -> bool:
        """Whether the job ended without an answer to give: anything but ANSWERED and SUPERSEDED."""
        return self.outcome not in (None, Outcome.ANSWERED, Outcome.SUPERSEDED)


class Observer(Protocol):
    """Receives scheduler events for metrics; the default does nothing."""

    def batch(self, model: str, size: int, seconds: float) -> None: ...

    def finished(self, model: str, job: Job) -> None: ...

    def gauges(self, model: str, queued: int, running: int) -> None: ...


class NullObserver:
    def batch(self, model: str, size: int, seconds: float) -> None:
        pass

    def finished(self, model: str, job: Job) -> None:
        pass

    def gauges(self, model: str, queued: int, running: int) -> None:
        pass


class ModelScheduler:
    """Slots and queue of one model."""

    def __init__(
        self,
        name: str,
        engine: Engine,
        queue_capacity: int,
        policy: Policy = "continuous",
        observer: Observer | None = None,
        rules: Rules | None = None,
    ) -> None:
        self.name = name
        self.engine = engine
        self.queue_capacity = queue_capacity
        self.rules = rules
        """The puzzle family's codec: each step's answers are settled on the user's cells and rule-checked."""
        self.policy = policy
        self.observer = observer or NullObserver()
        self.slots: list[Job | None] = [None] * (1 if policy == "sequential" else engine.slots)
        self._batch: list[int] = []  # static policy: the slots of the running batch, finished ones included
        self.queue: deque[Job] = deque()
        self.lock = threading.Lock()

    @property
    def running(self) -> int:
        return sum(job is not None for job in self.slots)

    @property
    def has_work(self) -> bool:
        return bool(self.queue) or self.running > 0

    def submit(self, job: Job) -> None:
        with self.lock:
            if len(self.queue) >= self.queue_capacity:
                raise QueueFull(f"model {self.name!r} has {len(self.queue)} puzzles queued (capacity reached)")
            job.enqueued_at = time.monotonic()
            self.queue.append(job)
        self.observer.gauges(self.name, len(self.queue), self.running)

    def _finish(
        self, slot: int | None, job: Job, reason: HaltReason | None, outcome: Outcome, failure: str | None = None
    ) -> None:
        job.halted_by = reason
        job.outcome = outcome
        job.failure = failure
        job.finished_at = time.monotonic()
        if slot is not None:
            self.slots[slot] = None
        self.observer.finished(self.name, job)
        if job.on_done is not None:
            try:
                job.on_done(job)
            except Exception:  # a broken callback must not take the scheduler down
                log.exception("on_done callback of job %d failed", job.id)

    def _admit(self, now: float) -> list[Job]:
        """Drop cancelled and expired queue entries, then fill free slots (lowest first, keeping batches compact)."""
        dropped: list[Job] = []
        with self.lock:
            alive: deque[Job] = deque()
            for job in self.queue:
                if job.cancelled:
                    self._finish(None, job, None, job.cancel_reason)
                    dropped.append(job)
                elif now >= job.deadline:
                    self._finish(None, job, HaltReason.DEADLINE, Outcome.DEADLINE)
                    dropped.append(job)
                else:
                    alive.append(job)
            self.queue = alive
            if self.policy == "static" and self.running > 0:
                return dropped  # static batching: the whole batch finishes before new puzzles start
            self._batch = []
            for slot in range(len(self.slots)):
                if not self.queue:
                    break
                if self.slots[slot] is None:
                    job = self.queue.popleft()
                    self.engine.load(slot, job.tokens, job.vector)
                    job.started_at = now
                    self.slots[slot] = job
                    self._batch.append(slot)
        return dropped

    def _settle(self, active: list[int], answers: np.ndarray, finite: np.ndarray) -> tuple[np.ndarray, dict[int, bool]]:
        """This step's answers with the user's cells kept (the codec's `settle`), and the rule checks, by row, of
        the jobs whose policy asks for them: one batched call of each."""
        rows = [row for row, slot in enumerate(active) if self.slots[slot] is not None]
        if self.rules is None or not rows:
            return answers, {}
        inputs = np.stack([self.slots[active[row]].tokens for row in rows])  # type: ignore[union-attr]
        settled = answers.copy()
        settled[rows] = self.rules.settle(inputs, answers[rows])
        asked = [i for i, row in enumerate(rows) if self.slots[active[row]].policy.checks_answers and finite[row]]  # type: ignore[union-attr]
        if not asked:
            return settled, {}
        try:
            passed = self.rules.check_tokens(inputs[asked], settled[[rows[i] for i in asked]])
        except Exception:  # a broken check must not fail the step: the puzzles halt by the Q head as before
            log.exception("answer check of model %s failed", self.name)
            return settled, {}
        if passed is None:
            return settled, {}
        return settled, {rows[i]: bool(ok) for i, ok in zip(asked, passed, strict=True)}

    def tick(self) -> list[Job]:
        """Admit from the queue, run one step over the occupied slots, finish what halted. Returns finished jobs."""
        now = time.monotonic()
        finished: list[Job] = []
        for slot, job in enumerate(self.slots):
            if job is not None and job.cancelled:
                self._finish(slot, job, None, job.cancel_reason)
                finished.append(job)
        finished.extend(self._admit(now))
        active = [i for i, job in enumerate(self.slots) if job is not None]
        if not active:
            self.observer.gauges(self.name, len(self.queue), 0)
            return finished
        if self.policy == "static":
            # Textbook static batching keeps the batch's shape until its last puzzle halts: rows that already
            # halted are still computed (as in a fixed-shape compiled graph) and their results discarded.
            active = sorted(set(self._batch) | set(active))
        start = time.perf_counter()
        try:
            result = self.engine.step(active)
        except Exception as exc:  # fail this batch's puzzles only; the next tick starts clean
            log.exception("step of model %s failed for %d puzzles", self.name, len(active))
            for slot in active:
                job = self.slots[slot]
                if job is None:
                    continue
                self._finish(slot, job, None, Outcome.FAILED, f"model step failed: {type(exc).__name__}: {exc}")
                finished.append(job)
            return finished
        seconds = time.perf_counter() - start
        self.observer.batch(self.name, len(active), seconds)
        answers, verified = self._settle(active, result.tokens, result.finite)
        now = time.monotonic()
        for row, slot in enumerate(active):
            job = self.slots[slot]
            if job is None:
                continue  # a halted row of a static batch
            job.compute_s += seconds
            job.steps_used += 1
            if not result.finite[row] or not math.isfinite(float(result.q_halt[row])):
                self._finish(slot, job, None, Outcome.FAILED, f"non-finite values (NaN/Inf) in step {job.steps_used}")
                finished.append(job)
                continue
            prob = 1.0 / (1.0 + math.exp(-float(np.clip(result.q_halt[row], -60, 60))))
            job.answer = answers[row]
            job.halt_probability = prob
            job.verified = verified.get(row)
            record = StepRecord(job.steps_used, job.answer, prob)
            if job.record_steps:
                job.steps.append(record)
            if job.on_step is not None:
                try:
                    job.on_step(job, record)
                except Exception:
                    log.exception("on_step callback of job %d failed", job.id)
            reason = job.policy.decide(job.steps_used, prob, job.verified)
            if reason is None and now >= job.deadline:
                reason = HaltReason.DEADLINE
            if reason is not None:
                self._finish(slot, job, reason, Outcome.DEADLINE if reason is HaltReason.DEADLINE else Outcome.ANSWERED)
                finished.append(job)
        self.observer.gauges(self.name, len(self.queue), self.running)
        return finished


class Scheduler:
    """All models' schedulers and the worker thread that ticks them fairly."""

    def __init__(self, models: dict[str, ModelScheduler]) -> None:
        self.models = models
        self._order = list(models)
        self._next = 0
        self._wake = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.draining = False
        self._tick_since: float | None = None  # monotonic start of the tick in progress on the worker thread

    def submit(self, model: str, job: Job) -> None:
        if self.draining:
            raise Draining("server is shutting down")
        self.models[model].submit(job)
        with self._wake:
            self._wake.notify()

    def cancel(self, job: Job, reason: Outcome = Outcome.CANCELLED) -> None:
        """Ask for a job to be dropped (client went away); its slot is freed at the next tick."""
        job.cancel_reason = reason
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def abort(self, reason: Outcome = Outcome.SHUTDOWN) -> None:
        """Cancel every queued and running job (a drain that timed out), so their requests are answered now."""
        for model in self.models.values():
            with model.lock:
                jobs = [*model.queue, *(job for job in model.slots if job is not None)]
            for job in jobs:
                self.cancel(job, reason)

    @property
    def busy(self) -> bool:
        return any(m.has_work for m in self.models.values())

    @property
    def tick_running_s(self) -> float:
        """How long the worker's current tick has run (0 when idle): a hung step shows up here."""
        since = self._tick_since
        return 0.0 if since is None else time.monotonic() - since

    def tick(self) -> list[Job]:
        """One tick of the next model (round-robin) that has work."""
        for _ in range(len(self._order)):
            name = self._order[self._next]
            self._next = (self._next + 1) % len(self._order)
            if self.models[name].has_work:
                return self.models[name].tick()
        return []

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self.busy:
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    return
            self._tick_since = time.monotonic()
            try:
                self.tick()
            except Exception:  # never let the worker die: log and keep serving
                log.exception("scheduler tick failed")
                time.sleep(0.01)
            finally:
                self._tick_since = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trm-scheduler", daemon=True)
        self._thread.start()

    def drain(self, timeout: float) -> bool:
        """Stop taking puzzles and wait until queued and running ones are answered; True if all were."""
        self.draining = True
        end = time.monotonic() + timeout
        while self.busy and time.monotonic() < end:
            time.sleep(0.02)
        return not self.busy

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

"""Prometheus metrics (`trm_` prefix, base units, no per-request labels).

Each app owns its own CollectorRegistry, so several apps in one process (tests) never collide. Labels are
bounded: model names come from the registry, outcomes and reasons from fixed sets.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from server.scheduler import Job, Outcome

# A step on CPU takes milliseconds to a second; a request up to the deadline (30 s default).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STEPS_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64)
ADAPT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


class Metrics:
    """All series of one app; also the scheduler's Observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trm_requests", "Solve requests answered, by model and outcome", ["model", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "trm_request_duration_seconds",
            "Time from arrival to answer",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "trm_queue_wait_seconds",
            "Time a puzzle waited for a slot",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_length = Gauge("trm_queue_length", "Puzzles waiting for a slot", ["model"], registry=r)
        self.running_slots = Gauge("trm_running_slots", "Slots holding a running puzzle", ["model"], registry=r)
        self.batch_size = Histogram(
            "trm_batch_size", "Puzzles in one supervision step", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.step_duration = Histogram(
            "trm_step_duration_seconds",
            "Compute time of one batched supervision step",
            ["model"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.steps_used = Histogram(
            "trm_puzzle_steps", "Supervision steps a puzzle used", ["model"], buckets=STEPS_BUCKETS, registry=r
        )
        self.halts = Counter("trm_halts", "Finished puzzles by halting reason", ["model", "reason"], registry=r)
        self.verified = Counter(
            "trm_verified", "Answers by rule-check result (true, false, none)", ["model", "result"], registry=r
        )
        self.failures = Counter("trm_puzzle_failures", "Puzzles that failed, by kind", ["model", "kind"], registry=r)
        self.adapt_duration = Histogram(
            "trm_adapt_seconds",
            "Time fitting the puzzle vectors of an unseen ARC task (test-time adaptation)",
            ["model"],
            buckets=ADAPT_BUCKETS,
            registry=r,
        )
        self.adapt = Counter(
            "trm_adapt",
            "ARC requests by where their puzzle vectors came from (known: trained rows; adapted: fitted)",
            ["model", "mode"],
            registry=r,
        )
        self.build = Info("trm_build", "Server build information", registry=r)
        self.model_info = Info("trm_model", "Loaded models", ["model"], registry=r)

    # ---- scheduler Observer
    def batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.step_duration.labels(model).observe(seconds)

    def finished(self, model: str, job: Job) -> None:
        if job.started_at is not None:
            self.queue_wait.labels(model).observe(job.started_at - job.enqueued_at)
        if job.halted_by is not None:
            self.halts.labels(model, job.halted_by.value).inc()
        if job.steps_used:
            self.steps_used.labels(model).observe(job.steps_used)
        if job.failed and job.outcome is not Outcome.DEADLINE:
            kind = "step_error" if job.outcome is Outcome.FAILED else str(job.outcome)
            self.failures.labels(model, kind).inc()

    def gauges(self, model: str, queued: int, running: int) -> None:
        self.queue_length.labels(model).set(queued)
        self.running_slots.labels(model).set(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""A request's life once it is validated: its jobs queued, waited for (the client may leave, a step may hang),
further rounds of views while its puzzle is unverified and its budget allows, then the answer or the error."""

from __future__ import annotations

import asyncio
import math
import time

from fastapi import Request

from server.metrics import Metrics
from server.registry import Registry
from server.scheduler import Draining, Job, Outcome, QueueFull, Scheduler
from server.schemas import SolveRequest, SolveResponse
from server.settings import Settings
from server.solve import ApiError, Prepared, Solver, job_error, supersede

POLL_S = 0.1  # how often a waiting request checks whether its client went away


class Service:
    """What the lifespan builds: models, scheduler, solver, metrics."""

    def __init__(self, settings: Settings, registry: Registry, scheduler: Scheduler, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.scheduler = scheduler
        self.metrics = metrics
        self.solver = Solver(settings, registry, metrics)
        self.ready = False

    def submit(self, prep: Prepared, jobs: list[Job] | None = None) -> None:
        """Queue every job of a request (or of one round of it), or none: a full queue rolls back the ones already
        queued."""
        jobs = [j for j in (prep.jobs if jobs is None else jobs) if not j.done]  # answered by test-time training
        try:
            for job in jobs:
                self.scheduler.submit(prep.entry.pool or prep.entry.name, job)
        except QueueFull as exc:
            for job in jobs:
                self.scheduler.cancel(job)
            raise ApiError(503, "queue_full", str(exc), headers={"Retry-After": "1"}) from exc
        except Draining as exc:
            raise ApiError(503, "draining", "server is shutting down", headers={"Retry-After": "5"}) from exc

    def record(self, prep: Prepared, outcome: str) -> None:
        self.metrics.requests.labels(prep.entry.name, outcome).inc()
        self.metrics.request_duration.labels(prep.entry.name).observe(time.monotonic() - prep.arrived)


def track(prep: Prepared, jobs: list[Job], scheduler: Scheduler) -> asyncio.Event:
    """An event set (on the event loop) once every one of `jobs` has finished; a verified view stops the
    request's other views."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    remaining = sum(not job.done for job in jobs)
    if remaining == 0:  # every job answered already (an unseen ARC task after test-time training)
        done.set()

    def finished(job: Job) -> None:
        nonlocal remaining
        supersede(prep, job, scheduler.cancel)
        remaining -= 1
        if remaining == 0:
            loop.call_soon_threadsafe(done.set)

    for job in jobs:
        job.on_done = finished
    return done


async def rounds(done: asyncio.Event, prep: Prepared, request: Request | None, service: Service) -> None:
    """Wait for the submitted round of a request's jobs, then run further rounds of views while its puzzle is
    unverified and its budget allows (`Solver.escalate`). A later round that finds the queue full is skipped: the
    answer then stands on the views already tried."""
    await wait(done, prep, request, service)
    while job_error(prep) is None:
        jobs = service.solver.escalate(prep)
        if not jobs:
            return
        done = track(prep, jobs, service.scheduler)
        try:
            service.submit(prep, jobs)
        except ApiError:
            del prep.jobs[-len(jobs) :]
            return
        await wait(done, prep, request, service)


async def wait(done: asyncio.Event, prep: Prepared, request: Request | None, service: Service) -> None:
    """Wait for the request's jobs; if the client disconnects meanwhile, cancel them to free their slots.

    The scheduler enforces deadlines between steps, so a step that never returns would hold its requests
    forever; past the deadline plus `stall_grace_s` the request is cancelled and answered 504 without it.
    """
    settings = service.settings
    give_up = prep.deadline + settings.stall_grace_s
    cancelled = False
    while not done.is_set():
        if time.monotonic() >= give_up:
            for job in prep.jobs:
                service.scheduler.cancel(job, Outcome.DEADLINE)
            service.record(prep, "stalled")
            raise ApiError(
                504,
                "deadline_exceeded",
                f"puzzle not finished within the {math.ceil(prep.deadline - prep.arrived)} s deadline: "
                f"the model step has been running for {service.scheduler.tick_running_s:.0f} s",
            )
        try:
            await asyncio.wait_for(done.wait(), timeout=POLL_S)
        except TimeoutError:
            if not cancelled and request is not None and await request.is_disconnected():
                for job in prep.jobs:
                    service.scheduler.cancel(job)
                cancelled = True


def answer(service: Service, prep: Prepared) -> SolveResponse:
    error = job_error(prep)
    if error is not None:
        service.record(prep, error.kind)
        if error.status == 504 and all(j.answer is not None for j in prep.jobs):
            error.extra = {"partial": service.solver.respond(prep).model_dump()}
        raise error
    response = service.solver.respond(prep)
    service.record(prep, "ok")
    verified = "none" if response.verified is None else str(response.verified).lower()
    service.metrics.verified.labels(prep.entry.name, verified).inc()
    return response


async def solve_one(req: SolveRequest, request: Request | None, service: Service) -> SolveResponse:
    """Prepare, queue and answer one request (its rounds included)."""
    prep = service.solver.prepare(req)
    await service.solver.adapt(prep)  # unseen ARC tasks: fit their puzzle vectors first (worker thread)
    done = track(prep, prep.jobs, service.scheduler)
    service.submit(prep)
    await rounds(done, prep, request, service)
    return answer(service, prep)

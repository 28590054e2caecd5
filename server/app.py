"""The FastAPI application: `create_app(settings)` and a lifespan that owns the registry and scheduler."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.puzzles.maze import tokens_to_chars
from server.limits import BodyLimitMiddleware
from server.metrics import Metrics
from server.registry import Registry
from server.scheduler import Draining, Job, ModelScheduler, Outcome, QueueFull, Scheduler, StepRecord
from server.schemas import BatchItem, BatchRequest, BatchResponse, ErrorBody, SolveRequest, SolveResponse
from server.settings import Settings
from server.solve import ApiError, Prepared, Solver, job_error, supersede

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
POLL_S = 0.1  # how often a waiting request checks whether its client went away
SAMPLE_KINDS = ("sudoku", "maze", "arc")


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


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
        jobs = prep.jobs if jobs is None else jobs
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


def _track(prep: Prepared, jobs: list[Job], scheduler: Scheduler) -> asyncio.Event:
    """An event set (on the event loop) once every one of `jobs` has finished; a verified view stops the
    request's other views."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    remaining = len(jobs)

    def finished(job: Job) -> None:
        nonlocal remaining
        supersede(prep, job, scheduler.cancel)
        remaining -= 1
        if remaining == 0:
            loop.call_soon_threadsafe(done.set)

    for job in jobs:
        job.on_done = finished
    return done


async def _rounds(done: asyncio.Event, prep: Prepared, request: Request | None, service: Service) -> None:
    """Wait for the submitted round of a request's jobs, then run further rounds of views while its puzzle is
    unverified and its budget allows (`Solver.escalate`). A later round that finds the queue full is skipped: the
    answer then stands on the views already tried."""
    await _wait(done, prep, request, service)
    while job_error(prep) is None:
        jobs = service.solver.escalate(prep)
        if not jobs:
            return
        done = _track(prep, jobs, service.scheduler)
        try:
            service.submit(prep, jobs)
        except ApiError:
            del prep.jobs[-len(jobs) :]
            return
        await _wait(done, prep, request, service)


async def _wait(done: asyncio.Event, prep: Prepared, request: Request | None, service: Service) -> None:
    """Wait for the request's jobs; if the client disconnects meanwhile, cancel them to free their slots.

    The scheduler enforces deadlines between steps, so a step that never returns would hold its requests
    forever; past the deadline plus `stall_grace_s` the request is cancelled and answered 504 without it.
    """
    settings = service.settings
    give_up = prep.arrived + settings.request_timeout_s + settings.stall_grace_s
    cancelled = False
    while not done.is_set():
        if time.monotonic() >= give_up:
            for job in prep.jobs:
                service.scheduler.cancel(job, Outcome.DEADLINE)
            service.record(prep, "stalled")
            raise ApiError(
                504,
                "deadline_exceeded",
                f"puzzle not finished within the {math.ceil(settings.request_timeout_s)} s deadline: "
                f"the model step has been running for {service.scheduler.tick_running_s:.0f} s",
            )
        try:
            await asyncio.wait_for(done.wait(), timeout=POLL_S)
        except TimeoutError:
            if not cancelled and request is not None and await request.is_disconnected():
                for job in prep.jobs:
                    service.scheduler.cancel(job)
                cancelled = True


def _answer(service: Service, prep: Prepared) -> SolveResponse:
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        registry = Registry(settings)
        await asyncio.to_thread(registry.load)
        schedulers = {
            name: ModelScheduler(
                name,
                entry.engine,
                settings.queue_capacity,
                settings.scheduler_policy,
                metrics,
                rules=entry.codec,
            )
            for name, entry in registry.pools().items()
        }
        scheduler = Scheduler(schedulers)
        service = Service(settings, registry, scheduler, metrics)
        metrics.build.info({"version": _version(), "backend": settings.backend})
        for name, entry in registry.models.items():
            metrics.model_info.labels(name).info(
                {"puzzle": entry.family, "sha256": entry.checkpoint.sha256, "backend": entry.engine.backend}
            )
        for name in schedulers:
            metrics.gauges(name, 0, 0)
        scheduler.start()
        app.state.service = service
        service.ready = True
        try:
            yield
        finally:
            service.ready = False
            await asyncio.to_thread(scheduler.drain, settings.drain_timeout_s)
            scheduler.stop()

    app = FastAPI(title="TRM server", version=_version(), lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    def service_of(request: Request) -> Service:
        service: Service = request.app.state.service
        return service

    def auth(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def auth_protected(request: Request) -> None:
        if settings.protect_metrics:
            auth(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({**exc.body(), **exc.extra}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        body = ErrorBody(error=kinds.get(exc.status_code, "http_error"), message=str(exc.detail), field=None)
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body at all
            body = ErrorBody(error="invalid_request", message=_unparsable(exc.__cause__), field="body")
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = f"{field}: {first.get('msg', 'invalid')}"
        if first.get("type") == "json_invalid":  # loc is ("body", character offset): name the body, not "[30]"
            field = "body"
            ctx = first.get("ctx")
            reason = ctx.get("error", "decode error") if isinstance(ctx, dict) else "decode error"
            offset = tuple(first.get("loc", ("body", "?")))[-1]
            message = f"body is not valid JSON: {reason} at character {offset}"
        return JSONResponse(
            ErrorBody(error="invalid_request", message=message, field=field).model_dump(), status_code=422
        )

    async def solve_one(req: SolveRequest, request: Request | None, service: Service) -> SolveResponse:
        prep = service.solver.prepare(req)
        await service.solver.adapt(prep)  # unseen ARC tasks: fit their puzzle vectors first (worker thread)
        done = _track(prep, prep.jobs, service.scheduler)
        service.submit(prep)
        await _rounds(done, prep, request, service)
        return _answer(service, prep)

    @app.post(
        "/solve",
        response_model=SolveResponse,
        dependencies=[Depends(auth)],
        responses={code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 500, 503, 504)},
    )
    async def solve(req: SolveRequest, request: Request) -> Any:
        service = service_of(request)
        if req.stream:
            prep = service.solver.prepare(req)
            await service.solver.adapt(prep)
            return _stream(service, prep, request)
        return await solve_one(req, request, service)

    @app.post(
        "/solve/batch",
        response_model=BatchResponse,
        dependencies=[Depends(auth)],
        responses={code: {"model": ErrorBody} for code in (400, 401, 413, 415, 422, 503)},
    )
    async def solve_batch(batch: BatchRequest, request: Request) -> BatchResponse:
        service = service_of(request)
        if len(batch.requests) > settings.max_batch_requests:
            raise ApiError(
                422,
                "invalid_request",
                f"requests has {len(batch.requests)} entries, at most {settings.max_batch_requests}",
                "requests",
            )
        if any(r.stream for r in batch.requests):
            raise ApiError(422, "invalid_request", "stream is not supported inside a batch", "requests")

        async def one(i: int, req: SolveRequest) -> BatchItem:
            try:
                return BatchItem(status=200, result=await solve_one(req, None, service))
            except ApiError as exc:
                body = ErrorBody(
                    error=exc.kind,
                    message=exc.message,
                    field=f"requests[{i}].{exc.field}" if exc.field else f"requests[{i}]",
                )
                return BatchItem(status=exc.status, error=body)

        return BatchResponse(results=list(await asyncio.gather(*(one(i, r) for i, r in enumerate(batch.requests)))))

    @app.get("/models", dependencies=[Depends(auth_protected)])
    async def models(request: Request) -> dict[str, Any]:
        service = service_of(request)
        return {
            "models": [e.describe() for e in service.registry.models.values()],
            "broken": service.registry.broken,
        }

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready", responses={503: {"description": "not ready: loading or draining"}})
    async def ready(request: Request) -> JSONResponse:
        service: Service | None = getattr(request.app.state, "service", None)
        ok = (
            service is not None
            and service.ready
            and not service.scheduler.draining
            and service.scheduler.tick_running_s < settings.request_timeout_s + settings.stall_grace_s
        )
        return JSONResponse({"status": "ready" if ok else "not_ready"}, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=[Depends(auth_protected)], response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        body = service_of(request).metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC / "index.html"
        if page.is_file():
            return FileResponse(page)
        return JSONResponse({"service": "trm", "docs": "/docs"})

    samples = _load_samples(STATIC / "samples.json")

    @app.get("/puzzles/random", responses={code: {"model": ErrorBody} for code in (404, 422)})
    async def random_puzzle(
        kind: str | None = None, max_side: int | None = None, side: int | None = None, width: int | None = None
    ) -> dict[str, Any]:
        """An example puzzle from server/static/samples.json (made by `python -m training.data.samples`), or with
        `side` (and `width`, else square) a fresh people-style maze of that size, ring included."""
        if kind not in SAMPLE_KINDS:
            got = "missing" if kind is None else f"{kind!r}"
            raise ApiError(422, "invalid_request", f"kind must be one of {', '.join(SAMPLE_KINDS)}; got {got}", "kind")
        if side is not None or width is not None:
            return await asyncio.to_thread(_fresh_maze, kind, side, width, settings.max_maze_side)
        pool = samples.get(kind, [])
        if max_side is not None and kind in ("maze", "arc"):
            pool = [p for p in pool if _sample_side(p) <= max_side]
        if not pool:
            raise ApiError(404, "no_sample", f"no {kind} sample available", "kind" if max_side is None else "max_side")
        index = secrets.randbelow(len(pool))
        if kind == "arc":
            return {"puzzle": "arc", "task": pool[index]["task"], "task_id": pool[index]["task_id"]}
        return {"puzzle": kind, "grid": pool[index]}

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _unparsable(cause: BaseException) -> str:
    """Why a body that is not a JSON decode error still failed to parse (too deep, a huge number, not UTF-8)."""
    if isinstance(cause, RecursionError):
        return "body is not valid JSON: nested too deeply"
    if isinstance(cause, UnicodeDecodeError):
        return "body is not valid JSON: not UTF-8 text"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "body is not valid JSON: a number has too many digits"
    return f"body could not be parsed ({type(cause).__name__})"


def _fresh_maze(kind: str, side: int | None, width: int | None, limit: int) -> dict[str, Any]:
    """A maze drawn by one of `training.data.mazes_people`'s generators, inside a wall ring, at the asked size."""
    if kind != "maze":
        raise ApiError(422, "invalid_request", f"side and width make mazes; kind is {kind!r}", "side")
    height, width = side or width or 0, width or side or 0
    for name, value in (("side", height), ("width", width)):
        if not 5 <= value <= limit + 2:
            message = f"{name} is {value}: a generated maze has 5 to {limit + 2} cells a side, ring included"
            raise ApiError(422, "invalid_request", message, name)
    from training.data.mazes_people import GENERATORS, generate

    generator = GENERATORS[secrets.randbelow(len(GENERATORS))]
    questions, _, _ = generate(1, height, width, generator=generator, ring=True, seed=secrets.randbits(31))
    return {"puzzle": "maze", "grid": tokens_to_chars(questions[0]), "generator": generator}


def _sample_side(sample: Any) -> int:
    """The side a model's square needs for a sample: a maze's row count, an ARC task's largest grid dimension."""
    if isinstance(sample, dict):  # ARC: {"task_id", "task": {"train": [...], "test": [...]}}
        grids = [g for pairs in sample["task"].values() for pair in pairs for g in pair.values()]
        return max(max(len(g), len(g[0]) if g else 0) for g in grids)
    return len(sample)


def _load_samples(path: Path) -> dict[str, list[Any]]:
    """Example puzzles by kind; Sudoku strings become 9x9 int grids, the request format most clients send."""
    if not path.is_file():
        log.warning("%s not found: /puzzles/random will answer 404", path)
        return {}
    data = json.loads(path.read_text())
    out = {kind: list(data.get(kind, [])) for kind in SAMPLE_KINDS}
    out["sudoku"] = [[[int(ch) for ch in s[r * 9 : r * 9 + 9]] for r in range(9)] for s in out["sudoku"]]
    return out


def _stream(service: Service, prep: Prepared, request: Request) -> StreamingResponse:
    """Server-Sent Events: one `step` event per supervision step, then `result` (or `error`)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    main = prep.jobs[0]
    previous: list[Any] = [None]

    def on_step(job: Job, record: StepRecord) -> None:
        if job is main:
            loop.call_soon_threadsafe(events.put_nowait, ("step", record))

    for job in prep.jobs:
        job.on_step = on_step
    done = _track(prep, prep.jobs, service.scheduler)
    service.submit(prep)  # a full queue is a plain 503 here, before any event is sent
    waiter = asyncio.ensure_future(_rounds(done, prep, None, service))

    async def generate() -> AsyncIterator[bytes]:
        try:
            while True:
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    _, record = get.result()
                    state = service.solver.step_state(prep, record, previous[0])
                    previous[0] = state.solution
                    yield _sse("step", state.model_dump())
                    continue
                get.cancel()
                while not events.empty():
                    _, record = events.get_nowait()
                    state = service.solver.step_state(prep, record, previous[0])
                    previous[0] = state.solution
                    yield _sse("step", state.model_dump())
                try:
                    waiter.result()  # raises the 504 of a hung step
                    yield _sse("result", _answer(service, prep).model_dump())
                except ApiError as exc:
                    yield _sse("error", {"status": exc.status, **exc.body(), **exc.extra})
                return
        finally:
            if not waiter.done():
                for job in prep.jobs:
                    service.scheduler.cancel(job)

    return StreamingResponse(
        generate(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _version() -> str:
    try:
        return metadata.version("trm-stack")
    except metadata.PackageNotFoundError:
        return "0.0.0"

"""The FastAPI application: `create_app(settings)`, its routes and a lifespan that owns the registry and scheduler.

A request's life after validation is `server.service`, streaming `server.stream`, error answers `server.errors`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from server.errors import install_error_handlers
from server.limits import BodyLimitMiddleware
from server.metrics import Metrics
from server.registry import Registry
from server.samples import SAMPLE_KINDS, fresh_maze, load_samples, sample_side
from server.scheduler import ModelScheduler, Scheduler
from server.schemas import BatchItem, BatchRequest, BatchResponse, ErrorBody, SolveRequest, SolveResponse
from server.service import Service, solve_one
from server.settings import Settings
from server.solve import ApiError
from server.stream import stream

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


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

    install_error_handlers(app)

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
            return stream(service, prep, request)
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

    samples = load_samples(STATIC / "samples.json")

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
            return await asyncio.to_thread(fresh_maze, kind, side, width, settings.max_maze_side)
        pool = samples.get(kind, [])
        if max_side is not None and kind in ("maze", "arc"):
            pool = [p for p in pool if sample_side(p) <= max_side]
        if not pool:
            raise ApiError(404, "no_sample", f"no {kind} sample available", "kind" if max_side is None else "max_side")
        index = secrets.randbelow(len(pool))
        if kind == "arc":
            return {"puzzle": "arc", "task": pool[index]["task"], "task_id": pool[index]["task_id"]}
        return {"puzzle": kind, "grid": pool[index]}

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _version() -> str:
    try:
        return metadata.version("trm-stack")
    except metadata.PackageNotFoundError:
        return "0.0.0"

"""`"stream": true`: a request answered as Server-Sent Events, one `step` event per supervision step of its first
view, then `result` (or `error`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from server.scheduler import Job, StepRecord
from server.service import Service, answer, rounds, track
from server.solve import ApiError, Prepared


def stream(service: Service, prep: Prepared, request: Request) -> StreamingResponse:
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
    for record in main.steps if main.done else []:  # answered before streaming began (test-time training)
        events.put_nowait(("step", record))
    done = track(prep, prep.jobs, service.scheduler)
    service.submit(prep)  # a full queue is a plain 503 here, before any event is sent
    waiter = asyncio.ensure_future(rounds(done, prep, None, service))

    async def generate() -> AsyncIterator[bytes]:
        try:
            while True:
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    _, record = get.result()
                    state = service.solver.step_state(prep, record, previous[0])
                    previous[0] = state.solution
                    yield sse("step", state.model_dump())
                    continue
                get.cancel()
                while not events.empty():
                    _, record = events.get_nowait()
                    state = service.solver.step_state(prep, record, previous[0])
                    previous[0] = state.solution
                    yield sse("step", state.model_dump())
                try:
                    waiter.result()  # raises the 504 of a hung step
                    yield sse("result", answer(service, prep).model_dump())
                except ApiError as exc:
                    yield sse("error", {"status": exc.status, **exc.body(), **exc.extra})
                return
        finally:
            if not waiter.done():
                for job in prep.jobs:
                    service.scheduler.cancel(job)

    return StreamingResponse(
        generate(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()

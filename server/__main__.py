"""`python -m server [--flags]`: every Settings field is also a flag (`weights_dir` -> `--weights-dir`).

SIGTERM drains: readiness turns false, new puzzles get 503, queued and running ones are answered, then the
process exits 0. Puzzles still unfinished after `drain_timeout_s` are answered 503 and the process exits 0 then.
A second SIGTERM (or Ctrl-C twice) exits at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import types
from typing import Any, get_args

import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings

log = logging.getLogger("server")
ABORT_WAIT_S = 2.0  # after a timed-out drain: time for the scheduler to hand the aborted puzzles back


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m server", description="Serve TRM checkpoints over HTTP.")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + f" (env TRM_{name.upper()}, default {field.default!r})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            choices = get_args(field.annotation) if "Literal" in str(field.annotation) else None
            parser.add_argument(flag, dest=name, default=None, choices=choices or None, help=help_text)
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


class DrainingServer(uvicorn.Server):
    """uvicorn server whose first SIGTERM/SIGINT drains the scheduler before shutting down."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_timeout = drain_timeout
        self.draining = False

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        service = getattr(self.app.state, "service", None)
        if self.draining or service is None:
            super().handle_exit(sig, frame)  # second signal, or nothing to drain: stop now
            return
        self.draining = True
        log.info("received %s: draining (up to %.0f s)", signal.Signals(sig).name, self.drain_timeout)
        service.ready = False
        service.scheduler.draining = True

        def drain() -> None:
            finished = service.scheduler.drain(self.drain_timeout)
            log.info("drain %s; shutting down", "complete" if finished else "timed out")
            if not finished:  # answer what is left (503) so connections close now, not after uvicorn's own timeout
                service.scheduler.abort()
                service.scheduler.drain(ABORT_WAIT_S)
            self.should_exit = True

        threading.Thread(target=drain, name="trm-drain", daemon=True).start()


UVICORN_GRACE_S = 5
"""Seconds uvicorn's own graceful shutdown waits past the drain limit before it cancels what is left: our drain
answers every unfinished puzzle 503 at the limit, so reaching this means the drain itself hung."""


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(**parse_args(argv))
    except ValueError as exc:
        sys.stderr.write(f"invalid settings: {exc}\n")
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + UVICORN_GRACE_S,
        lifespan="on",
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())

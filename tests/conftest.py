"""Shared fixtures: tiny configs and models that build in milliseconds on a CPU."""

from __future__ import annotations

import os

import pytest
import torch

from model.config import TRMConfig
from tests.gpu_smoke import START_WITH, SmokeRun


class _Smoke:
    """This session's smoke run: whether a selected test reads it, and the run once started."""

    wanted = False
    run: SmokeRun | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    _Smoke.wanted = any("gpu_smoke_run" in getattr(item, "fixturenames", ()) for item in session.items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Starts the smoke run early, in a serial session only: under pytest-xdist a worker cannot tell whether the
    smoke test will come to it, so its fixture starts the run when it does, and the other worker keeps the cores
    busy while that one mostly waits."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if _Smoke.wanted and _Smoke.run is None and item.nodeid.startswith(START_WITH):
        _Smoke.run = SmokeRun.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run still going when the session ends (an aborted session never read it) is waited for, not left behind."""
    if _Smoke.run is not None and _Smoke.run.proc.poll() is None:
        _Smoke.run.result()


@pytest.fixture(scope="session")
def gpu_smoke_run() -> SmokeRun:
    """The background smoke run, started now if no model test started it."""
    if _Smoke.run is None:
        _Smoke.run = SmokeRun.start()
    return _Smoke.run


def tiny_config(**overrides: object) -> TRMConfig:
    """A 4x4-Sudoku-sized TRM: small enough for step-by-step tests, same code paths as the paper models."""
    base: dict[str, object] = dict(
        family="sudoku",
        vocab_size=11,
        seq_len=16,
        puzzle_emb_len=4,
        hidden_size=32,
        num_heads=4,
        expansion=2.0,
        num_layers=2,
        h_cycles=2,
        l_cycles=2,
        halt_max_steps=4,
    )
    base.update(overrides)
    return TRMConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _eval_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated held-out sets go to the session's temporary directory, not the checkout's data_cache/."""
    from training.data import sources

    cache = tmp_path_factory.getbasetemp() / "eval-cache"
    monkeypatch.setattr(sources, "EVAL_CACHE", cache)
    monkeypatch.setenv("TRM_EVAL_CACHE", str(cache))  # for the CLIs tests start as subprocesses


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

"""Shared fixtures: tiny configs and models that build in milliseconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from model.config import TRMConfig
from tests.gpu_smoke import START_WITH, SmokeRun

_smoke: dict[str, SmokeRun | bool] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Whether this run includes a test that reads the GPU check's smoke run (`tests/gpu_smoke.py`)."""
    _smoke["wanted"] = any("gpu_smoke_run" in getattr(item, "fixturenames", ()) for item in session.items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _smoke.get("wanted") and "run" not in _smoke and item.nodeid.startswith(START_WITH):
        _smoke["run"] = SmokeRun.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run the suite started and never read (an aborted session) is waited for, not left behind."""
    run = _smoke.get("run")
    if isinstance(run, SmokeRun):
        run.result()


@pytest.fixture(scope="session")
def gpu_smoke_run() -> SmokeRun:
    """The background smoke run, started now if no model test started it."""
    run = _smoke.get("run")
    if not isinstance(run, SmokeRun):
        run = _smoke["run"] = SmokeRun.start()
    return run


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
def _seed() -> None:
    torch.manual_seed(0)

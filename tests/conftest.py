"""Shared fixtures: tiny configs and models that build in milliseconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from model.config import TRMConfig


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

"""A CPU engine may run a step's batch in row chunks to stay in cache; the answers must be those of one pass."""

from __future__ import annotations

import numpy as np
import torch

from server.engine import TorchEngine, chunk_rows
from tests.server.conftest import tiny_model


def test_chunks_cover_the_rows_in_order_within_the_cell_budget() -> None:
    assert chunk_rows(10, 100, 0) == [slice(0, 10)]
    assert chunk_rows(10, 100, 300) == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert chunk_rows(3, 1000, 10) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # never less than a row


def test_a_chunked_step_answers_as_one_pass() -> None:
    model, config = tiny_model("sudoku", 81, seed=4)
    one = TorchEngine(model, config, 8, torch.device("cpu"))
    chunked = TorchEngine(model, config, 8, torch.device("cpu"), chunk_tokens=3 * 81)  # three rows a pass
    rng = np.random.default_rng(0)
    for slot in range(7):
        tokens = rng.integers(1, 11, size=81)
        for engine in (one, chunked):
            engine.load(slot, tokens, engine.vector_for(0))
    slots = [0, 2, 3, 5, 6, 1, 4]
    for _ in range(3):
        a, b = one.step(slots), chunked.step(slots)
        assert np.array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.q_halt, b.q_halt, rtol=0, atol=1e-5)
    torch.testing.assert_close(one.y[:7], chunked.y[:7], rtol=0, atol=1e-5)

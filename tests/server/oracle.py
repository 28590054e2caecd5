"""A test-only engine hook (`engine_hook` setting) that solves every turned view of a puzzle but not the unturned one.

    Settings(engine_hook="tests.server.oracle:install")

Every Sudoku puzzle in the server tests blanks cells of `SOLVED`, so a slot's input is a blanked copy of SOLVED
under some symmetry of the square; the hook finds which and, unless it is the identity, answers SOLVED under it.
An untrained model never solves the identity view, so a request needs escalation to get a verified answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from inference.views import turn
from server.engine import Engine, StepResult
from tests.server.conftest import SOLVED

SOLUTION = np.array([v + 1 for row in SOLVED for v in row])  # Sudoku tokens are value + 1


class Oracle:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.turned = [turn(SOLUTION, tid) for tid in range(8)]

    def view_of(self, slot: int) -> int | None:
        row = self.engine.inputs[slot].cpu().numpy()  # type: ignore[attr-defined]
        given = row >= 2
        return next((tid for tid, sol in enumerate(self.turned) if np.array_equal(row[given], sol[given])), None)

    def __call__(self, slots: Sequence[int], result: StepResult | None) -> StepResult | None:
        if result is None:
            return None
        tokens = result.tokens.copy()
        for row, slot in enumerate(slots):
            tid = self.view_of(slot)
            if tid:  # not None and not the identity
                tokens[row] = self.turned[tid]
        return replace(result, tokens=tokens)


def install(engine: Engine) -> None:
    if engine.config.family == "sudoku":
        engine.hooks.append(Oracle(engine))

"""Fault injection inside the real server process, through the test-only `engine_hook` setting.

    python -m server --engine-hook tests.server.faults:install ...      (cwd = the repository root)

`install` adds one step hook to every Sudoku engine. The puzzle itself picks the fault, so a single server
process serves all of them next to ordinary puzzles: a grid whose only givens are its first row, set to one of
the MARKERS below, triggers that fault whenever it sits in a batch. Any other puzzle runs untouched.

* raise: the step raises before computing, so every puzzle of that batch fails (500) and the next batch runs.
* nan:   the step's q_halt for that puzzle's row becomes NaN; only that puzzle fails (500, non-finite).
* slow:  the step sleeps SLOW_S first, longer than the test server's deadline (504 for that batch).
* hang:  the step sleeps HANG_S, far past the deadline plus the stall grace: the request must not wait for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from server.engine import Engine, StepResult

SLOW_S = 2.5
HANG_S = 8.0
MARKERS = {
    "raise": [1, 2, 3, 4, 5, 6, 7, 8, 9],
    "nan": [9, 8, 7, 6, 5, 4, 3, 2, 1],
    "slow": [2, 3, 4, 5, 6, 7, 8, 9, 1],
    "hang": [3, 4, 5, 6, 7, 8, 9, 1, 2],
}


def marked(fault: str) -> list[list[int]]:
    """A valid Sudoku request grid that triggers `fault`: its first row given, every other cell blank."""
    return [MARKERS[fault]] + [[0] * 9 for _ in range(8)]


class FaultHook:
    """A StepHook (see server/engine.py) that reads each slot's input tokens to find marked puzzles."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Sudoku tokens are value + 1 (blank = 1); the marked grids encode to these rows.
        self.tokens = {fault: np.array([v + 1 for v in row] + [1] * 72) for fault, row in MARKERS.items()}

    def fault_of(self, slot: int) -> str | None:
        row = self.engine.inputs[slot].cpu().numpy()  # type: ignore[attr-defined]
        return next((fault for fault, tokens in self.tokens.items() if np.array_equal(row, tokens)), None)

    def __call__(self, slots: Sequence[int], result: StepResult | None) -> StepResult | None:
        faults = [self.fault_of(slot) for slot in slots]
        if result is None:  # before the step
            if "raise" in faults:
                raise RuntimeError("injected fault: the step raised")
            if "slow" in faults:
                time.sleep(SLOW_S)
            if "hang" in faults:
                time.sleep(HANG_S)
            return None
        if "nan" not in faults:
            return None
        q_halt = result.q_halt.copy()
        for row, fault in enumerate(faults):
            if fault == "nan":
                q_halt[row] = math.nan  # `finite` is left True: the scheduler must catch the NaN itself
        return replace(result, q_halt=q_halt)


def install(engine: Engine) -> None:
    """The `engine_hook` entry point: hook every Sudoku engine, leave the others alone."""
    if engine.config.family == "sudoku":
        engine.hooks.append(FaultHook(engine))

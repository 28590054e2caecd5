"""When a puzzle stops thinking: the halting policy, read once from a checkpoint's calibration.

Every place that runs puzzles (the server's scheduler, `training.evaluate`, `training.calibrate`) builds a
`HaltingPolicy` here and asks it `decide` after each supervision step, so a model card's figures are what the
server does by construction. Three signals can end a puzzle, in this order:

* verified: the answer passes the puzzle's exact rule check (Sudoku, mazes). A checked answer is a right answer,
  so stopping there never costs accuracy and saves every later step.
* q_head: the halting head's probability reaches the threshold `training.calibrate` chose for the checkpoint (a
  small model's head is overconfident early, so the reference's 0.5 can answer too soon).
* max_steps: the horizon the threshold was calibrated over, else the trained `halt_max_steps`.

Where the values come from, highest first: the request, the operator (server settings, CLI flags), the card's
calibration for that many views (else for one view), the checkpoint's config. `Calibration.policy` is the one place
that merges them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

import numpy as np

from inference.escalation import DEFAULT_BUDGET_STEPS
from model.config import TRMConfig

DEFAULT_HALT_THRESHOLD = 0.5
"""The reference's rule, q_halt > 0, as a probability: what an uncalibrated checkpoint halts at."""

HaltMode = Literal["adaptive", "q_head", "never"]
"""adaptive: verified answers and the Q head end a puzzle; q_head: the Q head alone (the paper's inference, for
research); never: every puzzle runs all its steps (the reference's evaluation)."""
HALT_MODES: tuple[HaltMode, ...] = ("adaptive", "q_head", "never")


AnswerCheck = Callable[[np.ndarray, np.ndarray], np.ndarray | None]
"""A codec's `check_tokens`: answers [k, L] to inputs [k, L] -> bool [k] (None where no rule check exists)."""


class Rules(Protocol):
    """What running puzzles needs of a puzzle family (its codec): the answer a prediction gives, and its check."""

    def settle(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray: ...

    def check_tokens(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray | None: ...


class HaltReason(StrEnum):
    VERIFIED = "verified"
    Q_HEAD = "q_head"
    MAX_STEPS = "max_steps"
    DEADLINE = "deadline"


@dataclass(frozen=True)
class HaltingPolicy:
    """How one puzzle (or one view of it) halts."""

    threshold: float
    """Halting probability (sigmoid of the Q head's logit) at which the puzzle stops."""
    max_steps: int
    mode: HaltMode = "adaptive"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"halting threshold must be in (0, 1), got {self.threshold}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.mode not in HALT_MODES:
            raise ValueError(f"halt mode {self.mode!r} not in {HALT_MODES}")

    @property
    def checks_answers(self) -> bool:
        """Whether a step's answer should be run through the rule check (costs a check per step)."""
        return self.mode == "adaptive"

    def decide(self, step: int, probability: float, verified: bool | None) -> HaltReason | None:
        """Why the puzzle stops after supervision step `step` (1-based), or None to run another step.

        Args:
            step: steps run so far.
            probability: the halting head's sigmoid(q_halt) after this step.
            verified: the rule check of this step's answer; None where the family has none (ARC) or it was not run.
        """
        if self.mode == "adaptive" and verified:
            return HaltReason.VERIFIED
        if self.mode != "never" and probability >= self.threshold:
            return HaltReason.Q_HEAD
        if step >= self.max_steps:
            return HaltReason.MAX_STEPS
        return None


ALONE = 0
"""Where `Calibration` keeps, among its records by view count, the one for a single view that gets no further view
(`halting_key(alone=True)`)."""


def halting_key(views: int = 1, canvas: int | None = None, alone: bool = False) -> str:
    """Where `python -m training.calibrate --views K` stores its result in metrics.json; a size-agnostic maze model
    calibrated on mazes that run on another canvas than its own (`inference.canvas`) gets a key per canvas.

    `alone` (one view): the calibration of `training.calibrate --alone`, for requests whose single view gets no
    further view from a step budget (`budget: 0`, or halting by the Q head alone). Such a view has every step of
    the request to itself, so its best horizon is longer than that of a first view that escalation backs up."""
    if alone and views != 1:
        raise ValueError("a calibration for a view alone is for one view")
    key = "halting" if canvas is None else f"halting_canvas{canvas}"
    return f"{key}_alone" if alone else key if views == 1 else f"{key}_views{views}"


def _canvas_key(key: str) -> bool:
    digits = key[len("halting_canvas") :].split("_")[0]
    return key.startswith("halting_canvas") and digits.isdigit()


def _threshold(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and 0 < value < 1 else None


def _horizon(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


@dataclass(frozen=True)
class Calibrated:
    threshold: float
    max_steps: int | None
    """The horizon the threshold was swept over (`training.calibrate --max-steps`); None: the trained one."""


@dataclass(frozen=True)
class Calibration:
    """A checkpoint's halting calibration, read once from its card (`metrics.json`) and config."""

    by_views: dict[int, Calibrated]
    trained_horizon: int
    by_canvas: dict[int, dict[int, Calibrated]] = field(default_factory=dict)
    """A size-agnostic maze model's calibrations per canvas side (then per view count): bigger mazes need more
    steps, so each canvas has its own horizon."""

    @classmethod
    def from_card(cls, card: dict[str, Any], config: TRMConfig) -> Calibration:
        def read(canvas: int | None) -> dict[int, Calibrated]:
            keys = {views: halting_key(views, canvas) for views in range(1, 9)}
            keys[ALONE] = halting_key(1, canvas, alone=True)
            records: dict[int, Calibrated] = {}
            for views, key in keys.items():
                record = card.get(key)
                threshold = _threshold(record.get("threshold")) if isinstance(record, dict) else None
                if isinstance(record, dict) and threshold is not None:
                    records[views] = Calibrated(threshold, _horizon(record.get("max_steps")))
            return records

        canvases = {int(k[len("halting_canvas") :].split("_")[0]) for k in card if _canvas_key(k)}
        by_canvas = {side: records for side in sorted(canvases) if (records := read(side))}
        return cls(read(None), config.halt_max_steps, by_canvas)

    def record(self, views: int = 1, canvas: int | None = None, alone: bool = False) -> Calibrated | None:
        """The calibration for answers voted over `views` symmetries: that many views' own, else one view's; for one
        view `alone` (no further views will back it up), its own calibration first.

        A vote forgives a view that halted too early, so its threshold can be lower than a single view's (maze-9x9:
        0.6 against 0.8 for the same 8-view accuracy, a sixth fewer steps). A threshold and the horizon it was swept
        over go together, so both come from the same record. With `canvas`, the records of the largest calibrated
        canvas not bigger than it come first: a maze never gets fewer steps than a smaller one was calibrated to.
        """
        sides = [side for side in self.by_canvas if canvas is not None and side <= canvas]
        table = self.by_canvas[max(sides)] if sides else self.by_views
        own = table.get(ALONE) if alone and views == 1 else None
        return own or table.get(views) or table.get(1)

    def threshold(self, views: int = 1, canvas: int | None = None, alone: bool = False) -> float:
        record = self.record(views, canvas, alone)
        return record.threshold if record is not None else DEFAULT_HALT_THRESHOLD

    def horizon(self, views: int = 1, canvas: int | None = None, alone: bool = False) -> int:
        record = self.record(views, canvas, alone)
        return record.max_steps if record is not None and record.max_steps else self.trained_horizon

    def calibrated_views(self) -> list[int]:
        """View counts with a calibration of their own, beyond the single view."""
        return sorted(v for v in self.by_views if v > 1)

    def policy(
        self,
        views: int = 1,
        mode: HaltMode = "adaptive",
        threshold: float | None = None,
        max_steps: int | None = None,
        operator: Operator | None = None,
        canvas: int | None = None,
        budget: int = DEFAULT_BUDGET_STEPS,
    ) -> HaltingPolicy:
        """The policy for one request: its own `threshold`/`max_steps` first, then the operator's, then this
        calibration (for `views`, and the canvas a size-agnostic model runs the puzzle on), then the config.

        `budget` is the request's step budget for further views (`inference.escalation`; default the server's): a
        single view that no budget backs up (a budget of 0, or a mode that checks no answer) is calibrated `alone`."""
        operator = operator or Operator()
        alone = views == 1 and not (budget and mode == "adaptive")
        return HaltingPolicy(
            threshold=threshold or operator.threshold or self.threshold(views, canvas, alone),
            max_steps=max_steps or operator.max_steps or self.horizon(views, canvas, alone),
            mode=mode,
        )


@dataclass(frozen=True)
class Operator:
    """Defaults an operator sets for every request (server settings, evaluation flags); None: the calibration's."""

    threshold: float | None = None
    max_steps: int | None = None


def first_halts(
    policy: HaltingPolicy, probabilities: np.ndarray, verified: np.ndarray | None = None
) -> tuple[np.ndarray, list[HaltReason]]:
    """Where each puzzle of a trace halts under `policy`: `decide` asked after every traced step.

    Args:
        probabilities: halting probabilities [steps, N] of steps 1..steps.
        verified: rule checks of those steps' answers [steps, N], or None where there is none.
    Returns:
        the 0-based step index each puzzle halts at, and why. A puzzle still running at the end of the trace
        stops at its last step, as `max_steps`.
    """
    steps, n = probabilities.shape
    at = np.full(n, steps - 1, dtype=np.int64)
    reasons = [HaltReason.MAX_STEPS] * n
    for i in range(n):
        for s in range(steps):
            check = None if verified is None else bool(verified[s, i])
            reason = policy.decide(s + 1, float(probabilities[s, i]), check)
            if reason is not None:
                at[i], reasons[i] = s, reason
                break
    return at, reasons

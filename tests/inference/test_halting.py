"""The halting policy: one `decide`, table-driven over modes, thresholds, horizons and rule checks; and the card's
calibration read once, with request > operator > card > config precedence."""

from __future__ import annotations

import numpy as np
import pytest

from inference.halting import Calibration, HaltingPolicy, HaltReason, Operator, first_halts, halting_key
from model.config import TRMConfig

V, Q, M = HaltReason.VERIFIED, HaltReason.Q_HEAD, HaltReason.MAX_STEPS


@pytest.mark.parametrize(
    ("mode", "threshold", "max_steps", "step", "probability", "verified", "expected"),
    [
        ("adaptive", 0.8, 16, 1, 0.1, True, V),  # a checked answer ends the puzzle at once
        ("adaptive", 0.8, 16, 1, 0.9, True, V),  # ... and says why, even when the head agrees
        ("adaptive", 0.8, 16, 3, 0.9, False, Q),  # the head still ends a puzzle whose answer fails
        ("adaptive", 0.8, 16, 3, 0.79, False, None),
        ("adaptive", 0.8, 16, 3, 0.8, None, Q),  # the threshold is reached at equality
        ("adaptive", 0.8, 16, 16, 0.1, False, M),
        ("adaptive", 0.8, 16, 16, 0.1, True, V),  # verified at the last step counts as verified
        ("adaptive", 0.8, 32, 16, 0.1, None, None),  # a calibrated horizon past the trained one
        ("q_head", 0.8, 16, 1, 0.1, True, None),  # the paper's inference ignores the rule check
        ("q_head", 0.8, 16, 2, 0.95, True, Q),
        ("q_head", 0.5, 8, 8, 0.1, None, M),
        ("never", 0.8, 16, 1, 0.99, True, None),  # the reference's evaluation: every step
        ("never", 0.8, 16, 15, 0.99, True, None),
        ("never", 0.8, 16, 16, 0.0, False, M),
    ],
)
def test_decide(
    mode: str, threshold: float, max_steps: int, step: int, probability: float, verified: bool | None, expected: object
) -> None:
    policy = HaltingPolicy(threshold, max_steps, mode)  # type: ignore[arg-type]
    assert policy.decide(step, probability, verified) is expected
    assert policy.checks_answers is (mode == "adaptive")


@pytest.mark.parametrize(
    ("threshold", "max_steps", "mode"), [(0.0, 8, "adaptive"), (1.0, 8, "adaptive"), (0.5, 0, "never"), (0.5, 8, "x")]
)
def test_a_policy_that_cannot_halt_sensibly_is_refused(threshold: float, max_steps: int, mode: str) -> None:
    with pytest.raises(ValueError):
        HaltingPolicy(threshold, max_steps, mode)  # type: ignore[arg-type]


def test_first_halts_asks_decide_after_every_traced_step() -> None:
    probs = np.array([[0.1, 0.9, 0.1], [0.2, 0.9, 0.1], [0.3, 0.9, 0.1]])  # (steps, puzzles)
    verified = np.array([[False, False, False], [True, False, False], [True, False, False]])
    at, why = first_halts(HaltingPolicy(0.8, 3), probs, verified)
    assert at.tolist() == [1, 0, 2] and why == [V, Q, M]
    at, why = first_halts(HaltingPolicy(0.8, 3, "q_head"), probs, verified)
    assert at.tolist() == [2, 0, 2] and why == [M, Q, M]
    at, _ = first_halts(HaltingPolicy(0.8, 3), probs, None)  # no rule check: the head and the horizon only
    assert at.tolist() == [2, 0, 2]


CARD = {
    "halting": {"threshold": 0.9, "max_steps": 12},
    "halting_views8": {"threshold": 0.6},
    "halting_views4": {"threshold": 1.5},  # unusable: falls back to one view's
    "heldout": {"exact_accuracy": 0.5},
}
CONFIG = TRMConfig(halt_max_steps=8)


def test_the_calibration_for_a_view_count_else_the_single_view_else_the_reference() -> None:
    calibration = Calibration.from_card(CARD, CONFIG)
    assert calibration.threshold() == 0.9 and calibration.horizon() == 12
    assert calibration.threshold(8) == 0.6 and calibration.horizon(8) == 8  # its own record: the trained horizon
    assert calibration.threshold(4) == 0.9 and calibration.horizon(4) == 12
    assert calibration.calibrated_views() == [8]
    empty = Calibration.from_card({"halting": "0.9"}, CONFIG)
    assert empty.threshold() == 0.5 and empty.horizon() == 8 and empty.calibrated_views() == []


def test_a_request_beats_the_operator_which_beats_the_card() -> None:
    calibration = Calibration.from_card(CARD, CONFIG)
    assert calibration.policy() == HaltingPolicy(0.9, 12, "adaptive")
    assert calibration.policy(8, "never") == HaltingPolicy(0.6, 8, "never")
    operator = Operator(threshold=0.7, max_steps=20)
    assert calibration.policy(operator=operator) == HaltingPolicy(0.7, 20)
    assert calibration.policy(max_steps=3, operator=operator) == HaltingPolicy(0.7, 3)
    assert calibration.policy(threshold=0.95, max_steps=3, operator=operator) == HaltingPolicy(0.95, 3)


def test_a_size_agnostic_model_takes_the_horizon_of_the_largest_calibrated_canvas_it_reaches() -> None:
    card = {
        **CARD,
        "halting_canvas40": {"threshold": 0.8, "max_steps": 32},
        "halting_canvas40_views8": {"threshold": 0.7, "max_steps": 24},
        "halting_canvas96": {"threshold": 0.85, "max_steps": 96},
        "halting_canvasx": {"threshold": 0.85, "max_steps": 96},  # not a canvas: ignored
    }
    calibration = Calibration.from_card(card, CONFIG)
    assert sorted(calibration.by_canvas) == [40, 96]
    assert calibration.policy(canvas=24) == HaltingPolicy(0.9, 12)  # under every calibrated canvas: the model's own
    assert calibration.policy(canvas=40) == HaltingPolicy(0.8, 32)
    assert calibration.policy(8, canvas=64) == HaltingPolicy(0.7, 24)  # 40's own 8-view record
    assert calibration.policy(4, canvas=64) == HaltingPolicy(0.8, 32)  # else 40's single view
    assert calibration.policy(canvas=136) == HaltingPolicy(0.85, 96)
    assert calibration.policy() == HaltingPolicy(0.9, 12)  # fixed-size models and the own canvas: unchanged
    assert calibration.policy(max_steps=5, canvas=96) == HaltingPolicy(0.85, 5)  # a request still wins


def test_a_single_view_without_a_budget_for_more_views_takes_its_own_calibration() -> None:
    card = {**CARD, "halting_alone": {"threshold": 0.8, "max_steps": 64}, "halting_canvas40_alone": {"threshold": 0.7}}
    calibration = Calibration.from_card(card, CONFIG)
    assert calibration.policy() == HaltingPolicy(0.9, 12)  # the default budget backs the first view up
    assert calibration.policy(budget=0) == HaltingPolicy(0.8, 64)
    assert calibration.policy(mode="q_head") == HaltingPolicy(0.8, 64, "q_head")  # no check: no further views
    assert calibration.policy(8, budget=0) == HaltingPolicy(0.6, 8)  # voted views have their own record
    assert calibration.policy(canvas=64, budget=0) == HaltingPolicy(0.7, 8)  # the canvas's own, at the trained 8
    assert calibration.policy(max_steps=5, budget=0) == HaltingPolicy(0.8, 5)  # a request still wins
    assert Calibration.from_card(CARD, CONFIG).policy(budget=0) == HaltingPolicy(0.9, 12)  # none: one view's
    assert calibration.calibrated_views() == [8]
    with pytest.raises(ValueError, match="one view"):
        halting_key(8, alone=True)
    assert halting_key(alone=True) == "halting_alone" and halting_key(1, 40, alone=True) == "halting_canvas40_alone"

"""Halting-threshold calibration: the sweep on a hand-made trace, the choice rule, and the card round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.halting import Calibration, HaltingPolicy
from model.checkpoint import save_checkpoint
from model.config import TRMConfig
from model.trm import TRM
from tests.training.test_evaluate import answer_under, inputs_for, manual_steps, puzzle_set, tiny_model
from training import calibrate
from training.calibrate import (
    choose,
    choose_horizon,
    horizon_sweep,
    sweep,
    sweep_views,
    trace_answers,
    trace_views,
)
from training.scoring import evaluate_model, evaluate_views

# Three puzzles, four steps. Puzzle 0 is right from step 2 on; puzzle 1 only at step 4; puzzle 2 is right at step 1
# and broken by step 3 (recursion can drift away from a right answer).
CORRECT = np.array([[0, 0, 1], [1, 0, 1], [1, 0, 0], [1, 1, 0]], dtype=bool)
PROBS = np.array([[0.6, 0.1, 0.7], [0.92, 0.2, 0.97], [0.99, 0.3, 0.99], [0.99, 0.5, 0.99]])
LABELS = np.ones((3, 1), dtype=np.int64)  # one cell per puzzle: answer 1 is right, 2 wrong
ANSWERS = np.where(CORRECT, 1, 2)[..., None]


def card_threshold(card: dict[str, object], views: int = 1) -> float:
    return Calibration.from_card(card, TRMConfig()).threshold(views)


def card_max_steps(card: dict[str, object], views: int = 1) -> int | None:
    record = Calibration.from_card(card, TRMConfig()).record(views)
    return None if record is None else record.max_steps


def test_sweep_halts_each_puzzle_at_its_first_step_over_the_threshold() -> None:
    rows = {r["threshold"]: r for r in sweep(ANSWERS, PROBS, LABELS, None, (0.5, 0.9, 0.95, 0.99))}
    # 0.5: puzzle 0 halts at step 1 (wrong), 1 at step 4 (right), 2 at step 1 (right).
    assert rows[0.5] == {"threshold": 0.5, "exact_accuracy": pytest.approx(2 / 3, abs=1e-4), "mean_steps": 2.0}
    # 0.9: steps 2, 4 (never passes: forced at the last step), 2 -> all right.
    assert rows[0.9]["exact_accuracy"] == 1.0 and rows[0.9]["mean_steps"] == pytest.approx(8 / 3, abs=1e-3)
    # 0.99: steps 3, 4, 3 -> puzzle 2 has drifted to a wrong answer.
    assert rows[0.99]["exact_accuracy"] == pytest.approx(2 / 3, abs=1e-4)


def test_choose_takes_the_lowest_threshold_within_tolerance_of_the_best_else_the_most_accurate() -> None:
    rows = sweep(ANSWERS, PROBS, LABELS, None, (0.5, 0.9, 0.95, 0.99))
    never = CORRECT[-1].mean()  # 2/3, as 0.5 and 0.99 get; 0.9 and 0.95 get every puzzle right
    assert choose(rows, never, tolerance=0.005) == 0.9  # 0.5 matches `never`, but 0.9 is a third better
    assert choose(rows, never, tolerance=0.34) == 0.5  # a loose tolerance: the cheapest within reach of the best
    assert choose(rows, 1.0, tolerance=0.005) == 0.9  # only 0.9 and 0.95 reach 1.0; the lower wins
    assert choose(rows, 1.5, tolerance=0.0) == 0.9  # none qualifies: the most accurate, fewest steps


def test_choose_gives_up_accuracy_only_for_a_real_saving_of_steps() -> None:
    def rows(*table: tuple[float, float, float]) -> list[dict[str, float]]:
        return [{"threshold": t, "exact_accuracy": a, "mean_steps": m} for t, a, m in table]

    # The finished hard Sudoku model on 30-40 givens: 0.85 is within half a point but saves 0.4% of the steps.
    easy = rows((0.5, 0.981, 1.192), (0.85, 0.995, 1.208), (0.95, 0.999, 1.212), (0.97, 1.0, 1.213))
    assert choose(easy, 1.0, tolerance=0.005) == 0.97
    # The same loss for a tenth of the steps is worth it.
    cheap = rows((0.5, 0.981, 1.0), (0.85, 0.995, 1.8), (0.97, 1.0, 2.0))
    assert choose(cheap, 1.0, tolerance=0.005) == 0.85
    # A lower threshold as accurate as the most accurate one needs no saving.
    assert choose(rows((0.6, 1.0, 2.0), (0.9, 1.0, 2.0)), 1.0, tolerance=0.0) == 0.6


def test_the_horizon_is_the_shortest_whose_best_threshold_is_within_tolerance_of_the_longest() -> None:
    """Puzzle 1 is right only at step 4: cut at 2 steps the best threshold gets two of three, at 4 all three."""
    rows = horizon_sweep(ANSWERS, PROBS, LABELS, None, (4, 2), tolerance=0.005)
    assert [row["max_steps"] for row in rows] == [2, 4]
    assert rows[0]["exact_accuracy"] == pytest.approx(2 / 3, abs=1e-4) and rows[1]["exact_accuracy"] == 1.0
    assert rows[1]["mean_steps"] == pytest.approx((2 + 4 + 1) / 3, abs=1e-3)  # threshold 0.7: steps 2, 4 and 1
    assert choose_horizon(rows, 0.005) == 4
    assert choose_horizon(rows, 0.4) == 2  # a third of a point is within a 0.4 tolerance: the shorter wins


def test_trace_matches_the_manual_step_loop() -> None:
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    inputs = inputs_for(8)
    preds, qs = manual_steps(model, inputs)
    labels = preds[1].copy()
    answers, probs = trace_answers(model, puzzle_set(inputs, labels), batch_size=3)
    correct = (answers == labels).all(-1)
    assert correct.shape == probs.shape == (model.config.halt_max_steps, 8)
    assert correct[1].all()
    expected = [[np.array_equal(p[i], labels[i]) for i in range(8)] for p in preds]
    assert np.array_equal(correct, np.array(expected))
    assert np.allclose(probs, torch.sigmoid(torch.as_tensor(np.stack(qs))).numpy(), atol=1e-6)


def test_evaluate_uses_the_threshold_it_is_given() -> None:
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    data = puzzle_set(inputs_for(16), np.ones((16, 16), np.uint8))
    answers, probs = trace_answers(model, data)
    steps = model.config.halt_max_steps
    for t in (0.3, 0.6, 0.9):
        expected = sweep(answers, probs, np.asarray(data.labels), None, (t,))[0]["mean_steps"]
        result = evaluate_model(model, data, policy=HaltingPolicy(t, steps))
        assert result["mean_steps"] == pytest.approx(expected, abs=1e-3)


def test_sweep_views_scores_the_vote_of_views_that_each_halt_at_their_own_step() -> None:
    # One puzzle of one cell (label 1), three views, two steps; answers already turned back.
    answers = np.array([[[[2]], [[1]]], [[[1]], [[1]]], [[[2]], [[1]]]])  # (views, steps, puzzles, length)
    probs = np.array([[[0.6], [0.9]], [[0.95], [0.99]], [[0.7], [0.9]]])  # (views, steps, puzzles)
    labels = np.array([[1]])
    rows = {r["threshold"]: r for r in sweep_views(answers, probs, labels, None, (0.5, 0.8, 0.97))}
    # 0.5: every view halts at step 1; views 0 and 2 say 2, and two votes beat one.
    assert rows[0.5] == {"threshold": 0.5, "exact_accuracy": 0.0, "mean_steps": 3.0}
    # 0.8: views 0 and 2 go on to step 2 and answer 1; view 1 halted at step 1 with 1: 1+2+2 steps.
    assert rows[0.8] == {"threshold": 0.8, "exact_accuracy": 1.0, "mean_steps": 5.0}
    # 0.97: view 1 waits for step 2 too.
    assert rows[0.97]["mean_steps"] == 6.0
    one = sweep_views(answers[:1], probs[:1], labels, None, (0.5, 0.8))
    assert one == sweep(answers[0], probs[0], labels, None, (0.5, 0.8))  # a single view's sweep is the plain one


def test_trace_views_and_its_sweep_match_evaluate_views() -> None:
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    inputs = inputs_for(8)
    labels = answer_under(model, inputs, 3)
    data = puzzle_set(inputs, labels)
    answers, probs = trace_views(model, data, 8)
    assert answers.shape == (8, model.config.halt_max_steps, 8, 16) and probs.shape == answers.shape[:3]
    for tid in range(8):
        assert np.array_equal(answers[tid, -1], answer_under(model, inputs, tid))
    steps = model.config.halt_max_steps
    for row in sweep_views(answers, probs, labels, None, (0.3, 0.6, 0.9)):
        voted = evaluate_views(model, data, 8, policy=HaltingPolicy(row["threshold"], steps), batch_size=3)
        assert row["exact_accuracy"] == pytest.approx(voted["exact_accuracy"], abs=1e-4)
        assert row["mean_steps"] == pytest.approx(voted["mean_steps"], abs=1e-3)
    never = calibrate.calibrate(model, data, 0.005, views=8)["never_exact_accuracy"]
    never_policy = HaltingPolicy(0.5, steps, "never")
    assert never == pytest.approx(evaluate_views(model, data, 8, policy=never_policy)["exact_accuracy"], abs=1e-4)


def test_cli_views_stores_its_own_threshold_beside_the_single_view_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    weights = save_checkpoint(model, model.config, tmp_path / "w")
    (weights / "metrics.json").write_text(json.dumps({"halting": {"threshold": 0.97}}))
    argv = ["--weights", str(weights), "--data", "generate:sudoku:12:6:10:3"]
    assert calibrate.main([*argv, "--views", "8", "--dtype", "bfloat16"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    card = json.loads((weights / "metrics.json").read_text())
    assert card["halting"] == {"threshold": 0.97}
    assert card["halting_views8"] == printed and printed["views"] == 8 and printed["dtype"] == "bfloat16"
    assert card_threshold(card, 8) == printed["threshold"]
    assert card_threshold(card, 4) == card_threshold(card) == 0.97  # uncalibrated view counts: the single view's
    with pytest.raises(SystemExit):
        calibrate.main([*argv, "--views", "9"])
    assert "--views must be 1..8" in capsys.readouterr().err


def test_cli_stores_the_threshold_in_the_card_and_the_card_reader_returns_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    weights = save_checkpoint(model, model.config, tmp_path / "w")
    (weights / "metrics.json").write_text(json.dumps({"heldout": {"exact_accuracy": 0.5}}))
    assert calibrate.main(["--weights", str(weights), "--data", "generate:sudoku:12:6:10:3"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    card = json.loads((weights / "metrics.json").read_text())
    assert card["heldout"] == {"exact_accuracy": 0.5}  # other card figures are kept
    assert card["halting"] == printed and printed["puzzles"] == 12
    assert printed["threshold"] in [row["threshold"] for row in printed["sweep"]]
    assert card_threshold(card) == printed["threshold"]


@pytest.mark.parametrize("card", [{}, {"halting": {"threshold": 1.5}}, {"halting": "0.9"}, {"halting": {}}])
def test_card_threshold_falls_back_to_the_reference_rule(card: dict[str, object]) -> None:
    assert card_threshold(card) == 0.5


def saved_tiny_model(tmp_path: Path) -> tuple[TRM, Path, list[str]]:
    """A tiny checkpoint on disk and the CLI arguments that calibrate it in fp32 on 12 generated puzzles."""
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    weights = save_checkpoint(model, model.config, tmp_path / "w")
    return model, weights, ["--weights", str(weights), "--data", "generate:sudoku:12:6:10:3", "--dtype", "float32"]


def test_cli_max_steps_sweeps_past_the_trained_horizon_and_stores_it_with_the_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, weights, argv = saved_tiny_model(tmp_path)
    steps = model.config.halt_max_steps + 3
    assert calibrate.main([*argv, "--max-steps", str(steps)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["max_steps"] == steps
    assert max(row["mean_steps"] for row in printed["sweep"]) > model.config.halt_max_steps  # some ran past it
    card = json.loads((weights / "metrics.json").read_text())
    assert card_max_steps(card) == steps and card_max_steps(card, 8) == steps  # 8 views fall back to one view's
    assert calibrate.main([*argv, "--views", "8"]) == 0
    card = json.loads((weights / "metrics.json").read_text())
    assert card_max_steps(card, 8) == model.config.halt_max_steps  # its own calibration, at the trained horizon


def test_cli_horizons_stores_the_chosen_horizon_with_its_threshold_and_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, weights, argv = saved_tiny_model(tmp_path)
    assert calibrate.main([*argv, "--horizons", "2,5"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = {row["max_steps"]: row for row in printed["horizons"]}
    assert set(table) == {2, 5} and printed["max_steps"] in table
    assert printed["threshold"] == table[printed["max_steps"]]["threshold"]
    assert card_max_steps(json.loads((weights / "metrics.json").read_text())) == printed["max_steps"]
    with pytest.raises(SystemExit):
        calibrate.main([*argv, "--horizons", "2,5", "--views", "2"])
    assert "one view" in capsys.readouterr().err


def test_cli_alone_stores_a_calibration_that_only_requests_without_a_budget_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, weights, argv = saved_tiny_model(tmp_path)
    assert calibrate.main([*argv, "--max-steps", "5"]) == 0
    assert calibrate.main([*argv, "--horizons", "7,9", "--alone"]) == 0
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["max_steps"]
    card = json.loads((weights / "metrics.json").read_text())
    assert card["halting"]["max_steps"] == 5 and card["halting_alone"]["max_steps"] == alone in (7, 9)
    calibration = Calibration.from_card(card, model.config)
    assert calibration.policy().max_steps == 5 and calibration.policy(budget=0).max_steps == alone
    with pytest.raises(SystemExit):
        calibrate.main([*argv, "--alone", "--views", "8"])
    assert "single view" in capsys.readouterr().err


@pytest.mark.parametrize(
    "card",
    [
        {},
        {"halting": {"threshold": 0.9}},
        {"halting": {"threshold": 1.5, "max_steps": 9}},
        {"halting": {"threshold": 0.9, "max_steps": True}},
    ],
)
def test_card_max_steps_is_none_without_a_usable_calibrated_horizon(card: dict[str, object]) -> None:
    assert card_max_steps(card) is None

"""`training.evaluate` answers what the server answers: the same settled answers, halting steps and reasons.

Both ask the inference layer (`inference.halting`, `inference.views`, the codec's `settle` and `check_tokens`), so
a model card's figures are the server's by construction; this test holds them to it on a batch of puzzles, with a
halting head whose probabilities vary per puzzle and step, a calibrated threshold and horizon from the card.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient

from inference.escalation import DEFAULT_BUDGET_STEPS, Escalation
from inference.halting import Calibration
from inference.views import views_for
from model.checkpoint import load_checkpoint, save_checkpoint
from server.app import create_app
from server.settings import Settings
from tests.training.test_evaluate import tiny_model
from training.data.sources import load_eval_data
from training.scoring import evaluate_escalated, evaluate_model, evaluate_views, puzzle_rules

PUZZLES = 24


def test_evaluate_and_the_server_give_the_same_answers_and_steps(tmp_path: Path) -> None:
    torch.manual_seed(3)  # a 4x4 Sudoku model whose head halts these puzzles at steps 2, 3, 4 and 6
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    weights = save_checkpoint(model, model.config, tmp_path / "weights" / "sudoku-4x4")
    (weights / "metrics.json").write_text(json.dumps({"halting": {"threshold": 0.6, "max_steps": 6}}))
    ckpt = load_checkpoint(weights)
    data = load_eval_data("generate:sudoku:24:6:10:5", ckpt.config)
    policy = Calibration.from_card(json.loads((weights / "metrics.json").read_text()), ckpt.config).policy()
    rules = puzzle_rules(ckpt.config)
    result = evaluate_model(ckpt.model, data, batch_size=7, policy=policy, rules=rules, keep_predictions=True)
    voted = evaluate_views(ckpt.model, data, 8, batch_size=7, policy=policy, rules=rules, keep_predictions=True)

    # Escalation is compared on a model whose head never halts: views then end at the horizon, so which views run
    # and what they cost do not hang on halting probabilities near the threshold, where batches of other sizes
    # (the server's, with escalated views joining) can round the other way.
    steady_model = tiny_model(q_bias=-5.0)
    steady = load_checkpoint(save_checkpoint(steady_model, steady_model.config, tmp_path / "weights" / "steady"))
    steady_policy = Calibration.from_card({}, steady.config).policy()
    escalation = Escalation(DEFAULT_BUDGET_STEPS, views_for("sudoku"))
    escalated = evaluate_escalated(
        steady.model, data, escalation, batch_size=7, policy=steady_policy, rules=rules, keep_predictions=True
    )

    codec = rules
    assert codec is not None
    grids = [codec.decode(row, None) for row in np.asarray(data.inputs)]  # type: ignore[attr-defined]
    # Slots for every view of every puzzle at once, so each escalated round starts together, as evaluation assumes.
    # fp32 as evaluation computes: the server's `auto` is bf16 on a CPU with bf16 hardware, whose halting
    # probabilities differ in the second decimal.
    settings = Settings(weights_dir=tmp_path / "weights", threads=1, slots=1024, queue_capacity=4096, dtype="float32")
    with TestClient(create_app(settings)) as client:

        def batch(**fields: object) -> list[dict[str, object]]:
            requests = [{"puzzle": "sudoku", "grid": g, **fields} for g in grids]
            results = client.post("/solve/batch", json={"requests": requests}).json()["results"]
            assert all(item["status"] == 200 for item in results), results
            return [item["result"] for item in results]

        one, eight = (
            batch(model="sudoku-4x4", budget={"steps": 0}),
            batch(model="sudoku-4x4", views=8, budget={"steps": 0}),
        )
        default = batch(model="steady")

    steps = [a["steps_used"] for a in one]
    assert steps == result["steps"].tolist()
    assert len(set(steps)) > 1  # the batch really halts at different steps
    assert Counter(a["halted_by"] for a in one) == Counter(result["halted_by"])
    for answer, tokens in zip(one, result["adaptive_predictions"], strict=True):
        assert answer["solution"] == codec.decode(tokens, None)  # type: ignore[attr-defined]
        assert answer["halt_threshold"] == policy.threshold
    for answer, tokens in zip(eight, voted["predictions"], strict=True):
        assert answer["solution"] == codec.decode(tokens, None)  # type: ignore[attr-defined]
    # The server's default: a puzzle that fails the rule check escalates within the default budget.
    assert escalated["escalated"] == 1.0 and escalated["mean_views_tried"] > 8
    for answer, tokens, cost, tried in zip(
        default, escalated["predictions"], escalated["steps"], escalated["views_tried"], strict=True
    ):
        got = (answer.get("views_tried", 1), answer.get("steps_total", answer["steps_used"]), answer["verified"])
        assert got[:2] == (tried, cost), (got, tried, cost)
        assert answer["solution"] == codec.decode(tokens, None)  # type: ignore[attr-defined]

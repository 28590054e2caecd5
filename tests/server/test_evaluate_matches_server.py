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

from inference.halting import Calibration
from model.checkpoint import load_checkpoint, save_checkpoint
from server.app import create_app
from server.settings import Settings
from tests.training.test_evaluate import tiny_model
from training.data.sources import load_eval_data
from training.evaluate import evaluate_model, evaluate_views, puzzle_rules

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

    codec = rules
    assert codec is not None
    grids = [codec.decode(row, None) for row in np.asarray(data.inputs)]  # type: ignore[attr-defined]
    settings = Settings(weights_dir=tmp_path / "weights", threads=1, slots=5)
    with TestClient(create_app(settings)) as client:
        one = client.post("/solve/batch", json={"requests": [{"puzzle": "sudoku", "grid": g} for g in grids]})
        eight = client.post(
            "/solve/batch", json={"requests": [{"puzzle": "sudoku", "grid": g, "views": 8} for g in grids]}
        )
    answers = [item["result"] for item in one.json()["results"]]
    assert len(answers) == PUZZLES and all(a is not None for a in answers)
    steps = [a["steps_used"] for a in answers]
    assert steps == result["steps"].tolist()
    assert len(set(steps)) > 1  # the batch really halts at different steps
    assert Counter(a["halted_by"] for a in answers) == Counter(result["halted_by"])
    for answer, tokens in zip(answers, result["adaptive_predictions"], strict=True):
        assert answer["solution"] == codec.decode(tokens, None)  # type: ignore[attr-defined]
        assert answer["halt_threshold"] == policy.threshold
    for item, tokens in zip(eight.json()["results"], voted["predictions"], strict=True):
        assert item["result"]["solution"] == codec.decode(tokens, None)  # type: ignore[attr-defined]

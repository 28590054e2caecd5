"""The ONNX Runtime backend serves through the same scheduler and gives the same answers as torch."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.server.conftest import MAZE_10, sudoku_puzzle

PUZZLES = [{"puzzle": "sudoku", "grid": sudoku_puzzle(blanks=b, seed=s)} for b, s in ((30, 1), (45, 2), (55, 3))]
PUZZLES.append({"puzzle": "maze", "grid": MAZE_10})


def _answers(weights, backend: str, tmp_path) -> tuple[list[dict], dict]:
    # fp32 both: `auto` computes torch in bf16 on a CPU with bf16 in hardware, and ONNX Runtime always in fp32.
    settings = Settings(
        weights_dir=weights, backend=backend, dtype="float32", threads=1, models=["sudoku-tiny", "maze-tiny"]
    )
    with TestClient(create_app(settings)) as client:
        out = []
        for body in PUZZLES:
            r = client.post("/solve", json={**body, "return_steps": True, "halt": "never"})
            assert r.status_code == 200, r.text
            out.append(r.json())
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
    return out, models


@pytest.fixture(scope="module")
def both(tiny_weights, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    return _answers(tiny_weights, "torch", tmp), _answers(tiny_weights, "onnx", tmp)


def test_onnx_backend_answers_like_torch_step_by_step(both):
    (torch_out, _), (onnx_out, _) = both
    for a, b in zip(torch_out, onnx_out, strict=True):
        assert a["solution"] == b["solution"]
        assert a["steps_used"] == b["steps_used"]
        assert [s["solution"] for s in a["steps"]] == [s["solution"] for s in b["steps"]]
        assert a["halt_probability"] == pytest.approx(b["halt_probability"], abs=1e-4)


def test_models_endpoint_names_backend_and_provider(both):
    (_, torch_models), (_, onnx_models) = both
    assert {m["backend"] for m in torch_models.values()} == {"torch"}
    assert {m["backend"] for m in onnx_models.values()} == {"onnx"}
    assert {m["provider"] for m in onnx_models.values()} == {"CPUExecutionProvider"}
    assert {m["provider"] for m in torch_models.values()} == {"cpu"}

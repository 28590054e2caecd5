"""Budgeted escalation through the HTTP API: an unverified puzzle tries more views within its budget and answers
with the first verified one; the budget is never passed; without a budget the first answer stands."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inference.escalation import DEFAULT_BUDGET_STEPS
from inference.views import views_for
from server.app import create_app
from server.settings import Settings
from tests.server.conftest import SOLVED, sudoku_puzzle, write_checkpoint

HORIZON = 3  # the requests' max_steps: the untrained model never halts by its head, so each view runs 3 steps


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    weights = tmp_path_factory.mktemp("weights")
    write_checkpoint(weights / "sudoku-tiny", "sudoku", 81)
    # Slots for every view at once: views that wait for a slot are stopped before they run once one verifies.
    settings = Settings(weights_dir=weights, threads=1, slots=64, engine_hook="tests.server.oracle:install")
    with TestClient(create_app(settings)) as client:
        yield client


def solve(client: TestClient, **fields: Any) -> dict[str, Any]:
    response = client.post("/solve", json={"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": HORIZON, **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_without_a_budget_the_first_view_s_unverified_answer_stands(client: TestClient) -> None:
    body = solve(client, budget={"steps": 0})
    assert body["verified"] is False and body["halted_by"] == "max_steps" and body["steps_used"] == HORIZON
    assert "views_tried" not in body and "steps_total" not in body


def test_an_unverified_puzzle_escalates_and_the_first_verified_view_answers(client: TestClient) -> None:
    body = solve(client, budget={"steps": 100})
    assert body["verified"] is True and body["solution"] == SOLVED and body["halted_by"] == "verified"
    extra = (100 - HORIZON) // HORIZON  # 32 more views at 3 steps each fit in the budget, all started at once
    assert body["views_tried"] == 1 + extra
    assert body["steps_used"] == 1  # the answering view verified at its first step, and the others stopped there
    assert body["steps_total"] == HORIZON + extra * 1


@pytest.mark.parametrize(("budget", "views"), [(HORIZON + 2 * HORIZON, 3), (HORIZON + 2 * HORIZON + 2, 3), (5, 1)])
def test_the_budget_limits_the_views_and_is_never_passed(client: TestClient, budget: int, views: int) -> None:
    body = solve(client, budget={"steps": budget})
    tried = body.get("views_tried", 1)
    assert tried == views
    assert body.get("steps_total", body["steps_used"]) <= budget
    assert body["verified"] is (views > 1)


def test_the_default_budget_applies_and_q_head_mode_never_escalates(client: TestClient) -> None:
    default = min(views_for("sudoku"), 1 + (DEFAULT_BUDGET_STEPS - HORIZON) // HORIZON)  # every view it covers
    assert solve(client)["views_tried"] == default
    research = solve(client, halt="q_head", budget={"steps": 100})
    assert research["verified"] is False and "views_tried" not in research


def test_a_budget_over_the_limit_or_malformed_is_422_naming_it(client: TestClient) -> None:
    for budget in ({"steps": 10**6}, {"steps": -1}, {"steps": "9"}, {"step": 9}):
        response = client.post("/solve", json={"puzzle": "sudoku", "grid": sudoku_puzzle(), "budget": budget})
        assert response.status_code == 422, budget
        assert response.json()["field"].startswith("budget"), response.json()

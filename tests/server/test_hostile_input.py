"""Hostile request bodies, by hand, beyond what test_app.py and the schemathesis fuzzing cover: deep nesting,
huge numbers, odd content types, Unicode look-alikes and NUL bytes. Each must get a 4xx whose JSON body names
the field; none may reach a 500 (a RecursionError, an overflow, an encoding error).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.server.conftest import MAZE_10, sudoku_puzzle

JSON = {"content-type": "application/json"}
ARC_TASK = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3, 4]]}]}
BLANK_ROWS = ",[0,0,0,0,0,0,0,0,0]" * 8


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(weights_dir=tiny_weights, threads=1, slots=8))) as client:
        yield client


def post(client: TestClient, raw: str | bytes, path: str = "/solve", headers: dict[str, str] = JSON) -> httpx.Response:
    return client.post(path, content=raw, headers=headers)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "message", "field"}, body
    return body


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------------------------------------------- nesting
@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/solve", '{"puzzle": "sudoku", "grid": ' + nested(10_000) + "}"),
        ("/solve", '{"puzzle": "arc", "task": {"train": ' + nested(10_000) + ', "test": []}}'),
        ("/solve", '{"puzzle": "arc", "task": ' + '{"a": ' * 10_000 + "1" + "}" * 10_000 + "}"),
        ("/solve/batch", '{"requests": [{"puzzle": "maze", "grid": ' + nested(10_000) + "}]}"),
    ],
    ids=["grid", "arc-task", "objects", "batch"],
)
def test_ten_thousand_nested_levels_are_400_naming_the_body(client: TestClient, path: str, raw: str) -> None:
    err = error_of(post(client, raw, path), 400)
    assert err == {"error": "invalid_request", "message": "body is not valid JSON: nested too deeply", "field": "body"}


@pytest.mark.parametrize("kind", ["sudoku", "maze"])
def test_nesting_that_still_parses_is_422_from_the_codec(client: TestClient, kind: str) -> None:
    err = error_of(post(client, f'{{"puzzle": "{kind}", "grid": [{nested(900)}]}}'), 422)
    assert err["error"] == "invalid_puzzle" and err["field"].startswith("grid")


def test_deeply_nested_arc_grid_is_422_with_a_bounded_message(client: TestClient) -> None:
    raw = '{"puzzle": "arc", "task": {"train": [{"input": ' + nested(900) + ', "output": [[1]]}], "test": []}}'
    err = error_of(post(client, raw), 422)
    assert err["field"].startswith("task") and len(err["message"]) < 4096


@pytest.mark.parametrize("task", ['{"train": [], "test": [{"input": [[1]]}]}', '{"test": [{"input": [[1]]}]}'])
def test_an_arc_task_without_demonstrations_is_422_naming_train(client: TestClient, task: str) -> None:
    err = error_of(post(client, '{"puzzle": "arc", "task": ' + task + "}"), 422)
    assert err["field"] == "task.train" and "demonstrations" in err["message"]


# ---------------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("cell", "shown"),
    [("1e308", "1e+308"), ("-1e308", "-1e+308"), ("1e999", "inf"), ("NaN", "nan"), ("-Infinity", "-inf")],
)
def test_huge_or_non_finite_float_cell_is_422_naming_the_cell(client: TestClient, cell: str, shown: str) -> None:
    err = error_of(post(client, f'{{"puzzle": "sudoku", "grid": [[{cell},0,0,0,0,0,0,0,0]{BLANK_ROWS}]}}'), 422)
    assert err["field"] == "grid[0][0]" and shown in err["message"]


def test_four_hundred_digit_integer_cell_is_422_naming_the_cell(client: TestClient) -> None:
    err = error_of(post(client, f'{{"puzzle": "sudoku", "grid": [[{10**400},0,0,0,0,0,0,0,0]{BLANK_ROWS}]}}'), 422)
    assert err["field"] == "grid[0][0]" and len(err["message"]) < 200  # the number is cut short in the message


def test_integer_past_pythons_digit_limit_is_400_naming_the_body(client: TestClient) -> None:
    err = error_of(post(client, f'{{"puzzle": "sudoku", "grid": [[{"9" * 5000}]]}}'), 400)
    assert err["field"] == "body" and "too many digits" in err["message"]


@pytest.mark.parametrize("value", [str(10**400), "1e308", "-1e308", "1.5", '"many"', "true", '"3"', "2.0"])
def test_huge_or_odd_max_steps_is_422_naming_max_steps(client: TestClient, value: str) -> None:
    grid = json.dumps(sudoku_puzzle())
    err = error_of(post(client, f'{{"puzzle": "sudoku", "grid": {grid}, "max_steps": {value}}}'), 422)
    assert err["field"] == "max_steps"


@pytest.mark.parametrize(("field", "value"), [("return_steps", "1"), ("stream", '"true"'), ("return_steps", '"yes"')])
def test_flags_take_json_booleans_only(client: TestClient, field: str, value: str) -> None:
    grid = json.dumps(sudoku_puzzle())
    err = error_of(post(client, f'{{"puzzle": "sudoku", "grid": {grid}, "{field}": {value}}}'), 422)
    assert err["field"] == field


# ---------------------------------------------------------------------------------------------------- content types
@pytest.mark.parametrize(
    "ctype", ["multipart/form-data; boundary=x", "application/json-patch+json", "application/xml", "text/json"]
)
@pytest.mark.parametrize("path", ["/solve", "/solve/batch"])
def test_other_content_types_are_415_on_both_solve_endpoints(client: TestClient, ctype: str, path: str) -> None:
    body = json.dumps({"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1})
    body = body if path == "/solve" else json.dumps({"requests": [json.loads(body)]})
    err = error_of(post(client, body, path, {"content-type": ctype}), 415)
    assert err["error"] == "unsupported_media_type" and err["field"] == "body"


@pytest.mark.parametrize("ctype", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_with_parameters_or_other_case_is_accepted(client: TestClient, ctype: str) -> None:
    body = json.dumps({"puzzle": "sudoku", "grid": sudoku_puzzle(), "max_steps": 1})
    assert post(client, body, headers={"content-type": ctype}).status_code == 200


def test_body_that_is_not_utf8_is_400_naming_the_body(client: TestClient) -> None:
    err = error_of(post(client, b'{"puzzle": "maze", "grid": ["\xff\xfe"]}'), 400)
    assert err["field"] == "body" and "UTF-8" in err["message"]


# ---------------------------------------------------------------------------------------------------- unicode, NUL
@pytest.mark.parametrize(
    ("row", "col", "char"),
    [(1, 2, "\u00a0"), (0, 0, "\uff03"), (0, 0, "😀"), (1, 1, "\u0405"), (1, 2, "\u200b"), (1, 2, "\x00")],
    ids=["nbsp", "fullwidth-hash", "emoji", "cyrillic-S", "zero-width-space", "nul"],
)
def test_unicode_look_alikes_and_nul_in_maze_rows_are_422_naming_the_cell(
    client: TestClient, row: int, col: int, char: str
) -> None:
    grid = list(MAZE_10)
    grid[row] = grid[row][:col] + char + grid[row][col + 1 :]
    err = error_of(client.post("/solve", json={"puzzle": "maze", "grid": grid}), 422)
    assert err["field"] == f"grid[{row}][{col}]"


def test_combining_character_lengthens_the_maze_row_and_is_422(client: TestClient) -> None:
    grid = list(MAZE_10)
    grid[1] = "#S\u0301" + grid[1][2:]  # renders as one cell, is two code points
    err = error_of(client.post("/solve", json={"puzzle": "maze", "grid": grid}), 422)
    assert err["field"] == "grid[1]"


@pytest.mark.parametrize("first", ["\uff11", "\u0663", "\u00b2", "\x00", "\ud800"])
def test_digit_look_alikes_nul_and_lone_surrogates_in_a_sudoku_string_are_422(client: TestClient, first: str) -> None:
    raw = json.dumps({"puzzle": "sudoku", "grid": first + "0" * 80})  # ensure_ascii: a lone surrogate stays \\ud800
    err = error_of(post(client, raw), 422)
    assert err["field"] == "grid" and "row 1, column 1" in err["message"]


@pytest.mark.parametrize("field", ["model", "task_id", "halt", "puzzle"])
def test_nul_and_lone_surrogates_in_string_fields_are_422(client: TestClient, field: str) -> None:
    sudoku = {"puzzle": "sudoku", "grid": sudoku_puzzle()}
    puzzle = {"puzzle": "arc", "task": ARC_TASK} if field == "task_id" else sudoku
    for value in ("sudoku-tiny\x00", "\ud800"):
        body = {**puzzle, field: value}
        response = post(client, json.dumps(body))
        assert response.status_code in (404, 422), response.text
        assert response.json()["field"] == field


def test_raw_control_character_inside_a_json_string_is_422_naming_the_body(client: TestClient) -> None:
    err = error_of(post(client, b'{"puzzle": "sudoku", "grid": "\x00"}'), 422)
    assert err["field"] == "body" and "JSON" in err["message"]


def test_lone_surrogate_as_a_key_is_422_and_the_answer_is_valid_utf8(client: TestClient) -> None:
    response = post(client, '{"puzzle": "sudoku", "\\ud800": 1}')
    err = error_of(response, 422)
    assert err["field"] == "body"
    response.content.decode("utf-8")  # nothing un-encodable was echoed back

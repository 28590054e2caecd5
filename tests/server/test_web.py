"""The web page in a real browser against the real server process: the page shows what the API streamed.

Tiny untrained checkpoints give wrong answers, so nothing here checks that a puzzle is solved; every assertion
compares the DOM with the Server-Sent Events the page itself received (copied by a fetch wrapper injected
before the page's own script runs). Needs Chromium (`apt-get install -y chromium`) and the `playwright` Python
package; a missing browser is a failure with instructions, never a skip. Screenshots go to artifacts/.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.puzzles import get_codec
from tests.server.conftest import record_trained_sides, start_server, write_checkpoint, write_conv_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
SAMPLES = ROOT / "server" / "static" / "samples.json"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAZE_THRESHOLDS = {1: 0.9, 8: 0.6}  # views -> halting threshold of maze-tiny's card
INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium chromium-driver"
START_TIMEOUT_S = 120
SOLVE_TIMEOUT_MS = 60_000

# Copies every /solve response body (the SSE stream) into window.__solveBodies, and every request body into
# window.__solveRequests, before the page's script loads: the test's view of the API, independent of app.js.
TEE_FETCH = """
window.__solveBodies = [];
window.__solveRequests = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (input, init) => {
  const url = typeof input === "string" ? input : input.url;
  const res = await realFetch(input, init);
  if (url.startsWith("/solve") || url.includes("/solve")) {
    const i = window.__solveBodies.push(null) - 1;
    window.__solveRequests.push(init && init.body ? init.body : null);
    res.clone().text().then((text) => { window.__solveBodies[i] = text; });
  }
  return res;
};
"""


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m server` on a free port, serving a tiny Sudoku model and a tiny 15x15 maze model (recorded as
    trained on 9x9 to 15x15 mazes, with calibrated halting thresholds: MAZE_THRESHOLDS)."""
    weights = tmp_path_factory.mktemp("weights")
    write_checkpoint(weights / "sudoku-tiny", "sudoku", 81)
    write_checkpoint(weights / "maze-tiny", "maze", 225)
    record_trained_sides(weights / "maze-tiny", 15, 9)
    card = {"halting": {"threshold": MAZE_THRESHOLDS[1]}, "halting_views8": {"threshold": MAZE_THRESHOLDS[8]}}
    (weights / "maze-tiny" / "metrics.json").write_text(json.dumps(card))
    write_conv_checkpoint(weights / "maze-any-tiny")
    proc = start_server(
        weights, tmp_path_factory.mktemp("server"), "--default-budget-steps", "0", timeout=START_TIMEOUT_S
    )
    try:
        yield proc.base
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def page(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(f"Chromium is not installed (no `chromium` on PATH); {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the `playwright` package is missing: pip install -e '.[dev]' (never `playwright install`)")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 1000},
            device_scale_factor=1,
        )
        try:
            context.add_init_script(TEE_FETCH)
            tab = context.new_page()
            tab.set_default_timeout(SOLVE_TIMEOUT_MS)
            tab.goto(f"{server}/")
            tab.wait_for_selector("#model option[value='sudoku-tiny']", state="attached")
            yield tab
        finally:
            context.close()


def _events(stream: str) -> list[tuple[str, Any]]:
    out = []
    for chunk in stream.split("\n\n"):
        lines = [line for line in chunk.splitlines() if line]
        if not lines:
            continue
        event = next(line[6:].strip() for line in lines if line.startswith("event:"))
        data = "\n".join(line[5:].lstrip() for line in lines if line.startswith("data:"))
        out.append((event, json.loads(data)))
    return out


def _solve(page: Any) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Press Solve, wait for the page to finish, return (request, step events, result) as the API sent them."""
    before = page.evaluate("window.__solveBodies.length")
    page.click("#solve")
    page.wait_for_selector("#run-status[data-state='done'], #run-status[data-state='error']", state="attached")
    assert page.get_attribute("#run-status", "data-state") == "done", page.inner_text("#error")
    page.wait_for_function(f"window.__solveBodies.length > {before} && window.__solveBodies[{before}] !== null")
    stream = page.evaluate(f"window.__solveBodies[{before}]")
    request = json.loads(page.evaluate(f"window.__solveRequests[{before}]"))
    events = _events(stream)
    steps = [data for name, data in events if name == "step"]
    results = [data for name, data in events if name == "result"]
    assert [name for name, _ in events] == ["step"] * len(steps) + ["result"], stream[:500]
    return request, steps, results[0]


def _board(page: Any) -> list[str]:
    """The board's cell values, row by row, as strings."""
    cells = page.eval_on_selector_all(
        "#board .cell", "cells => cells.map(c => [+c.dataset.r, +c.dataset.c, c.dataset.v])"
    )
    rows: dict[int, dict[int, str]] = {}
    for r, c, v in cells:
        rows.setdefault(r, {})[c] = v
    return ["".join(rows[r][c] for c in sorted(rows[r])) for r in sorted(rows)]


def _check_rendering(page: Any, steps: list[dict[str, Any]], result: dict[str, Any], as_rows: Any) -> None:
    """Step entries, final grid, badges and stats match the streamed result; the slider scrubs back."""
    assert len(steps) == result["steps_used"]
    shown_steps = page.eval_on_selector_all("#steps [data-step]", "els => els.map(e => +e.dataset.step)")
    assert shown_steps == [s["step"] for s in steps] == list(range(1, result["steps_used"] + 1))
    assert page.locator("#halt-chart circle").count() == result["steps_used"]
    assert _board(page) == as_rows(result["solution"])
    assert page.get_attribute("#verified", "data-verified") == json.dumps(result["verified"])
    assert page.inner_text("#halt-reason") == result["halted_by"]
    assert page.inner_text("#steps-used") == str(result["steps_used"])
    assert page.inner_text("#model-used") == result["model"]
    assert json.loads(page.text_content("#result-json") or "null") == result

    page.locator("#step-slider").fill("1")
    assert page.inner_text("#step-label") == f"step 1 / {len(steps)}"
    assert _board(page) == as_rows(steps[0]["solution"])
    assert page.locator("#steps [data-step='1'].current").count() == 1
    page.locator("#step-slider").fill(str(len(steps)))
    assert _board(page) == as_rows(result["solution"])


def _sudoku_rows(grid: list[list[int]]) -> list[str]:
    return ["".join(str(v) for v in row) for row in grid]


def _check_threshold(page: Any, steps: list[dict[str, Any]], result: dict[str, Any], expected: float) -> None:
    """The chart's threshold line sits where the server halts this model, and marks the steps that reach it."""
    assert result["halt_threshold"] == expected
    line = page.locator("#halt-chart line.threshold")
    assert float(line.get_attribute("data-threshold")) == expected
    over = [s["step"] for s in steps if s["halt_probability"] >= expected]
    assert page.locator("#halt-chart rect.bar.over").count() == len(over)
    assert [int(n) for n in page.locator("#steps li.step.over").evaluate_all("e => e.map(x => x.dataset.step)")] == over
    assert page.text_content("#halt-threshold") == str(expected)  # the legend says the same


def test_page_streams_a_generated_sudoku_and_renders_every_step(page: Any) -> None:
    page.click("#generate")
    page.wait_for_function("document.querySelector('#sudoku-text').value.length === 81")
    puzzle = page.input_value("#sudoku-text")
    givens = sum(ch != "0" for ch in puzzle)
    assert 24 <= givens <= 40
    assert page.locator("#sudoku-input input.has-value").count() == givens

    request, steps, result = _solve(page)
    assert request["puzzle"] == "sudoku" and request["stream"] is True and request["grid"] == puzzle
    assert request["halt"] == "adaptive"
    assert result["verified"] is False  # an untrained model: the badge must say so, not hide it
    _check_rendering(page, steps, result, _sudoku_rows)
    _check_threshold(page, steps, result, 0.5)  # no calibrated card: the reference's rule
    assert page.inner_text("#verified") == "✗ rule check failed"
    assert page.locator("#board .cell.given").count() == givens  # givens drawn apart from model-filled cells
    assert page.locator("#error").is_hidden()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-sudoku.png"), full_page=True)


def test_page_solves_a_maze_with_halting_off_and_a_step_limit(page: Any) -> None:
    page.click("#kind [data-kind='maze']")
    page.wait_for_selector("#model option[value='maze-tiny']", state="attached")
    page.select_option("#model", "maze-tiny")
    assert "trained on 9×9 to 15×15 mazes" in page.text_content("#model-note")
    page.select_option("#halt", "never")
    page.fill("#max-steps", "4")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#maze-text').value.includes('S')")
    maze = page.input_value("#maze-text").split("\n")
    assert len(maze) in (9, 11, 13, 15) and all(len(row) == len(maze) for row in maze)

    request, steps, result = _solve(page)
    assert request["puzzle"] == "maze" and request["grid"] == maze
    assert request["halt"] == "never" and request["max_steps"] == 4
    assert result["steps_used"] == 4 and result["halted_by"] == "max_steps"
    _check_rendering(page, steps, result, lambda rows: rows)
    _check_threshold(page, steps, result, MAZE_THRESHOLDS[1])
    assert page.locator("#board .cell.wall").count() == sum(row.count("#") for row in result["solution"])
    for letter, name in (("S", "start"), ("G", "goal")):  # S and G marked where the question put them
        placed = page.locator(f"#board .cell.{name}").count()
        assert placed == sum(row.count(letter) for row in result["solution"])
        assert page.locator(f"#board .cell.{name}, #board .cell.at-{name}").count() >= 1

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-maze.png"), full_page=True)


def test_page_generates_and_streams_a_big_rectangular_maze_for_a_size_agnostic_model(page: Any) -> None:
    page.click("#kind [data-kind='maze']")
    page.wait_for_selector("#model option[value='maze-any-tiny']", state="attached")
    page.select_option("#model", "maze-tiny")
    assert page.locator("#maze-size-field").is_hidden()  # a fixed-size model: samples of its size only
    page.select_option("#model", "maze-any-tiny")
    assert "any size up to 128×128" in page.text_content("#model-note")
    page.select_option("#halt", "never")
    page.select_option("#views", "1")
    page.fill("#max-steps", "2")
    page.fill("#maze-size", "45x61")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#maze-text').value.split('\\n').length === 45")
    maze = page.input_value("#maze-text").split("\n")
    assert len(maze) == 45 and all(len(row) == 61 for row in maze)

    request, steps, result = _solve(page)
    assert request["grid"] == maze and request["model"] == "maze-any-tiny"
    assert len(result["solution"]) == 45 and result["steps_used"] == 2
    _check_rendering(page, steps, result, lambda rows: rows)
    assert page.locator("#board.big").count() == 1  # drawn without gaps, wider than the small-maze board
    box = page.locator("#board").bounding_box()
    assert box is not None and abs(box["width"] / box["height"] - 61 / 45) < 0.05  # the maze's own proportions
    page.fill("#maze-size", "")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-maze-big.png"), full_page=True)


def test_page_votes_over_eight_orientations_and_shows_the_voted_answer(page: Any) -> None:
    page.click("#kind [data-kind='maze']")
    page.wait_for_selector("#model option[value='maze-tiny']", state="attached")
    page.select_option("#model", "maze-tiny")
    page.select_option("#halt", "never")  # every view runs all its steps, so the shown steps are steps_used
    page.select_option("#views", "8")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#maze-text').value.includes('S')")

    request, steps, result = _solve(page)
    assert request["views"] == 8
    assert 1 <= result["votes"] <= 8
    assert f"{result['votes']} of 8 orientations gave this answer" in page.inner_text("#run-status")
    _check_rendering(page, steps, result, lambda rows: rows)  # the last frame is the voted answer
    _check_threshold(page, steps, result, MAZE_THRESHOLDS[8])  # the threshold calibrated for 8 views
    page.click("#kind [data-kind='arc']")
    assert not page.is_visible("#views")  # ARC is voted over its own variants


def test_page_shows_api_errors_inline(page: Any) -> None:
    """No ARC model is loaded: the 404 JSON error appears next to the Solve button, naming the field."""
    page.click("#kind [data-kind='arc']")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#arc-text').value.includes('train')")
    assert page.locator("#arc-train .arc-pair").count() >= 1  # demonstration pairs drawn small
    page.click("#solve")
    page.wait_for_selector("#run-status[data-state='error']", state="attached")
    error = page.locator("#error")
    assert error.is_visible()
    assert "unknown_model" in error.inner_text() and "no arc model is loaded" in error.inner_text()
    assert error.get_attribute("data-field") == "model"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-arc.png"), full_page=True)


# ---------------------------------------------------------------- the samples behind "Generate"
def test_random_puzzle_serves_each_kind(server: str) -> None:
    status, sudoku = _get(f"{server}/puzzles/random?kind=sudoku")
    assert status == 200 and sudoku["puzzle"] == "sudoku"
    assert len(sudoku["grid"]) == 9 and all(len(row) == 9 for row in sudoku["grid"])
    status, maze = _get(f"{server}/puzzles/random?kind=maze&max_side=11")
    assert status == 200 and maze["puzzle"] == "maze" and len(maze["grid"]) <= 11
    status, arc = _get(f"{server}/puzzles/random?kind=arc")
    assert status == 200 and arc["puzzle"] == "arc" and arc["task_id"]
    assert all(set(pair) == {"input"} for pair in arc["task"]["test"])  # test outputs are not shipped
    for _ in range(5):  # a 10x10-canvas ARC model only gets tasks whose every grid fits it
        status, arc = _get(f"{server}/puzzles/random?kind=arc&max_side=10")
        grids = [g for pairs in arc["task"].values() for pair in pairs for g in pair.values()]
        assert status == 200 and all(len(g) <= 10 and len(g[0]) <= 10 for g in grids)


def test_random_puzzle_rejects_an_unknown_kind_naming_the_field(server: str) -> None:
    status, body = _get(f"{server}/puzzles/random?kind=chess")
    assert status == 422 and body["field"] == "kind" and "chess" in body["message"]
    status, body = _get(f"{server}/puzzles/random")
    assert status == 422 and body["field"] == "kind"
    status, body = _get(f"{server}/puzzles/random?kind=maze&max_side=3")
    assert status == 404 and body["field"] == "max_side"


def test_page_assets_are_served(server: str) -> None:
    for path, kind in (("/", "text/html"), ("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        with urllib.request.urlopen(f"{server}{path}", timeout=10) as res:
            assert res.status == 200 and kind in res.headers["content-type"]


def test_samples_file_holds_valid_requests_of_each_kind() -> None:
    """Every sample parses with the codec the server uses, so Generate never offers an invalid puzzle."""
    assert SAMPLES.stat().st_size <= 300_000
    samples = json.loads(SAMPLES.read_text())
    assert len(samples["sudoku"]) >= 200 and len(samples["maze"]) >= 50 and len(samples["arc"]) >= 20
    sudoku, maze, arc = get_codec("sudoku", 81), get_codec("maze", 225), get_codec("arc", 900)
    givens = [81 - s.count("0") for s in samples["sudoku"]]
    assert min(givens) >= 24 and max(givens) <= 40 and max(givens) - min(givens) >= 10
    for grid in samples["sudoku"]:
        sudoku.parse(grid)
    assert {9, 11, 15} <= {len(m) for m in samples["maze"]} and max(len(m) for m in samples["maze"]) <= 30
    for rows in samples["maze"]:
        maze.parse(rows)
    for item in samples["arc"]:
        arc.parse(item["task"])
        assert all("output" not in pair for pair in item["task"]["test"])

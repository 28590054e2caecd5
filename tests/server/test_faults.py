"""Faults inside the real `python -m server` process: a step that raises, a NaN, a step past the deadline, and a
broken checkpoint. Steps are broken on purpose through the test-only `engine_hook` setting (tests/server/faults.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.registry import Registry
from server.settings import Settings
from tests.server.conftest import ROOT, ServerProcess, free_port, start_server, sudoku_puzzle, write_checkpoint
from tests.server.faults import HANG_S, SLOW_S, marked

DEADLINE_S = 1.5  # the server's request_timeout_s: shorter than faults.SLOW_S
GRACE_S = 1.5  # the server's stall_grace_s: a SLOW_S step still ends within DEADLINE_S + GRACE_S, a hang does not
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def with_broken_checkpoint(weights: Path) -> Path:
    """A copy of sudoku-tiny named sudoku-broken whose model.safetensors is cut in half."""
    broken = weights / "sudoku-broken"
    shutil.copytree(weights / "sudoku-tiny", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    return broken / "model.safetensors"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = tmp_path_factory.mktemp("weights")
    write_checkpoint(weights / "sudoku-tiny", "sudoku", 81, seed=1)
    with_broken_checkpoint(weights)
    return weights


@pytest.fixture(scope="module")
def server(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        weights,
        tmp_path_factory.mktemp("fault-logs"),
        "--engine-hook",
        "tests.server.faults:install",
        "--on-broken-checkpoint",
        "skip",
        "--request-timeout-s",
        str(DEADLINE_S),
        "--stall-grace-s",
        str(GRACE_S),
        "--slots",
        "4",
        # No escalation: an untrained model never verifies, and 64 views of a puzzle would outlast the short deadline
        # these fault tests need.
        "--default-budget-steps",
        "0",
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=TIMEOUT) as client:
        yield client


def plain(seed: int = 0) -> dict[str, object]:
    return {"puzzle": "sudoku", "grid": sudoku_puzzle(seed=seed)}


def test_step_that_raises_answers_500_for_its_batch_and_the_next_batch_succeeds(http: httpx.Client) -> None:
    failed = http.post("/solve", json={"puzzle": "sudoku", "grid": marked("raise")})
    assert failed.status_code == 500, failed.text
    body = failed.json()
    assert body["error"] == "step_failed" and "step failed" in body["message"] and "injected fault" in body["message"]

    after = http.post("/solve", json=plain())
    assert after.status_code == 200, after.text
    assert after.json()["steps_used"] == 6


def test_nan_in_one_row_fails_only_that_puzzle(http: httpx.Client) -> None:
    requests = [{"puzzle": "sudoku", "grid": marked("nan")}, plain(1), plain(2)]
    response = http.post("/solve/batch", json={"requests": requests})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [500, 200, 200], results
    assert results[0]["error"]["error"] == "step_failed"
    assert "non-finite values (NaN/Inf) in step 1" in results[0]["error"]["message"]
    assert all(r["result"]["steps_used"] == 6 for r in results[1:])


def test_step_slower_than_the_deadline_answers_504_and_the_scheduler_keeps_going(http: httpx.Client) -> None:
    live: list[tuple[int, float]] = []

    def probe() -> None:
        time.sleep(0.5)  # inside the slow step
        with httpx.Client(base_url=http.base_url, timeout=TIMEOUT) as other:
            start = time.monotonic()
            live.append((other.get("/health/live").status_code, time.monotonic() - start))

    prober = threading.Thread(target=probe)
    prober.start()
    start = time.monotonic()
    slow = http.post("/solve", json={"puzzle": "sudoku", "grid": marked("slow")})
    elapsed = time.monotonic() - start
    prober.join(timeout=30)

    assert slow.status_code == 504, slow.text
    assert slow.json()["error"] == "deadline_exceeded"
    assert elapsed >= SLOW_S  # the 504 comes from the deadline check after the slow step, not from a timeout
    assert live and live[0][0] == 200, live  # the event loop answered while the step was running

    after = http.post("/solve", json=plain(3))
    assert after.status_code == 200, after.text


def test_hung_step_answers_504_without_waiting_for_it_and_readiness_reflects_it(http: httpx.Client) -> None:
    start = time.monotonic()
    hung = http.post("/solve", json={"puzzle": "sudoku", "grid": marked("hang")})
    elapsed = time.monotonic() - start
    assert hung.status_code == 504, hung.text
    assert hung.json()["error"] == "deadline_exceeded" and "has been running" in hung.json()["message"]
    assert DEADLINE_S + GRACE_S <= elapsed < HANG_S  # answered while the step was still hung
    assert http.get("/health/ready").status_code == 503  # the worker is stuck: route traffic elsewhere
    assert http.get("/health/live").status_code == 200

    time.sleep(HANG_S - elapsed + 0.5)  # the step returns; the cancelled puzzle is dropped, service resumes
    assert http.get("/health/ready").status_code == 200
    after = http.post("/solve", json=plain(4))
    assert after.status_code == 200, after.text


def test_broken_checkpoint_is_skipped_logged_and_listed_when_asked_to_skip(
    http: httpx.Client, server: ServerProcess
) -> None:
    models = http.get("/models").json()
    assert [m["name"] for m in models["models"]] == ["sudoku-tiny"]
    assert set(models["broken"]) == {"sudoku-broken"}
    assert "model.safetensors" in models["broken"]["sudoku-broken"]
    log = server.log(20000)
    assert "skipping broken checkpoint" in log and "sudoku-broken" in log


def test_broken_checkpoint_fails_startup_naming_the_file_by_default(weights: Path) -> None:
    cmd = [sys.executable, "-m", "server", "--weights-dir", str(weights), "--port", str(free_port()), "--threads", "1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert done.returncode != 0
    assert str(weights / "sudoku-broken" / "model.safetensors") in done.stderr.decode(errors="replace")


def test_engine_hook_that_cannot_be_imported_stops_loading(weights: Path) -> None:
    settings = Settings(weights_dir=weights, models=["sudoku-tiny"], threads=1, engine_hook="tests.server.nope:install")
    with pytest.raises(ValueError, match=r"engine_hook 'tests.server.nope:install' cannot be imported"):
        Registry(settings).load()


@pytest.mark.parametrize("spec", ["tests.server.faults", "tests/server/faults.py:install", "x:y; rm -rf /"])
def test_engine_hook_must_be_module_colon_function(spec: str) -> None:
    with pytest.raises(ValueError, match="engine_hook"):
        Settings(engine_hook=spec)

"""SIGTERM when the work outlasts the drain limit (test_e2e.py covers a drain that completes): the process still
exits 0 soon after `drain_timeout_s`, and the puzzles it could not finish are answered 503, not dropped.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from benchmarks.load import metric_sum, raw_request, read_until
from server.__main__ import UVICORN_GRACE_S
from tests.server.conftest import start_server, sudoku_puzzle

DRAIN_S = 2.0
NEVER_DONE = {"puzzle": "sudoku", "grid": sudoku_puzzle(), "halt": "never", "max_steps": 100_000}


def test_sigterm_past_the_drain_limit_answers_503_and_exits_zero_in_time(tiny_weights: Path, tmp_path: Path) -> None:
    args = ["--drain-timeout-s", str(DRAIN_S), "--max-steps-limit", "100000", "--default-budget-steps", "0"]
    process = start_server(tiny_weights, tmp_path, *args)
    try:
        answers: list[httpx.Response] = []
        plain = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{process.base}/solve", json=NEVER_DONE, timeout=60))
        )
        plain.start()
        stream = raw_request(process.base, "/solve", {**NEVER_DONE, "stream": True})
        read_until(stream, b"event: step")
        deadline = time.monotonic() + 10
        while metric_sum(process.base, "trm_running_slots") < 2:
            assert time.monotonic() < deadline, "the two puzzles never both started"
            time.sleep(0.02)

        start = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        code = process.proc.wait(timeout=30)
        took = time.monotonic() - start
        plain.join(timeout=10)
        tail = read_until(stream, b"event: error", timeout=5)
        stream.close()
    finally:
        process.stop()

    assert code == 0, process.log()
    assert DRAIN_S <= took < DRAIN_S + UVICORN_GRACE_S, took  # waited for the drain, then not for uvicorn's timeout
    assert [r.status_code for r in answers] == [503]
    assert answers[0].json()["error"] == "draining" and answers[0].headers["retry-after"] == "5"
    assert b'"status": 503' in tail and b'"error": "draining"' in tail
    assert "drain timed out" in process.log(20000)

"""Three server replicas behind a real HAProxy, rolled one by one under a closed-loop load (benchmarks/replicas.py).

Every request must be answered, none with a 5xx, every answer equal to the one the puzzle got when solved alone,
every old replica must drain and exit 0, and every replacement must rejoin the pool and serve. HAProxy is
Debian's package, which `make test` installs when it is missing; the replicas serve the shipped sudoku-9x9 on one
thread each. 42-62 s here, with a training run and other jobs on the 2 cores (`-m "not slow"` leaves it out).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks.load import solve_alone
from benchmarks.replicas import haproxy_binary, haproxy_config, replica_set, run_restart, sudoku_pool

ROOT = Path(__file__).resolve().parents[1]
CLIENTS, POOL = 24, 48


def test_haproxy_accepts_the_config_and_it_checks_readiness_and_retries(tmp_path: Path) -> None:
    text = haproxy_config(18000, {"r0": 18001, "r0-new": 18002}, tmp_path / "admin.sock")
    (tmp_path / "haproxy.cfg").write_text(text)
    check = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "option httpchk GET /health/ready" in text and "http-check expect status 200" in text
    retry_on = next(line.split()[1:] for line in text.splitlines() if line.strip().startswith("retry-on"))
    assert {"conn-failure", "503"} <= set(retry_on)
    assert "option redispatch 1" in text and "option http-buffer-request" in text
    assert "server r0-new 127.0.0.1:18002" in text


@pytest.mark.slow
def test_rolling_restart_of_three_replicas_under_load_loses_nothing(tmp_path: Path) -> None:
    with replica_set(ROOT / "weights", "sudoku-9x9", 3, tmp_path) as replicas:
        pool = sudoku_pool(POOL)
        alone = solve_alone(replicas[0].base, pool, {})
        report = run_restart(replicas, pool, alone, CLIENTS, tmp_path)
    print(json.dumps(report, indent=2))  # the figures (pytest -s shows them)
    figures = json.dumps(report)

    assert len({json.dumps(a[0]) for a in alone}) == POOL  # a mixed-up answer could not pass for the right one
    load = report["load"]
    assert load["lost"] == 0 and load["transport_errors"] == {}, figures
    assert load["statuses"] == {"200": load["requests"]}, figures  # no 5xx, nor any other error, reached a client
    assert load["answers_differing_from_alone"] == 0, load["first_mismatches"]
    assert load["requests"] >= CLIENTS, figures  # the load ran through the whole roll (each client, on average, once)
    assert [step["replica"] for step in report["restarts"]] == ["r0", "r1", "r2"]
    for step in report["restarts"]:
        assert step["exit_code"] == 0, figures  # drained, then exited by itself
        assert step["served"] > 0 and step["replacement_served"] > 0, figures  # both generations took traffic
        assert step["down_in_haproxy_s"] < step["replacement_up_in_haproxy_s"], figures

"""The GPU check's smoke run (`python -m benchmarks.gpu --smoke`), started in the background during the suite.

The run takes about 90 s here and most of it is waiting: servers booting, load cells of fixed length, part
processes starting. Run in line it was the suite's largest single item, so `tests/conftest.py` starts it when
the first model test begins, where the tests are CPU-bound and assert no timing, and `tests/test_bench_gpu.py`
collects it when its turn comes. Its parts keep caps far above what they take on a busy core.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 420.0
START_WITH = "tests/model/"  # node ids under this start the run in the background


def check_command(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out), *args]


@dataclass
class SmokeRun:
    """One smoke run writing into `out`; its output goes to files, so no pipe fills while nobody reads it."""

    out: Path
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls) -> SmokeRun:
        work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
        out, stdout, stderr = work / "out", work / "stdout.txt", work / "stderr.txt"
        with stdout.open("wb") as sink_out, stderr.open("wb") as sink_err:
            proc = subprocess.Popen(check_command(out), cwd=ROOT, stdout=sink_out, stderr=sink_err)
        return cls(out, proc, stdout, stderr)

    def result(self) -> subprocess.CompletedProcess[str]:
        """Waits for the run (up to `TIMEOUT_S` from now) and returns it as `subprocess.run` would."""
        try:
            code = self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        text = (self.stdout.read_text(errors="replace"), self.stderr.read_text(errors="replace"))
        return subprocess.CompletedProcess(self.proc.args, code, *text)

"""A run's learning curve against compute: held-out accuracy at each evaluation and the training hours behind it.

    python -m training.curve RUN_DIR [--png weights/NAME/learning_curve.png]

Runs here cross several sittings with `--resume`, and each process logs `elapsed` from its own start, so the hours
are summed over the processes that logged the kept steps (a resume drops the steps logged after the last save, and
their time with them: the curve counts the compute that made the checkpoint). A card quotes this table and PNG to
say how accuracy grew with CPU time and what more time would buy.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def training_hours(records: list[dict[str, Any]]) -> dict[int, float]:
    """Cumulative training hours at every logged train step: a drop in `elapsed` starts a new process."""
    hours: dict[int, float] = {}
    done, last = 0.0, 0.0
    for record in records:
        if record.get("kind") != "train" or "elapsed" not in record:
            continue
        elapsed = float(record["elapsed"])
        if elapsed < last:
            done += last
        last = elapsed
        hours[int(record["step"])] = (done + elapsed) / 3600
    return hours


def curve(records: list[dict[str, Any]], key: str = "exact_accuracy") -> list[tuple[int, float, float]]:
    """(step, hours, accuracy) per evaluation, the hours of the last train record at or before its step."""
    hours = training_hours(records)
    rows = []
    for record in records:
        if record.get("kind") != "eval" or key not in record:
            continue
        before = [h for step, h in hours.items() if step <= record["step"]]
        rows.append((int(record["step"]), max(before, default=0.0), float(record[key])))
    return rows


def table(rows: list[tuple[int, float, float]]) -> str:
    lines = ["| step | training hours | exact |", "|---|---|---|"]
    lines += [f"| {step:,} | {hours:.2f} | {acc:.1%} |" for step, hours, acc in rows]
    return "\n".join(lines)


def plot(rows: list[tuple[int, float, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r[1] for r in rows], [100 * r[2] for r in rows], marker="o", markersize=3)
    ax.set_xlabel("training hours (this CPU)")
    ax.set_ylabel("held-out exact %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--key", default="exact_accuracy", help="the eval record's accuracy field")
    parser.add_argument("--png", type=Path, default=None, help="also draw the curve here")
    args = parser.parse_args(argv)
    path = args.run_dir / "metrics.jsonl"  # read, never rewritten: the run may be appending to it
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    rows = curve(records, args.key)
    if not rows:
        parser.error(f"{args.run_dir}/metrics.jsonl has no evaluation with {args.key!r}")
    if args.png is not None:
        plot(rows, args.png, args.run_dir.name)
    sys.stdout.write(table(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

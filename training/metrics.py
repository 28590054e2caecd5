"""Training curves: one JSON object per line in `metrics.jsonl`, redrawn as `metrics.png` after each evaluation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PLOTTED = [
    ("train", ("lm_loss", "q_halt_loss"), "loss"),
    ("train", ("accuracy", "exact_accuracy"), "train accuracy (halted samples)"),
    ("eval", ("exact_accuracy", "adaptive_exact_accuracy", "cell_accuracy"), "eval accuracy"),
    ("eval", ("mean_steps",), "eval mean steps (adaptive halting)"),
]


class MetricsLog:
    """`resume_step` keeps an existing log up to that step: a run resumed from its last save repeats the steps
    logged after it, and their first lines would otherwise stay beside the repeats. Without it the log starts
    empty."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.plot_path = run_dir / "metrics.png"
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [r for r in self.records() if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def plot(self) -> None:
        """Redraw the PNG from the whole log; a plotting failure is logged, never fatal to training."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - matplotlib is a dependency
            log.warning("matplotlib missing; no plot written")
            return
        panels = curves(self.records())
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
        for ax, (title, kind, lines) in zip(axes, panels, strict=True):
            for label, (xs, ys) in lines.items():
                style = "--" if label.startswith("exact ") else "-"  # per-side curves under the headline
                ax.plot(xs, ys, style, marker="o" if kind == "eval" else None, markersize=3, label=label)
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            if lines:
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=90)
        plt.close(fig)


def curves(records: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, tuple[list[float], list[float]]]]]:
    """The plotted panels as (title, record kind, {label: (steps, values)}). An evaluation of mixed-size mazes
    adds one curve per side ("exact 15x15") to the accuracy panel, so the hardest size is not averaged away."""
    panels = []
    for kind, keys, title in PLOTTED:
        rows = [r for r in records if r.get("kind") == kind]
        points = {key: [(r["step"], r[key]) for r in rows if key in r] for key in keys}
        if "exact_accuracy" in keys:
            for side in sorted({int(side) for r in rows for side in r.get("exact_by_side", {})}):
                by_side = [
                    (r["step"], r["exact_by_side"][str(side)]) for r in rows if str(side) in r.get("exact_by_side", {})
                ]
                points[f"exact {side}x{side}"] = by_side
        lines = {label: ([p[0] for p in pts], [p[1] for p in pts]) for label, pts in points.items() if pts}
        panels.append((title, kind, lines))
    return panels

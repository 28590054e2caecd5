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
    def __init__(self, run_dir: Path, append: bool = False) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.plot_path = run_dir / "metrics.png"
        if not append and self.path.exists():
            self.path.unlink()

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
        records = self.records()
        fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 3.6))
        for ax, (kind, keys, title) in zip(axes, PLOTTED, strict=True):
            rows = [r for r in records if r.get("kind") == kind]
            for key in keys:
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o" if kind == "eval" else None, markersize=3, label=key)
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=90)
        plt.close(fig)

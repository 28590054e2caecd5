"""The GPU check's report: its targets, worked out from the parts' results, and the Markdown tables.

Kept apart from the runner so the report can be re-rendered from a `report.json` alone:
`python -m benchmarks.gpu_report DIR/report.json > DIR/report.md`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SERVED = ("sudoku-9x9", "paper-sudoku-mlp")
"""Models the serving part loads: the shipped Sudoku checkpoint and the paper-size Sudoku TRM-MLP (random)."""
AGREEMENT_BAR = 0.999
CONTINUOUS_BAR = 5.0
RAW_BAR = 0.85


def result(report: dict[str, Any], part: str) -> dict[str, Any]:
    value = report["parts"].get(part, {}).get("result", {})
    return value if isinstance(value, dict) else {}


def first_variant(report: dict[str, Any]) -> str:
    dtype, compile_ = report["plan"]["serve_variants"][0]
    return f"{dtype}/{'compile' if compile_ else 'eager'}"


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it was met (None: not measured)."""
    applies = not report["smoke"]
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, bar: float) -> None:
        met = None if value is None else value >= bar
        rows.append({"target": name, "value": value, "bar": bar, "met": met, "applies": applies})

    checkpoints = result(report, "correctness").get("checkpoints", {})
    fp32 = {n: c["fp32"]["agreement"] for n, c in checkpoints.items() if isinstance(c.get("fp32"), dict)}
    worst = min(fp32, key=lambda n: fp32[n]) if fp32 else None
    add(
        f"shipped checkpoints, device fp32 vs CPU fp32 agreement (worst: {worst})", fp32.get(worst or ""), AGREEMENT_BAR
    )
    serving = result(report, "serving").get(first_variant(report), {})
    conc = report["plan"]["target_concurrency"]
    for model in SERVED:
        cells = serving.get(model, {})

        def rate(policy: str, cells: dict[str, Any] = cells) -> float | None:
            value = cells.get(policy, {}).get(f"c{conc}", {}).get("puzzles_per_s")
            return value if isinstance(value, int | float) else None

        raw = cells.get("raw", {}).get("puzzles_per_s")
        add(
            f"{model}: continuous / sequential at c={conc}",
            ratio(rate("continuous"), rate("sequential")),
            CONTINUOUS_BAR,
        )
        add(f"{model}: server / raw model at c={conc}", ratio(rate("continuous"), raw), RAW_BAR)
    return rows


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return lines


def error_rows(data: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """Items that failed, anywhere in a part's results, as (item, error) rows."""
    rows: list[list[Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            if "error" in value and isinstance(value["error"], str):
                rows.append([prefix + key, value["error"].splitlines()[0][:160]])
            else:
                rows += error_rows(value, f"{prefix}{key}/")
    return rows


def render(report: dict[str, Any]) -> str:
    env = result(report, "environment")
    gpu = env.get("gpu", {})
    title = "GPU check (CPU smoke run: targets do not apply)" if report["smoke"] else "GPU check"
    lines = [
        f"# {title}",
        "",
        f"`{report['command']}`, started {report['started']}, budget {report['budget_s']:.0f} s",
        "",
    ]
    lines += ["## Targets", ""]
    lines += table(
        ["target", "measured", "bar", "met"],
        [
            [t["target"], t["value"], t["bar"], "n/a" if t["met"] is None else "yes" if t["met"] else "NO"]
            for t in report.get("targets", [])
        ],
    )
    lines += ["", "## Parts", ""]
    lines += table(
        ["part", "status", "seconds", "cap s"],
        [[n, p["status"], p.get("seconds"), p.get("cap_s")] for n, p in report["parts"].items()],
    )
    lines += ["", "## Environment", ""]
    lines += table(
        ["what", "value"],
        [[k, json.dumps(v) if isinstance(v, dict | list) else v] for k, v in {**env, "gpu": gpu}.items()],
    )

    corr = result(report, "correctness")
    lines += ["", "## Correctness: argmax agreement with CPU fp32, per supervision step", ""]
    rows = []
    for name, c in corr.get("checkpoints", {}).items():
        for label in ("fp32", "bf16"):
            if isinstance(c.get(label), dict):
                a = c[label]
                rows.append([name, label, a["agreement"], a["min_step_agreement"], a["max_q_gap"], a["step_ms"]])
    for name, a in corr.get("paper", {}).items():
        if "agreement" in a:
            rows.append(
                [
                    f"{name} (random, hidden {a['hidden_size']})",
                    "fp32",
                    a["agreement"],
                    a["min_step_agreement"],
                    a["max_q_gap"],
                    a["step_ms"],
                ]
            )
    for name, a in corr.get("onnx", {}).items():
        if "agreement" in a:
            label = f"ONNX {a['provider']}{', IO binding' if a['io_binding'] else ''} vs torch"
            rows.append([name, label, a["agreement"], a["min_step_agreement"], a["max_q_gap"], a["step_ms"]])
    lines += table(["model", "run", "agreement", "worst step", "max halting-logit gap", "ms/step"], rows)

    serving = result(report, "serving")
    lines += ["", "## Serving: puzzles/s (p50 / p99 ms), closed loop", ""]
    rows = []
    for variant, models in serving.items():
        for model, cells in models.items():
            if not isinstance(cells, dict) or model == "server":
                continue
            raw = cells.get("raw", {})
            if "puzzles_per_s" in raw:
                rows.append(
                    [
                        variant,
                        model,
                        "raw model (no HTTP)",
                        "full pool",
                        raw["puzzles_per_s"],
                        raw.get("mean_steps"),
                        "",
                        "",
                    ]
                )
            for policy, by_conc in cells.items():
                if policy == "raw" or not isinstance(by_conc, dict):
                    continue
                for conc, c in by_conc.items():
                    if "puzzles_per_s" in c:
                        rows.append(
                            [
                                variant,
                                model,
                                policy,
                                conc[1:],
                                c["puzzles_per_s"],
                                "",
                                f"{c['p50_ms']} / {c['p99_ms']}",
                                f"{c['errors']} / {c.get('cut', 0)}",
                            ]
                        )
    lines += table(
        ["precision", "model", "scheduler", "concurrency", "puzzles/s", "mean steps", "p50 / p99 ms", "errors / cut"],
        rows,
    )

    lines += ["", "## Training: paper presets on generated data", ""]
    rows = [
        [
            name,
            r.get("variant"),
            r.get("seconds_per_step"),
            r.get("steps_per_second"),
            r.get("examples_per_second"),
            r.get("peak_memory_mib"),
            r.get("warmup_s"),
            r.get("data_build_s"),
        ]
        for name, r in result(report, "training").items()
        if isinstance(r, dict) and "seconds_per_step" in r
    ]
    lines += table(["preset", "variant", "s/step", "steps/s", "examples/s", "peak MiB", "warm-up s", "data s"], rows)

    burst = result(report, "burst")
    lines += ["", "## Burst", ""]
    if "summary" in burst:
        lines += ["`" + burst["command"] + "`", "", "```json", json.dumps(burst["summary"], indent=2), "```"]
    else:
        lines.append(burst.get("error", report["parts"].get("burst", {}).get("status", "not run")))

    errors = [[part, *row] for part in report["parts"] for row in error_rows(result(report, part))]
    if errors:
        lines += ["", "## Items that failed", ""]
        lines += table(["part", "item", "error"], errors)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(json.loads(Path(sys.argv[1]).read_text())))

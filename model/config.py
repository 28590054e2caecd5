"""`TRMConfig`: every number that decides the shape and behaviour of a recursive model.

It is validated at construction, so a bad preset or a hand-edited `config.json` fails before any tensor is
built, and it round-trips through `config.json` unchanged (unknown keys are an error, not silently dropped).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

Family = Literal["sudoku", "maze", "arc"]
Arch = Literal["trm", "hrm"]
Mixer = Literal["attention", "mlp", "conv"]
Position = Literal["rope", "learned", "none"]

FAMILIES = ("sudoku", "maze", "arc")
VOCAB = {"sudoku": 11, "maze": 6, "arc": 12}


@dataclass
class TRMConfig:
    """Architecture and halting settings of one checkpoint; defaults are the paper's Sudoku-attention model."""

    family: Family = "sudoku"
    """Puzzle family the checkpoint serves; picks the codec."""
    arch: Arch = "trm"
    """`trm` (one shared network) or `hrm` (the predecessor with separate L and H networks)."""
    vocab_size: int = 11
    """Token vocabulary: Sudoku 11, maze 6, ARC 12 (reference encodings)."""
    seq_len: int = 81
    """Tokens per puzzle, without the puzzle-embedding prefix (81 for 9x9 Sudoku, 900 for 30x30 grids)."""
    num_puzzle_ids: int = 1
    """Rows of the puzzle-embedding table: 1 for Sudoku/maze (one shared prefix), one per task variant for ARC."""
    puzzle_emb_len: int = 16
    """Prefix slots before the tokens; slot 0 holds the puzzle vector, the Q head reads it (TRM 16, HRM 1)."""
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    """SwiGLU width factor; the inner width is round(expansion*h*2/3) rounded up to a multiple of 256."""
    num_layers: int = 2
    """Blocks in the network (TRM: one network; HRM: layers of each of L and H)."""
    h_cycles: int = 3
    """T: recursions per supervision step; the first T-1 run without gradient."""
    l_cycles: int = 6
    """n: latent updates of z per recursion before y is updated."""
    mixer: Mixer = "attention"
    """Token mixing: self-attention, the MLP across the sequence axis (the paper's TRM-MLP for Sudoku), or `conv`:
    a depthwise 3x3 convolution over the H x W grid with no position anywhere (`model.layers.LocalMixer`), so one
    set of weights runs on any grid size; `seq_len` is then only the square canvas it was trained on."""
    conv_broadcast: bool = False
    """`conv` only: every grid cell also reads the prefix's puzzle vector and the grid's pooled summary, so a task
    vector and facts about the whole grid reach every cell in one layer (ARC, where a rule is global: recolour the
    largest object, copy a shape across). False keeps cells purely local, as the maze model needs to extrapolate."""
    pos_encodings: Position = "rope"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    halt_max_steps: int = 16
    """N_sup: supervision steps before a puzzle is forced to halt."""
    halt_exploration_prob: float = 0.1
    """Training only: chance that a sample gets a random minimum step count before it may halt."""
    no_act_continue: bool = True
    """TRM trains only q_halt; False adds HRM's bootstrapped q_continue target."""
    training: dict[str, Any] = field(default_factory=dict)
    """Provenance: preset name, data description, command. Not used by the model."""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid TRMConfig: {msg}")

        need(self.family in FAMILIES, f"family {self.family!r} not in {FAMILIES}")
        need(self.arch in ("trm", "hrm"), f"arch {self.arch!r} must be 'trm' or 'hrm'")
        need(self.vocab_size >= 2, "vocab_size must be >= 2")
        need(self.seq_len >= 1, "seq_len must be >= 1")
        need(self.num_puzzle_ids >= 1, "num_puzzle_ids must be >= 1")
        need(self.puzzle_emb_len >= 1, "puzzle_emb_len must be >= 1 (the Q head reads prefix slot 0)")
        need(self.hidden_size >= 1 and self.num_heads >= 1, "hidden_size and num_heads must be positive")
        need(self.hidden_size % self.num_heads == 0, "hidden_size must be divisible by num_heads")
        need(
            self.mixer == "mlp" or self.head_dim % 2 == 0 or self.pos_encodings != "rope",
            "RoPE needs an even head_dim",
        )
        need(self.expansion > 0, "expansion must be positive")
        need(self.num_layers >= 1, "num_layers must be >= 1")
        need(self.h_cycles >= 1 and self.l_cycles >= 1, "h_cycles (T) and l_cycles (n) must be >= 1")
        need(self.mixer in ("attention", "mlp", "conv"), f"mixer {self.mixer!r} must be 'attention', 'mlp' or 'conv'")
        need(
            self.mixer != "conv" or self.pos_encodings == "none",
            "mixer 'conv' needs pos_encodings 'none': a position table or RoPE would tie it to one grid size",
        )
        need(
            self.mixer != "conv" or math.isqrt(self.seq_len) ** 2 == self.seq_len,
            "mixer 'conv' needs a square seq_len (the H x W canvas of flat inputs is read as a square)",
        )
        need(not self.conv_broadcast or self.mixer == "conv", "conv_broadcast needs mixer 'conv'")
        need(self.pos_encodings in ("rope", "learned", "none"), f"pos_encodings {self.pos_encodings!r} unknown")
        need(self.halt_max_steps >= 1, "halt_max_steps must be >= 1")
        need(0.0 <= self.halt_exploration_prob <= 1.0, "halt_exploration_prob must be in [0, 1]")
        need(self.rms_norm_eps > 0, "rms_norm_eps must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def total_len(self) -> int:
        """Prefix plus tokens: the length of y, z and x."""
        return self.puzzle_emb_len + self.seq_len

    @property
    def grid_side(self) -> int:
        """Side of the square grid the tokens lay out (9 for Sudoku, 30 for maze/ARC models)."""
        return math.isqrt(self.seq_len)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TRMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"invalid TRMConfig: unknown keys {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TRMConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

"""Server settings: environment variables with the `TRM_` prefix, and the same names as CLI flags.

`TRM_WEIGHTS_DIR=weights python -m server` and `python -m server --weights-dir weights` mean the same thing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inference.arc import ARC_DEFAULTS, TTT, ArcRecipe
from inference.canvas import DEFAULT_MAX_MAZE_SIDE
from inference.escalation import DEFAULT_BUDGET_STEPS

CPU_CHUNK_TOKENS = 16384
"""Cells per forward pass on a CPU: a bigger batch runs in row chunks of about this many cells. Past it a step
leaves the caches and costs more than its size: the size-agnostic maze model at batch 64 took 147 ms per
puzzle-step on 32x32 canvases in one pass and 52 ms in passes of 16 (16x16 canvases: 17 ms either way)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRM_", extra="forbid")

    host: str = "127.0.0.1"
    """Interface to bind; 0.0.0.0 in containers."""
    port: int = Field(8000, ge=0, le=65535)
    weights_dir: Path = Path("weights")
    """Directory whose sub-directories are checkpoints (config.json + model.safetensors)."""
    models: list[str] = Field(default_factory=list)
    """Checkpoint names to load; empty loads every checkpoint under weights_dir."""
    on_broken_checkpoint: Literal["fail", "skip"] = "fail"
    """A checkpoint that does not load stops start-up (fail) or is logged and left out (skip)."""
    engine_hook: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    """TEST ONLY (fault injection): "module:function" called with each Engine once it is built and warmed; it may
    append step hooks to `engine.hooks`. It imports and runs that code at start-up: never set it in production."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda or cuda:N."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute precision of the torch backend: auto = bf16 autocast on a GPU and on a CPU with bf16 in hardware
    (AVX512-BF16, AMX, Arm BF16), else fp32. The ONNX backend always computes in fp32."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """Engine that runs the steps; auto picks per device the one measured fastest (see the README)."""
    compile: bool = False
    """torch.compile the network (GPU; shapes are bucketed so compiled graphs are reused)."""
    threads: int = Field(0, ge=0)
    """CPU threads for the engine (0 = all cores)."""
    slots: int = Field(64, ge=1, le=4096)
    """Puzzles one model runs at once: the batch of each step."""
    scheduler_policy: Literal["continuous", "static", "sequential"] = "continuous"
    """continuous: refill slots every step; static: a batch runs to the end before the next starts;
    sequential: one puzzle at a time. The last two exist to measure the first against them."""
    cpu_chunk_tokens: int = Field(CPU_CHUNK_TOKENS, ge=0)
    """On a CPU, run a step's batch in row chunks of about this many cells, so it stays in cache (0: one pass).
    GPUs always take the batch in one pass."""
    max_maze_side: int = Field(DEFAULT_MAX_MAZE_SIDE, ge=2, le=1024)
    """Longest maze side (inside its wall ring) a size-agnostic maze model takes; a larger maze gets a 422."""
    canvas_tokens: int = Field(32768, ge=256)
    """A size-agnostic model's slots per canvas pool: this many grid cells in all, so a pool of 136x136 canvases
    holds one or two mazes and a pool of 24x24 ones many (never more than `slots`)."""
    queue_capacity: int = Field(1024, ge=1)
    """Puzzles waiting per model before new ones get 503."""
    default_max_steps: int = Field(0, ge=0)
    """Supervision steps when a request does not say; 0 = the model's calibrated horizon, else its halt_max_steps."""
    default_views: int = Field(1, ge=1, le=8)
    """Symmetries of the square a Sudoku or maze is solved under when a request does not say (`views`); 8 votes
    over all of them for the most accurate answers at 8 times the compute."""
    max_steps_limit: int = Field(64, ge=1)
    """Largest max_steps a request may ask for."""
    default_budget_steps: int = Field(DEFAULT_BUDGET_STEPS, ge=0)
    """Model steps a Sudoku or maze may spend over all its views when the request does not say (`budget`): one
    whose first answer fails the rule check tries more symmetries of the square until one verifies or the budget
    would be passed. 0 turns escalation off."""
    max_budget_steps: int = Field(1024, ge=1)
    """Largest `budget.steps` a request may ask for."""
    halt_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    """A puzzle halts when sigmoid(q_halt) reaches this. Unset: each model's calibrated threshold from its
    metrics.json (`python -m training.calibrate`), else 0.5, the reference's q_halt > 0."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Deadline per puzzle, queue wait included; past it the answer is 504."""
    stall_grace_s: float = Field(5.0, gt=0)
    """A step still running this long past a request's deadline counts as hung: the request gets 504 without
    waiting for it, and /health/ready says not ready until the step returns."""
    max_body_bytes: int = Field(1 << 20, ge=1024)
    """Larger request bodies get 413 before they are read."""
    max_batch_requests: int = Field(256, ge=1)
    """Puzzles in one /solve/batch call."""
    api_key: str | None = None
    """When set, solve endpoints need `Authorization: Bearer <key>`."""
    protect_metrics: bool = False
    """Also require the key for /metrics and /models (health stays open for probes)."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM: how long queued and running puzzles may take before the process exits anyway."""
    log_level: str = "info"
    arc_max_variants: int = Field(ARC_DEFAULTS.known_variants, ge=1, le=1001)
    """Known ARC tasks: trained variants (puzzle-table rows) run and voted per test input. The reference votes
    over up to 1001; 8 keeps a CPU answer within seconds, a GPU affords far more."""
    arc_variants: int = Field(ARC_DEFAULTS.variants, ge=1, le=1001)
    """Unseen ARC tasks: augmented variants (identity included) adapted to and voted."""
    arc_ttt: TTT = ARC_DEFAULTS.ttt
    """Unseen ARC tasks: fine-tune the network and the variants' vectors ("network"), or fit the vectors alone
    with the network frozen ("vectors")."""
    arc_adapt_time_budget_s: float = Field(ARC_DEFAULTS.adapt_time_budget_s, ge=0.0, le=3600.0)
    """Seconds of test-time work for an unseen task when the request does not say (`adapt_budget_s`): fine-tuning
    and answering ("network"), the fit ("vectors"). The request's deadline is extended by it."""
    arc_adapt_max_budget_s: float = Field(120.0, ge=0.0, le=3600.0)
    """The largest `adapt_budget_s` a request may ask for; more gets a 422 naming this setting."""
    arc_adapt_steps: int = Field(ARC_DEFAULTS.adapt_steps, ge=0, le=100_000)
    """Optimiser steps at most: of each leave-one-out fold and of the final fit ("network"), of the fit
    ("vectors")."""
    arc_adapt_lr: float = Field(ARC_DEFAULTS.adapt_lr, gt=0.0, le=1.0)
    """Adam learning rate of the network's weights in fine-tuning."""
    arc_vector_lr: float = Field(ARC_DEFAULTS.vector_lr, gt=0.0, le=1.0)
    """Adam learning rate of the fitted puzzle vectors."""
    arc_adapt_batch: int = Field(ARC_DEFAULTS.adapt_batch, ge=1, le=4096)
    """Demonstration rows per optimiser step of fine-tuning."""
    arc_adapt_supervision_steps: int = Field(ARC_DEFAULTS.adapt_supervision_steps, ge=1, le=16)
    """Supervision steps per adaptation step, carrying the carry forward; each one multiplies its cost."""

    def arc_recipe(self) -> ArcRecipe:
        """The ARC recipe these settings give (`inference.arc`): what `solve_unseen` and the adaptation run with."""
        return replace(
            ARC_DEFAULTS,
            known_variants=self.arc_max_variants,
            variants=self.arc_variants,
            ttt=self.arc_ttt,
            adapt_time_budget_s=self.arc_adapt_time_budget_s,
            adapt_steps=self.arc_adapt_steps,
            adapt_lr=self.arc_adapt_lr,
            vector_lr=self.arc_vector_lr,
            adapt_batch=self.arc_adapt_batch,
            adapt_supervision_steps=self.arc_adapt_supervision_steps,
        )

    @model_validator(mode="after")
    def _metrics_key(self) -> Settings:
        if self.protect_metrics and not self.api_key:
            raise ValueError("protect_metrics needs api_key: without a key there is nothing to protect /metrics with")
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [v for v in (part.strip() for part in value.split(",")) if v]
        return value

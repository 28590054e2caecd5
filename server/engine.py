"""Engines run one supervision step over a set of slots whose carry stays on the device between steps.

The scheduler only speaks in slot numbers and numpy results; an engine owns the device tensors (the carry
y, z, the input tokens and prefix vector of every slot). That split lets the torch and ONNX Runtime backends
share the scheduler, and keeps the carry on the GPU for the whole life of a puzzle.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.config import TRMConfig
from model.precision import autocast, dtype_name
from model.trm import TRM, Carry

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """Outputs of one step for the slots asked for, in the same order."""

    tokens: np.ndarray  # (k, seq_len) int64: argmax answer tokens
    q_halt: np.ndarray  # (k,) float32 halting logits
    finite: np.ndarray  # (k,) bool: logits and q_halt are all finite


StepHook = Callable[[Sequence[int], StepResult | None], StepResult | None]
"""Called before (result None) and after each step; may raise or return a changed result (fault injection)."""


def bucket(n: int, limit: int) -> int:
    """Smallest power of two >= n (capped at `limit`), so a GPU sees a handful of shapes, not every batch size."""
    size = 1
    while size < n:
        size *= 2
    return min(size, max(limit, n))


def chunk_rows(rows: int, tokens_per_row: int, chunk_tokens: int) -> list[slice]:
    """Row slices of at most `chunk_tokens` cells each (at least one row); one slice when `chunk_tokens` is 0
    (`server.settings.CPU_CHUNK_TOKENS` says why a CPU wants them)."""
    per = rows if chunk_tokens <= 0 else max(1, chunk_tokens // max(1, tokens_per_row))
    return [slice(start, min(start + per, rows)) for start in range(0, rows, per)]


def step_chunks(
    model: TRM, carry: Carry, inputs: Tensor, vectors: Tensor, chunk_tokens: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One supervision step of a batch, in row chunks (`chunk_rows`): new y, z, logits, q_halt, q_continue.
    Rows are independent, so the result is the one-pass result."""
    parts = []
    for part in chunk_rows(inputs.shape[0], inputs.shape[1], chunk_tokens):
        out = model.step(Carry(carry.y[part], carry.z[part]), inputs[part], puzzle_vectors=vectors[part])
        parts.append((out.carry.y, out.carry.z, out.logits, out.q_halt, out.q_continue))
    if len(parts) == 1:
        return parts[0]
    y, z, logits, q_halt, q_continue = (torch.cat(column) for column in zip(*parts, strict=True))
    return y, z, logits, q_halt, q_continue


class Engine(ABC):
    """A pool of `slots` puzzle slots for one model on one device."""

    backend: str
    provider: str

    def __init__(self, config: TRMConfig, table: np.ndarray, slots: int) -> None:
        self.config = config
        self.table = table  # (num_puzzle_ids, hidden) puzzle-embedding rows
        self.slots = slots
        self.hooks: list[StepHook] = []

    @abstractmethod
    def load(self, slot: int, tokens: np.ndarray, vector: np.ndarray) -> None:
        """Put a new puzzle in `slot`: its tokens and prefix vector, and the initial carry."""

    @abstractmethod
    def _step(self, slots: Sequence[int]) -> StepResult:
        """Run one step for `slots`, updating their carry in place."""

    def step(self, slots: Sequence[int]) -> StepResult:
        for hook in self.hooks:
            hook(slots, None)
        result = self._step(slots)
        for hook in self.hooks:
            changed = hook(slots, result)
            if changed is not None:
                result = changed
        return result

    def vector_for(self, puzzle_id: int) -> np.ndarray:
        return np.asarray(self.table[puzzle_id], dtype=np.float32)

    def warm_up(self) -> None:
        """Run one full-pool step on blank inputs so first requests do not pay for lazy initialisation."""
        blank = np.zeros(self.config.seq_len, dtype=np.int64)
        n = min(self.slots, 8)
        for slot in range(n):
            self.load(slot, blank, self.vector_for(0))
        self._step(list(range(n)))


def configure_cpu_threads(threads: int) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


class TorchEngine(Engine):
    backend = "torch"

    def __init__(
        self,
        model: TRM,
        config: TRMConfig,
        slots: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        compile_model: bool = False,
        chunk_tokens: int = 0,
    ) -> None:
        table = model.puzzle_emb.detach().cpu().numpy()
        self.chunk_tokens = chunk_tokens
        super().__init__(config, table, slots)
        self.device = device
        self.dtype = dtype
        self.provider = f"{device.type}" + ("" if dtype == torch.float32 else f"/{dtype_name(dtype)}")
        self.model = model.to(device).eval()
        if compile_model:
            self.model.compile_networks(dynamic=False)
        # The carry stays fp32 under bf16 autocast, as in training (the step returns it in fp32): rounding y and z
        # to bf16 between steps would feed the network states it never saw, for a saving of a few MB.
        carry = self.model.initial_carry(slots, device, num_tokens=config.seq_len)  # a canvas pool's own size
        self.y: Tensor = carry.y
        self.z: Tensor = carry.z
        self.inputs = torch.zeros(slots, config.seq_len, dtype=torch.long, device=device)
        self.vectors = torch.zeros(slots, config.hidden_size, dtype=torch.float32, device=device)
        self.y_init: Tensor = carry.y[0, 0].clone()
        self.z_init: Tensor = carry.z[0, 0].clone()

    def load(self, slot: int, tokens: np.ndarray, vector: np.ndarray) -> None:
        self.inputs[slot] = torch.as_tensor(tokens, dtype=torch.long)
        self.vectors[slot] = torch.as_tensor(vector, dtype=torch.float32)
        self.y[slot] = self.y_init
        self.z[slot] = self.z_init

    @torch.inference_mode()
    def _step(self, slots: Sequence[int]) -> StepResult:
        k = len(slots)
        padded = bucket(k, self.slots) if self.device.type == "cuda" else k
        idx_list = list(slots) + [slots[0]] * (padded - k)  # pad with a repeat of a real slot; results dropped
        idx = torch.as_tensor(idx_list, dtype=torch.long, device=self.device)
        carry = Carry(self.y[idx], self.z[idx])
        with autocast(self.device, self.dtype):
            y, z, logits, q_halt_raw, q_continue = step_chunks(
                self.model, carry, self.inputs[idx], self.vectors[idx], self.chunk_tokens
            )
        real = idx[:k]
        self.y[real] = y[:k].float()
        self.z[real] = z[:k].float()
        logits = logits[:k]
        q_halt = self.model.halting_logit(q_halt_raw[:k], q_continue[:k]).float()
        finite = torch.isfinite(logits).flatten(1).all(dim=1) & torch.isfinite(q_halt)
        return StepResult(
            tokens=logits.argmax(-1).cpu().numpy(),
            q_halt=q_halt.cpu().numpy(),
            finite=finite.cpu().numpy(),
        )

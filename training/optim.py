"""Optimisers and schedules of the reference recipe, written out so their update rules are exact and tested.

* `AdamAtan2`: decoupled weight decay first, then p -= (lr / bc1) * atan2(m, sqrt(v) / sqrt(bc2)). No epsilon
  (atan2 is bounded and defined at 0), no extra scale, unlike PyPI's adam-atan2-pytorch defaults.
* `sign_sgd_rows`: the sparse puzzle-table update: only rows seen in the batch move and decay.
* `lr_at`: linear warm-up from 0, then cosine to lr * min_ratio (constant when the ratio is 1).
* `EMA`: shadow copy of the trainable parameters; it is what gets evaluated and saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn


class AdamAtan2(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                p.add_(torch.atan2(m, v.sqrt() / math.sqrt(bc2)), alpha=-lr / bc1)


def build_optimizer(
    name: str, params: Iterable[Tensor], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam_atan2":
        return AdamAtan2(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (adam_atan2 or adamw)")


@torch.no_grad()
def sign_sgd_rows(table: Tensor, ids: Tensor, grads: Tensor, lr: float, weight_decay: float) -> None:
    """Sum the gradients per puzzle id, then p <- p * (1 - lr * wd) - lr * sign(g) on those rows only."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    summed = torch.zeros(len(unique), grads.shape[-1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inverse, grads)
    rows = table[unique]
    table[unique] = rows * (1 - lr * weight_decay) - lr * torch.sign(summed).to(rows.dtype)


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < warmup:
        return base * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EMA:
    """Exponential moving average of trainable parameters: shadow = rate * shadow + (1 - rate) * param."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.rate = rate
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), 1 - self.rate)

    def state_dict_for(self, model: nn.Module) -> dict[str, Tensor]:
        """The model's state dict with the EMA weights in place of the live parameters (buffers as they are)."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state.update({k: v.clone() for k, v in self.shadow.items()})
        return state

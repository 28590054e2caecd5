"""Losses of deep supervision with ACT: stable-max cross-entropy on the answer, BCE on the halting head.

Reductions follow the reference: per sequence, the token loss is averaged over the labelled positions; the
batch is then summed (the loop divides by the global batch size), and halting is trained against whether the
argmax answer is exactly right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 0  # label token 0 (PAD) is not scored


def _stablemax_s(x: Tensor) -> Tensor:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0: positive, monotone, linear growth instead of exp.

    The x < 0 branch reads x clamped to <= 0. `torch.where` back-propagates zeros into the branch it did not
    pick, and a zero times that branch's derivative at x = 1 (1 / 0) is NaN, so an unclamped logit of exactly
    1.0 poisons the whole gradient. Under bf16 autocast logits are coarse enough to hit 1.0 in every batch.
    (The reference adds 1e-30 to the denominator instead; the values are the same.)"""
    return torch.where(x < 0, 1 / (1 - x.clamp(max=0)), x + 1)


def stablemax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token loss -log(s(x_label) / sum s(x)), in float64 as in the reference; ignored tokens give 0."""
    s = _stablemax_s(logits.to(torch.float64))
    logp = torch.log(s / s.sum(dim=-1, keepdim=True))
    valid = labels != IGNORE
    picked = torch.gather(logp, -1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, torch.zeros_like(picked))


def softmax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    valid = labels != IGNORE
    loss = F.cross_entropy(
        logits.float().flatten(0, -2), torch.where(valid, labels, 0).long().flatten(), reduction="none"
    ).view(labels.shape)
    return torch.where(valid, loss, torch.zeros_like(loss))


def q_continue_target(next_q_halt: Tensor, next_q_continue: Tensor, is_last: Tensor) -> Tensor:
    """HRM's bootstrapped target for the continue head: the value of the best action at the next step.

    sigmoid(next q_halt) where the next step is the last allowed one (only halting is left), otherwise
    sigmoid(max(next q_halt, next q_continue)).
    """
    best = torch.where(is_last, next_q_halt, torch.maximum(next_q_halt, next_q_continue))
    return torch.sigmoid(best.float())


@dataclass
class ACTLoss:
    total: Tensor  # summed over the batch; backprop total / global_batch_size
    lm: Tensor
    q_halt: Tensor
    q_continue: Tensor
    correct_tokens: Tensor  # (B,) labelled tokens predicted right
    valid_tokens: Tensor  # (B,)
    exact: Tensor  # (B,) bool: every labelled token right


def act_loss(
    logits: Tensor,
    labels: Tensor,
    q_halt: Tensor,
    kind: str = "stablemax",
    q_continue: Tensor | None = None,
    q_continue_target: Tensor | None = None,
) -> ACTLoss:
    """lm + 0.5 * (BCE(q_halt, exact) + BCE(q_continue, target)), the continue term only for HRM-style ACT."""
    per_token = (
        stablemax_cross_entropy(logits, labels) if kind == "stablemax" else softmax_cross_entropy(logits, labels)
    )
    valid = labels != IGNORE
    counts = valid.sum(-1)
    lm = (per_token.sum(-1) / counts.clamp(min=1)).sum()
    with torch.no_grad():
        correct = (logits.argmax(-1) == labels) & valid
        correct_tokens = correct.sum(-1)
        exact = correct_tokens == counts
    q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, exact.to(q_halt.dtype), reduction="sum")
    q_cont_loss = torch.zeros((), dtype=q_halt.dtype, device=q_halt.device)
    if q_continue is not None and q_continue_target is not None:
        q_cont_loss = F.binary_cross_entropy_with_logits(q_continue, q_continue_target, reduction="sum")
    total = lm + 0.5 * (q_halt_loss + q_cont_loss)
    return ACTLoss(total, lm.detach(), q_halt_loss.detach(), q_cont_loss.detach(), correct_tokens, counts, exact)

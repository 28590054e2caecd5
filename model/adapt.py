"""Test-time adaptation: fit puzzle embeddings for a task the model never saw, with the network frozen.

An ARC model learns one prefix vector per (task, variant) and is useless on a new task with a blank one
(TRM_REFERENCE §2, issue #60). Its network, though, was trained to read a task's rule from that vector, so for an
unseen task we search for vectors under which the frozen network maps the task's demonstration inputs to their
outputs: gradient descent on the vectors alone, the loss being cross-entropy over the labelled tokens after one
(or a few, carrying the carry forward) supervision steps from a fresh carry. One vector per augmented variant,
as in training, so the variants' predictions can be voted on.

`fit_puzzle_vectors` works on token tensors for any family; the ARC helpers below build those tensors from a
task and its variants (the same `apply_variant` + `encode_grid` as the dataset builder) and turn the variants'
predictions back into the two attempts of an ARC answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import TRMConfig
from model.factory import build_model
from model.puzzles.arc import ArcTask, Grid, decode_grid, encode_grid
from model.puzzles.augment import Variant, apply_variant, invert_variant, parse_variant_name, vote
from model.trm import TRM, plain_name

IGNORE = 0  # label token 0 (PAD) is not scored, as in training
BLANK = "<blank>"  # name of puzzle-table row 0 in identifiers.json


def frozen_copy(model: TRM, device: torch.device | None = None) -> TRM:
    """A private copy of `model` for adaptation: same weights, a one-row puzzle table, no trainable parameters.

    The serving engine runs its own model in the scheduler thread; adapting on a copy means the two never share
    autograd state or a flag. The puzzle table (up to ~1M rows for ARC) is not copied: adaptation supplies its
    own vectors. `torch.compile`d sub-modules are read through their `_orig_mod.` keys.
    """
    config: TRMConfig = model.config
    copy = build_model(replace(config, num_puzzle_ids=1))
    state = {plain_name(k): v for k, v in model.state_dict().items() if k != "puzzle_emb"}
    state["puzzle_emb"] = copy.puzzle_emb
    copy.load_state_dict(state, strict=True)
    for p in copy.parameters():
        p.requires_grad_(False)
    source = next(model.parameters()).device
    return copy.to(device or source).eval()


def _token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over examples of the per-example mean cross-entropy of the labelled tokens (the reference's reduction)."""
    valid = labels != IGNORE
    per_token = F.cross_entropy(
        logits.float().flatten(0, -2), torch.where(valid, labels, 0).flatten(), reduction="none"
    ).view(labels.shape)
    per_example = (per_token * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    return per_example.mean()


def fit_puzzle_vectors(
    model: TRM,
    inputs: Tensor,
    labels: Tensor,
    variant_of_example: Tensor,
    num_vectors: int,
    steps: int = 100,
    time_budget_s: float = math.inf,
    lr: float = 1e-2,
    optimizer: Literal["adam", "sign_sgd"] = "adam",
    supervision_steps: int = 1,
    init: Tensor | None = None,
) -> tuple[Tensor, list[float]]:
    """Fit `num_vectors` puzzle vectors to demonstration pairs with the network frozen.

    Args:
        model: a TRM/HRM (`initial_carry`, `step`); its parameters are left untouched (requires_grad is switched
            off during the fit and restored after), so pass a `frozen_copy` when another thread runs the model.
        inputs: (N, seq_len) input tokens of the demonstrations, every variant's copies stacked.
        labels: (N, seq_len) target tokens; 0 (PAD) positions are not scored.
        variant_of_example: (N,) which vector (0..num_vectors-1) example i is shown with.
        num_vectors: vectors to fit, one per variant.
        steps: optimiser steps at most.
        time_budget_s: wall-clock budget; the fit stops before starting a step past it.
        lr: learning rate (Adam) or step size (sign-SGD, the reference's puzzle-table optimiser).
        supervision_steps: supervision steps per optimiser step, each from the carry of the previous one (the
            carry is detached between steps, so each contributes its own loss); 1 = from a fresh carry only.
        init: (D,) or (num_vectors, D) starting point; zeros (the reference's initial table row) by default.

    Returns:
        The vectors with the lowest loss seen, (num_vectors, D) fp32 on the model's device, detached; and the
        loss before every optimiser step taken (mean over supervision steps), so `losses[0]` is the starting loss.
    """
    if inputs.shape != labels.shape or inputs.ndim != 2:
        raise ValueError(f"inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)} must both be (N, seq_len)")
    if variant_of_example.shape != inputs.shape[:1]:
        raise ValueError(f"variant_of_example has shape {tuple(variant_of_example.shape)}, expected ({len(inputs)},)")
    if len(inputs) and not 0 <= int(variant_of_example.min()) <= int(variant_of_example.max()) < num_vectors:
        raise ValueError(f"variant_of_example must index 0..{num_vectors - 1}")
    if supervision_steps < 1:
        raise ValueError("supervision_steps must be >= 1")
    device = next(model.parameters()).device
    config: TRMConfig = model.config
    hidden = config.hidden_size
    start_vectors = torch.zeros(num_vectors, hidden, device=device)
    if init is not None:
        start_vectors += init.detach().to(device, torch.float32)
    vectors = start_vectors.clone().requires_grad_(True)
    best, best_loss = start_vectors.clone(), math.inf
    losses: list[float] = []
    if len(inputs) == 0:
        return best, losses

    inputs = inputs.to(device).long()
    labels = labels.to(device).long()
    which = variant_of_example.to(device).long()
    # Adam written out rather than torch.optim.Adam, whose first construction imports torch._dynamo (~2 s on a
    # CPU), a cost the first adaptation of a server process would otherwise pay inside its time budget.
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    moment1, moment2 = torch.zeros_like(vectors), torch.zeros_like(vectors)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    started = time.perf_counter()
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for step in range(1, steps + 1):
                if time.perf_counter() - started >= time_budget_s:
                    break
                carry = model.initial_carry(len(inputs), device)
                total = 0.0
                for _ in range(supervision_steps):
                    out = model.step(carry, inputs, puzzle_vectors=vectors[which])
                    loss = _token_loss(out.logits, labels) / supervision_steps
                    loss.backward()  # type: ignore[no-untyped-call]  # the carry is detached: graph freed here
                    total += float(loss.detach())
                    carry = out.carry
                losses.append(total)
                if total < best_loss:
                    best_loss, best = total, vectors.detach().clone()
                grad = vectors.grad
                assert grad is not None
                with torch.no_grad():
                    if optimizer == "adam":
                        moment1.mul_(beta1).add_(grad, alpha=1 - beta1)
                        moment2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                        denom = (moment2 / (1 - beta2**step)).sqrt_().add_(eps)
                        vectors -= lr * (moment1 / (1 - beta1**step)) / denom
                    else:
                        vectors -= lr * torch.sign(grad)
                vectors.grad = None
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return best, losses


# ---------------------------------------------------------------------------------------------------- ARC
def demonstration_batch(
    task: ArcTask, variants: Sequence[Variant], side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every demonstration pair under every variant, encoded as the dataset builder does (no translation).

    Returns:
        inputs, labels uint8 (V*P, side*side) and the variant index of each row, int64 (V*P,), variant-major.
    """
    rows_in, rows_out, which = [], [], []
    for v, variant in enumerate(variants):
        for pair in task.train:
            assert pair.output is not None
            rows_in.append(encode_grid(apply_variant(pair.input, variant), side))
            rows_out.append(encode_grid(apply_variant(pair.output, variant), side))
            which.append(v)
    if not rows_in:
        empty = np.zeros((0, side * side), np.uint8)
        return empty, empty.copy(), np.zeros(0, np.int64)
    return np.stack(rows_in), np.stack(rows_out), np.array(which, np.int64)


def variant_test_inputs(
    task: ArcTask, variants: Sequence[Variant], side: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every test input under every variant: tokens uint8 (T*V, side*side) and (test index, variant index) per row.

    Test-major, so row 0 is the first test input under the first variant (the identity, from `make_variants`).
    """
    rows, keys = [], []
    for t, pair in enumerate(task.test):
        for v, variant in enumerate(variants):
            rows.append(encode_grid(apply_variant(pair.input, variant), side))
            keys.append((t, v))
    return np.stack(rows), keys


def known_variants(identifiers: Sequence[str]) -> dict[str, list[tuple[int, Variant]]]:
    """Task name -> (puzzle-table row, variant) of every trained variant that identifiers.json names.

    The un-augmented variant comes first (it is the one a step-by-step view shows); row 0 ("<blank>") and names
    that are not ARC variant names are left out.
    """
    known: dict[str, list[tuple[int, Variant]]] = {}
    for row, name in enumerate(identifiers):
        if row == 0 or name == BLANK:
            continue
        try:
            task, variant = parse_variant_name(name)
        except ValueError:
            continue
        known.setdefault(task, []).append((row, variant))
    for rows in known.values():
        rows.sort(key=lambda rv: not rv[1].is_identity)
    return known


def predicted_grid(tokens: np.ndarray, variant: Variant, side: int) -> Grid | None:
    """A variant's predicted tokens as a grid in the original task's frame; None when no colour was predicted."""
    grid = decode_grid(tokens, side)
    if not grid:
        return None
    return invert_variant(np.asarray(grid, np.uint8), variant).astype(np.int64).tolist()  # type: ignore[no-any-return]


def two_attempts(candidates: Sequence[tuple[Grid | None, float]], input_shape: tuple[int, int]) -> list[Grid]:
    """Vote the variants' (grid, halting probability) into the ranked grids, at least two of them.

    Ranking is `vote` (count, then mean halting probability). attempt_2 is the runner-up, or attempt_1 again when
    every variant agreed; a prediction with no grid never votes, and when none has one the answer is a grid of
    zeros shaped like the test input (never an empty grid).
    """
    ranked = vote([(g, p) for g, p in candidates if g is not None])
    if not ranked:
        ranked = [np.zeros(input_shape, np.int64).tolist()]
    if len(ranked) == 1:
        ranked.append(ranked[0])
    return ranked

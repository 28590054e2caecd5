"""Test-time adaptation to a task the model never saw: fit its puzzle vectors, or fine-tune the network itself.

An ARC model learns one prefix vector per (task, variant) and is useless on a new task with a blank one
(TRM_REFERENCE §2, issue #60). Two ways to adapt, both on a private copy of the served model and both fitting one
vector per augmented variant (as in training, so the variants' predictions can be voted on), with cross-entropy
over the labelled tokens after one (or a few, carrying the carry forward) supervision steps from a fresh carry:

* `fit_puzzle_vectors`: the network frozen, only the vectors move. The network was trained to read a task's rule
  from its vector, so we search for vectors under which it maps the demonstrations right. Cheap, but a network
  that has not seen the rule cannot be steered to it (and a `conv` model's cells never read the vector at all).
* `fit_network`: every weight moves too, as the strongest ARC systems fine-tune on a task's augmented
  demonstrations. The step count that generalises rather than memorises is chosen by leave-one-out over the
  demonstration pairs, inside a hard wall-clock budget; `predict_variants` then reads the adapted copy's answers
  where the calibrated halting policy stops.

Both work on token tensors for any family; the ARC helpers below build those tensors from a task and its variants
(the same `apply_variant` + `encode_grid` as the dataset builder) and turn the variants' predictions back into the
two attempts of an ARC answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from inference.halting import HaltingPolicy, HaltReason, first_halts
from model.config import TRMConfig
from model.factory import build_model
from model.puzzles.arc import ArcTask, Grid, decode_grid, encode_grid
from model.puzzles.augment import Variant, apply_variant, invert_variant, parse_variant_name, vote
from model.trm import TRM, Carry, plain_name

IGNORE = 0  # label token 0 (PAD) is not scored, as in training
BLANK = "<blank>"  # name of puzzle-table row 0 in identifiers.json


def trainable_copy(model: TRM, num_vectors: int = 1, device: torch.device | None = None) -> TRM:
    """A private, trainable copy of `model`: same architecture and weights, a zeroed `num_vectors`-row puzzle table.

    The serving engine runs its own model in the scheduler thread; adapting on a copy means the two never share
    autograd state, a flag or a weight. The puzzle table (up to ~1M rows for ARC) is not copied: adaptation supplies
    its own vectors, and `fit_network` leaves them in the copy's table, row v for variant v. `torch.compile`d
    sub-modules are read through their `_orig_mod.` keys.
    """
    config: TRMConfig = model.config
    copy = build_model(replace(config, num_puzzle_ids=num_vectors))
    state = {plain_name(k): v for k, v in model.state_dict().items() if k != "puzzle_emb"}
    state["puzzle_emb"] = copy.puzzle_emb
    copy.load_state_dict(state, strict=True)
    source = next(model.parameters()).device
    return copy.to(device or source).eval()


def frozen_copy(model: TRM, device: torch.device | None = None) -> TRM:
    """A `trainable_copy` with a one-row puzzle table and no trainable parameters (for `fit_puzzle_vectors`)."""
    copy = trainable_copy(model, 1, device)
    for p in copy.parameters():
        p.requires_grad_(False)
    return copy


def _token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over examples of the per-example mean cross-entropy of the labelled tokens (the reference's reduction)."""
    valid = labels != IGNORE
    per_token = F.cross_entropy(
        logits.float().flatten(0, -2), torch.where(valid, labels, 0).flatten(), reduction="none"
    ).view(labels.shape)
    per_example = (per_token * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    return per_example.mean()


def _fresh_carry(model: TRM, inputs: Tensor) -> Carry:
    """A fresh carry sized for `inputs`: a `conv` model steps any canvas, so its token count comes from the inputs
    (as `training.scoring.run_steps` does); other models know one size."""
    tokens = inputs[0].numel() if len(inputs) else model.config.seq_len
    sized = {} if tokens == model.config.seq_len else {"num_tokens": tokens}
    return model.initial_carry(len(inputs), inputs.device, **sized)


class _Adam:
    """Adam without weight decay, one learning rate per group of tensors, written out.

    Not torch.optim.Adam(W): its first construction imports torch._dynamo (2.8 s measured on one CPU thread,
    2026-12-06), a cost the first adaptation of a server process would otherwise pay inside its time budget.
    """

    def __init__(
        self, groups: Sequence[tuple[Sequence[Tensor], float]], beta1: float = 0.9, beta2: float = 0.999
    ) -> None:
        self.groups = [(list(params), lr) for params, lr in groups]
        self.beta1, self.beta2, self.eps = beta1, beta2, 1e-8
        self.moments = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for ps, _ in self.groups for p in ps}
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        """One update from the tensors' `.grad` (a tensor without one is skipped), then clear the gradients."""
        self.steps += 1
        fix1, fix2 = 1 - self.beta1**self.steps, 1 - self.beta2**self.steps
        for params, lr in self.groups:
            for p in params:
                if p.grad is None:
                    continue
                m1, m2 = self.moments[id(p)]
                m1.mul_(self.beta1).add_(p.grad, alpha=1 - self.beta1)
                m2.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
                p -= lr * (m1 / fix1) / (m2 / fix2).sqrt_().add_(self.eps)
                p.grad = None


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
    adam = _Adam([([vectors], lr)])
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    started = time.perf_counter()
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for _ in range(steps):
                if time.perf_counter() - started >= time_budget_s:
                    break
                carry = _fresh_carry(model, inputs)
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
                if optimizer == "adam":
                    adam.step()
                    continue
                grad = vectors.grad
                assert grad is not None
                with torch.no_grad():
                    vectors -= lr * torch.sign(grad)
                vectors.grad = None
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return best, losses


# ---------------------------------------------------------------------------------------------------- the network
@dataclass(frozen=True)
class Checkpoint:
    """The held-out pair's score after `step` optimiser steps of one leave-one-out fold."""

    step: int
    exact: bool
    """The identity variant's prediction is right on every labelled token (for ARC: the grid is right)."""
    loss: float
    """Mean token loss over every variant of the held-out pair."""


@dataclass
class Fold:
    """One leave-one-out fold: the demonstration pair held out and its score every `eval_every` steps."""

    held_out: int
    curve: list[Checkpoint] = field(default_factory=list)


@dataclass
class NetworkFitReport:
    """What `fit_network` did, for logs, metrics and tests."""

    steps_chosen: int
    """Optimiser steps the final fit aimed at: the probe's best checkpoint scaled to all pairs; the scaled cap when
    the budget cut the probe while its held-out score was still improving; with one pair, the default."""
    steps_taken: int
    """Optimiser steps the final fit took: `steps_chosen` unless the budget cut it."""
    folds: list[Fold] = field(default_factory=list)
    """The probe's folds, in the order run; empty with one demonstration pair or no budget."""
    best_checkpoint: int | None = None
    """The probe step count with the best held-out score over the folds (before scaling); None without a probe."""
    copy_s: float = 0.0
    probe_s: float = 0.0
    final_s: float = 0.0
    total_s: float = 0.0
    seconds_per_step: float = 0.0
    """Mean wall time of one optimiser step (probe and final fit together); 0 when none was taken."""
    losses: list[float] = field(default_factory=list)
    """Training loss of every final-fit step (token loss + halting term), before its update."""
    budget_cut: bool = False
    """The budget ended a fold or the final fit before its planned step count (or skipped the fit altogether)."""
    probe_abandoned: bool = False
    """The first fold's first step showed the budget could not take it to `min_probe_steps`, so the probe stopped
    there and the final fit got its time, aiming at the cap."""


class _Clock:
    """The call's deadline and what steps have cost so far, so no step starts that would end past the deadline.

    A step's cost is estimated per row, as the most expensive of the last few steps: the CPUs are shared with
    training runs, so a mean would let a slow step overrun. Per-row cost from small batches overstates large ones
    (fixed per-call overheads), which errs on the safe side. Before any step has run, one row is timed without
    gradient and scaled by 3 (the differentiated recursion and its backward cost about 3 forwards), so even the
    first step is checked against the deadline; that guess overstates a big batch's cost, so the first measured
    step replaces it. The first measured step is dropped once a second exists: it pays one-off warm-up (kernel
    selection, allocator growth; up to several times a later step on a 32x32 canvas), and kept among the last few
    it would block steps that fit.
    """

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s
        self.per_row: list[float] = []
        self.prior = 0.0
        """Seconds a row, before any step was timed: a one-row forward times 3."""
        self.steps = 0
        self.step_s = 0.0

    def now(self) -> float:
        return time.perf_counter()

    def left(self) -> float:
        return self.deadline - self.now()

    def cost(self, rows: int) -> float:
        if not self.per_row:
            return rows * self.prior
        timed = self.per_row[1:] or self.per_row
        return rows * max(timed[-5:])

    def fits(self, rows: int, until: float) -> bool:
        """Whether a step on `rows` rows would end before `until` and the deadline."""
        return self.now() + self.cost(rows) <= min(self.deadline, until)

    def record(self, seconds: float, rows: int) -> None:
        self.per_row.append(seconds / max(rows, 1))
        self.steps += 1
        self.step_s += seconds


@dataclass
class _Demos:
    """The demonstration rows on the device, and which variant and pair each one is."""

    inputs: Tensor
    labels: Tensor
    which: Tensor
    pair: Tensor

    def rows(self, mask: Tensor) -> _Demos:
        return _Demos(self.inputs[mask], self.labels[mask], self.which[mask], self.pair[mask])


def _adaptation_loss(model: TRM, vectors: Tensor, demos: _Demos, supervision_steps: int, halting: float) -> float:
    """Back-propagate the mean token loss plus `halting` * BCE(q_halt, exact), per supervision step; returns it.

    The halting term is the training recipe's (`training.losses.act_loss`, weight 0.5): without it the Q head
    would keep reading the pre-adaptation network and its probabilities, which halt and weight the vote
    (`two_attempts`), would mean nothing for the adapted one.
    """
    carry = _fresh_carry(model, demos.inputs)
    total = 0.0
    for _ in range(supervision_steps):
        out = model.step(carry, demos.inputs, puzzle_vectors=vectors[demos.which])
        loss = _token_loss(out.logits, demos.labels)
        if halting:
            exact = _exact_rows(out.logits, demos.labels)
            loss = loss + halting * F.binary_cross_entropy_with_logits(out.q_halt, exact.float())
        (loss / supervision_steps).backward()  # type: ignore[no-untyped-call]  # the carry is detached
        total += float(loss.detach()) / supervision_steps
        carry = out.carry
    return total


def _exact_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) bool: every labelled token of the row predicted right."""
    valid = labels != IGNORE
    return (((logits.argmax(-1) == labels) | ~valid).all(-1)).detach()


@torch.no_grad()
def _score(model: TRM, vectors: Tensor, held: _Demos, supervision_steps: int, identity: int, step: int) -> Checkpoint:
    """The held-out pair after `supervision_steps` steps from a fresh carry, as the fit trains it."""
    carry = _fresh_carry(model, held.inputs)
    for _ in range(supervision_steps):
        out = model.step(carry, held.inputs, puzzle_vectors=vectors[held.which])
        carry = out.carry
    exact = _exact_rows(out.logits, held.labels)[held.which == identity]
    return Checkpoint(step, bool(exact.all()) and len(exact) > 0, float(_token_loss(out.logits, held.labels)))


def _best(curves: Sequence[Sequence[Checkpoint]]) -> tuple[int, bool]:
    """The step count whose checkpoint scores best over the folds: most held-out pairs exact, then lowest total
    loss, then fewest steps; and whether it is the last step count every fold scored (still improving there).
    Only step counts every fold scored count, so each is compared over the same folds."""
    common = set.intersection(*({c.step for c in curve} for curve in curves))
    by_step = [{c.step: c for c in curve} for curve in curves]

    def score(step: int) -> tuple[int, float, int]:
        points = [checkpoints[step] for checkpoints in by_step]
        return sum(p.exact for p in points), -sum(p.loss for p in points), -step

    best = max(common, key=score)
    return best, best == max(common)


@dataclass
class _Recipe:
    """`fit_network`'s optimisation settings, shared by every fold and the final fit."""

    lr: float
    vector_lr: float
    batch_size: int
    eval_every: int
    supervision_steps: int
    halting_weight: float
    identity_variant: int
    generator: torch.Generator

    def batch(self, rows: int) -> int:
        return min(self.batch_size, rows)


@dataclass
class _FineTuned:
    vectors: Tensor
    curve: list[Checkpoint]
    losses: list[float]
    cut: bool
    """The clock stopped it before `steps`."""
    abandoned: bool = False
    """A probe fold stopped after its first step: at that step's cost it could not reach `abandon_below` steps."""


def _fine_tune(
    copy: TRM,
    weights: dict[str, Tensor],
    start: Tensor,
    demos: _Demos,
    steps: int,
    recipe: _Recipe,
    clock: _Clock,
    until: float,
    held: _Demos | None,
    abandon_below: int = 0,
) -> _FineTuned:
    """Reset `copy` to `weights` and the vectors to `start`, then up to `steps` Adam steps on minibatches of
    `demos`, scoring `held` (when given) before the first step, every `eval_every` steps and after the last; with
    `abandon_below`, stop after the first step if, at its cost, `abandon_below` steps would not end by `until`."""
    copy.load_state_dict(weights)
    vectors = start.clone().requires_grad_(True)
    adam = _Adam([(list(copy.parameters()), recipe.lr), ([vectors], recipe.vector_lr)])
    done = _FineTuned(vectors, [], [], cut=False)
    n, batch = len(demos.inputs), recipe.batch(len(demos.inputs))
    order = torch.empty(0, dtype=torch.long)

    def stop(step: int) -> _FineTuned:
        """Cut by the clock: score where the fit stopped, if that fits, so the curve ends at the steps taken."""
        done.cut = True
        scored = done.curve[-1].step if done.curve else -1
        if held is not None and scored != step and clock.fits(len(held.inputs), clock.deadline):
            done.curve.append(_score(copy, vectors, held, recipe.supervision_steps, recipe.identity_variant, step))
        return done

    for step in range(steps + 1):
        if held is not None and (step % recipe.eval_every == 0 or step == steps):
            if not clock.fits(len(held.inputs), until):
                return stop(step)
            done.curve.append(_score(copy, vectors, held, recipe.supervision_steps, recipe.identity_variant, step))
        if step == steps:
            return done
        if not clock.fits(batch, until):
            return stop(step)
        if len(order) < batch:  # epoch by epoch, without replacement
            order = torch.cat((order, torch.randperm(n, generator=recipe.generator)))
        rows, order = order[:batch], order[batch:]
        began = clock.now()
        with torch.enable_grad():
            minibatch = demos.rows(rows.to(demos.inputs.device))
            loss = _adaptation_loss(copy, vectors, minibatch, recipe.supervision_steps, recipe.halting_weight)
        adam.step()
        clock.record(clock.now() - began, batch)
        done.losses.append(loss)
        if step == 0 and abandon_below > 1 and not clock.fits(batch * (abandon_below - 1), until):
            done.abandoned = done.cut = True
            return done
    return done


def fit_network(
    model: TRM,
    inputs: Tensor,
    labels: Tensor,
    variant_of_example: Tensor,
    pair_of_example: Tensor,
    num_vectors: int,
    time_budget_s: float,
    max_steps: int = 200,
    lr: float = 1e-3,
    vector_lr: float = 1e-2,
    batch_size: int = 32,
    eval_every: int = 10,
    probe_share: float = 0.5,
    min_probe_steps: int | None = None,
    single_pair_steps: int | None = None,
    supervision_steps: int = 1,
    halting_weight: float = 0.5,
    identity_variant: int = 0,
    init: Tensor | None = None,
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[TRM, NetworkFitReport]:
    """Fine-tune a private copy of the whole network, and one puzzle vector per variant, on a task's demonstrations.

    How many steps: fine-tuning a network on a handful of pairs first generalises, then memorises them, and where
    it turns is task-dependent. With k >= 2 pairs a leave-one-out probe finds it: hold out pair j (all its
    variants), fine-tune a copy on the others for up to `max_steps`, score the held-out pair every `eval_every`
    steps (identity variant exact, then mean loss). Folds rotate over the pairs while the budget allows a further
    fold AND the final fit; the best checkpoint averaged over the folds run sets the count. The final fit trains
    the copy afresh on all pairs for that count times the ratio of steps per epoch (k/(k-1) when minibatches are
    smaller than the data), so it sees each row as often as the probe's best checkpoint did. With one pair there
    is nothing to hold out and `single_pair_steps` (default `max_steps`) is used.

    The budget is hard, counted from the call's start: the probe's first fold stops at `probe_share` of it, and no
    optimiser step or evaluation starts that the clock (`_Clock`) expects to end past it. The copy is always made
    and returned (budget 0 returns it unadapted, with zero vectors or `init`); making it is the only work outside
    the checks.

    Args:
        model: the served model; never modified (its weights are copied, its flags untouched).
        inputs, labels: (N, L) tokens of every variant's demonstrations (`demonstration_batch`); label 0 is not
            scored. A `conv` model takes any square L (its carry is sized from the inputs).
        variant_of_example: (N,) variant index (0..num_vectors-1) of each row.
        pair_of_example: (N,) demonstration pair of each row (`demonstration_pairs`): what a fold holds out.
        num_vectors: puzzle vectors to fit, one per variant.
        time_budget_s: wall-clock budget of the whole call.
        max_steps: optimiser steps of one probe fold at most; the final fit may take up to k/(k-1) times more.
        lr: Adam learning rate of the network weights.
        vector_lr: Adam learning rate of the puzzle vectors (the table's own, larger rate in training).
        batch_size: rows per optimiser step, drawn without replacement epoch by epoch.
        eval_every: probe steps between held-out scores.
        probe_share: fraction of the budget the first fold may use; later folds need no share of their own. Half:
            the final fit repeats about one fold's steps (times up to k/(k-1)), so an even split lets the first fold
            run to the cap and the final fit to the count it finds.
        min_probe_steps: steps the first fold must be able to take within its share for the probe to run on
            (default 2 * eval_every: fewer show where the held-out score starts, not where it turns). Timed on its
            first step; below it the probe is abandoned and the final fit takes the budget, aiming at the cap. On a
            CPU, a 32x32 ARC canvas costs seconds a step: the probe would take half the budget to learn nothing.
        single_pair_steps: steps of the fit when there is a single pair; default `max_steps`.
        supervision_steps: supervision steps per optimiser step from a fresh carry, the carry carried forward.
        halting_weight: weight of the Q head's BCE against exactness (training's 0.5; 0 leaves the head alone).
        identity_variant: the variant whose held-out prediction must be exact (`make_variants` puts it first).
        init: (D,) or (num_vectors, D) starting vectors; zeros (the training table's initial row) by default.
        seed: minibatch order.
        device: where the copy lives and trains; default the source model's.

    Returns:
        The adapted copy, whose puzzle table row v is variant v's vector (run it with puzzle_ids = variant index,
        e.g. `predict_variants`), and the report.
    """
    clock = _Clock(max(time_budget_s, 0.0))
    if inputs.shape != labels.shape or inputs.ndim != 2:
        raise ValueError(f"inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)} must both be (N, L)")
    for name, index in (("variant_of_example", variant_of_example), ("pair_of_example", pair_of_example)):
        if index.shape != inputs.shape[:1]:
            raise ValueError(f"{name} has shape {tuple(index.shape)}, expected ({len(inputs)},)")
    if len(inputs) and not 0 <= int(variant_of_example.min()) <= int(variant_of_example.max()) < num_vectors:
        raise ValueError(f"variant_of_example must index 0..{num_vectors - 1}")
    if supervision_steps < 1 or batch_size < 1 or eval_every < 1 or max_steps < 0:
        raise ValueError("supervision_steps, batch_size and eval_every must be >= 1 and max_steps >= 0")

    copy = trainable_copy(model, num_vectors, device)
    where = next(copy.parameters()).device
    start = torch.zeros(num_vectors, copy.config.hidden_size, device=where)
    if init is not None:
        start += init.detach().to(where, torch.float32)
    with torch.no_grad():
        copy.puzzle_emb.copy_(start)
    report = NetworkFitReport(steps_chosen=0, steps_taken=0, copy_s=clock.now() - clock.start)
    demos = _Demos(
        inputs.to(where).long(),
        labels.to(where).long(),
        variant_of_example.to(where).long(),
        pair_of_example.to(where).long(),
    )
    pairs = sorted(set(demos.pair.tolist()))
    if time_budget_s <= 0 or len(inputs) == 0 or clock.left() <= 0:
        report.budget_cut = time_budget_s <= 0 and len(inputs) > 0
        report.total_s = clock.now() - clock.start
        return copy, report

    weights = {k: v.detach().clone() for k, v in copy.state_dict().items()}
    with torch.no_grad():  # the first step's cost, before there is any: one row, forward only, times 3
        began = clock.now()
        copy.step(_fresh_carry(copy, demos.inputs[:1]), demos.inputs[:1], puzzle_vectors=start[demos.which[:1]])
        clock.prior = 3 * (clock.now() - began)
    recipe = _Recipe(
        lr=lr,
        vector_lr=vector_lr,
        batch_size=batch_size,
        eval_every=eval_every,
        supervision_steps=supervision_steps,
        halting_weight=halting_weight,
        identity_variant=identity_variant,
        generator=torch.Generator().manual_seed(seed),
    )

    steps = max_steps if single_pair_steps is None else single_pair_steps
    if len(pairs) >= 2:
        probe_began, fold_s = clock.now(), 0.0
        for held_out in pairs:
            fold_began = clock.now()
            # The first fold may use its share; a further one must leave room for the final fit it informs.
            until = clock.start + probe_share * time_budget_s
            if report.folds:
                until = clock.deadline - steps * clock.cost(min(batch_size, len(demos.inputs)))
                if fold_began + fold_s > until:
                    break
            held = demos.pair == held_out
            floor = 0 if report.folds else (2 * eval_every if min_probe_steps is None else min_probe_steps)
            fit = _fine_tune(
                copy, weights, start, demos.rows(~held), max_steps, recipe, clock, until, demos.rows(held), floor
            )
            fold_s = max(fold_s, clock.now() - fold_began)
            report.budget_cut |= fit.cut
            if fit.abandoned:
                report.probe_abandoned = True
                break
            if not fit.curve:
                break
            report.folds.append(Fold(held_out, fit.curve))
            report.best_checkpoint, at_end = _best([f.curve for f in report.folds])
            # Same passes over each row as the best checkpoint: scale by the ratio of steps per epoch.
            fold_rows = int((~held).sum())
            scale = recipe.batch(fold_rows) / fold_rows * len(demos.inputs) / recipe.batch(len(demos.inputs))
            steps = round(report.best_checkpoint * scale)
            if fit.cut:  # the probe's time is spent; a curve still improving where it was cut gives only a floor
                steps = round(max_steps * scale) if at_end else steps
                break
        report.probe_s = clock.now() - probe_began
    report.steps_chosen = steps

    final_began = clock.now()
    fit = _fine_tune(copy, weights, start, demos, steps, recipe, clock, clock.deadline, None)
    report.final_s = clock.now() - final_began
    report.losses, report.steps_taken = fit.losses, len(fit.losses)
    report.budget_cut |= fit.cut
    with torch.no_grad():
        copy.puzzle_emb.copy_(fit.vectors.detach())
    for p in copy.parameters():
        p.requires_grad_(False)
    report.seconds_per_step = clock.step_s / clock.steps if clock.steps else 0.0
    report.total_s = clock.now() - clock.start
    return copy.eval(), report


@dataclass
class VariantPredictions:
    """What `predict_variants` read off every row: the answer where the policy halted it, and the whole trace."""

    tokens: np.ndarray
    """uint8 (R, L): each row's prediction at its halting step."""
    probability: np.ndarray
    """fp32 (R,): sigmoid(q_halt) at that step, which ranks a row's vote."""
    steps: np.ndarray
    """int64 (R,): supervision steps each row took (its halting step, 1-based)."""
    halted_by: list[HaltReason]
    trace: np.ndarray
    """uint8 (steps, R, L) and `trace_probability` fp32 (steps, R): every step's prediction, for step-by-step views."""
    trace_probability: np.ndarray


@torch.inference_mode()
def predict_variants(
    model: TRM, inputs: Tensor, variant_of_row: Tensor, policy: HaltingPolicy, deadline: float = math.inf
) -> VariantPredictions:
    """Run a `fit_network` copy on test inputs and read each row's answer where `policy` halts it.

    Every row runs `policy.max_steps` supervision steps with its variant's vector (the copy's puzzle table row);
    `inference.halting.first_halts` then picks the step each row halts at, the rule the server and the evaluation
    use (ARC has no rule check, so the Q head's threshold or the horizon decides). Take the policy from the
    checkpoint's `Calibration.policy`, so an adapted model halts as its source was calibrated to.

    Args:
        model: the adapted copy; the same for any TRM whose puzzle table has a row per variant.
        inputs: (R, L) test tokens of every variant (`variant_test_inputs`); any square L for a `conv` model.
        variant_of_row: (R,) variant (puzzle-table row) of each input.
        policy: when to halt.
        deadline: `time.perf_counter()` value no step may end past (as far as the last step's cost tells): the
            rows still running when it comes are read at their last step, as if their horizon had been reached.
            The first step always runs.
    """
    device = next(model.parameters()).device
    inputs = inputs.to(device).long()
    ids = variant_of_row.to(device).long()
    carry = _fresh_carry(model, inputs)
    answers, probabilities = [], []
    last = 0.0
    for step in range(policy.max_steps):
        started = time.perf_counter()
        if step and started + last > deadline:
            break
        out = model.step(carry, inputs, ids)
        carry = out.carry
        answers.append(out.logits.argmax(-1).to(torch.uint8).cpu().numpy())
        probabilities.append(torch.sigmoid(model.halting_logit(out.q_halt, out.q_continue)).float().cpu().numpy())
        last = time.perf_counter() - started
    trace, prob_trace = np.stack(answers), np.stack(probabilities)  # (steps, R, L), (steps, R)
    at, why = first_halts(policy, prob_trace)
    rows = np.arange(len(inputs))
    return VariantPredictions(trace[at, rows], prob_trace[at, rows], at + 1, why, trace, prob_trace)


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


def demonstration_pairs(task: ArcTask, variants: Sequence[Variant]) -> np.ndarray:
    """The demonstration pair of each row of `demonstration_batch` (variant-major), int64 (V*P,): what
    `fit_network`'s leave-one-out holds out."""
    return np.tile(np.arange(len(task.train), dtype=np.int64), len(variants))


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

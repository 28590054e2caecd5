"""The ARC recipe: its defaults, and how an unseen task is answered. One home for the server and the evaluation.

An ARC answer is voted over augmented variants of the task. A task the model never saw is first adapted to: by
default the tiny network itself is fine-tuned, with one puzzle vector per variant, on the task's augmented
demonstrations (test-time training, `model.adapt.fit_network`, its step count chosen by leave-one-out over the
demonstration pairs), or, with `ttt = "vectors"`, only the vectors are fitted to a frozen network (the older path).
How many variants, how many steps and how much wall time that takes decide both the answer and its cost, so the
server and `training.evaluate_arc` read them from here, and `solve_unseen` is the code both run: a card's pass@2
is what the server does with its defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from inference.halting import HaltingPolicy, HaltReason
from model.adapt import (
    NetworkFitReport,
    demonstration_batch,
    demonstration_pairs,
    fit_network,
    frozen_copy,
    predict_variants,
    predicted_grid,
    variant_test_inputs,
)
from model.precision import autocast
from model.puzzles.arc import ArcTask, Grid
from model.puzzles.augment import IDENTITY, Variant, make_variants
from model.trm import TRM

TTT = Literal["network", "vectors"]


@dataclass(frozen=True)
class ArcRecipe:
    known_variants: int = 8
    """Known tasks: trained variants (puzzle-table rows) run and voted per test input. The reference votes over up
    to 1001; 8 keeps a CPU answer within seconds."""
    variants: int = 8
    """Unseen tasks: augmented variants (identity included) adapted to and voted."""
    ttt: TTT = "network"
    """Unseen tasks: fine-tune the network and the variants' vectors ("network"), or the vectors alone with the
    network frozen ("vectors"; it did not help the attention model it was built for)."""
    adapt_time_budget_s: float = 30.0
    """Wall-clock cap of one unseen task's test-time work: for "network", fine-tuning AND answering (the fit gets
    what answering, timed first, leaves); for "vectors", the fit. Requests may ask for another budget up to the
    server's `arc_adapt_max_budget_s`."""
    adapt_steps: int = 200
    """Optimiser steps at most: of each leave-one-out fold and of the final fit ("network"), or of the fit
    ("vectors"; 0 answers with the average trained embedding)."""
    adapt_lr: float = 1e-3
    """Adam learning rate of the network's weights ("network"); the vectors' is `vector_lr`."""
    vector_lr: float = 3e-2
    """Adam learning rate of the fitted puzzle vectors."""
    adapt_batch: int = 32
    """Demonstration rows (pair x variant) per optimiser step of network fine-tuning."""
    adapt_supervision_steps: int = 1
    """Supervision steps per adaptation step, carrying the carry forward; each one multiplies its cost."""
    variant_seed: int = 0
    """Seeds the augmentations of an unseen task, so the same task gets the same variants (and answer) each time."""


ARC_DEFAULTS = ArcRecipe()


@dataclass
class UnseenAnswer:
    """An unseen task answered by test-time training: every (test input, variant) row's prediction, and the fit."""

    variants: list[Variant]
    keys: list[tuple[int, int]]
    """(test input, variant) of each row, test-major: row 0 is the first test input under the identity."""
    grids: list[Grid | None]
    """Each row's prediction mapped back to the task's frame (None: no colour predicted)."""
    probability: np.ndarray
    steps: np.ndarray
    halted_by: list[HaltReason]
    trace: np.ndarray
    """(steps, rows, L) tokens and `trace_probability` (steps, rows): every step of every row."""
    trace_probability: np.ndarray
    report: NetworkFitReport
    seconds: float
    """Wall time of the whole test-time work: copy, fit and answering."""

    def candidates(self, test_input: int) -> list[tuple[Grid | None, float]]:
        """The (grid, halting probability) of every variant of one test input: what `two_attempts` votes on."""
        return [(self.grids[r], float(self.probability[r])) for r, (t, _) in enumerate(self.keys) if t == test_input]


def unseen_variants(task: ArcTask, recipe: ArcRecipe = ARC_DEFAULTS) -> list[Variant]:
    """The variants an unseen task is adapted under: seeded by the recipe, so a task always gets the same ones."""
    return make_variants(task, recipe.variants, np.random.default_rng(recipe.variant_seed)) or [IDENTITY]


def solve_unseen(
    model: TRM,
    task: ArcTask,
    side: int,
    policy: HaltingPolicy,
    budget_s: float,
    recipe: ArcRecipe = ARC_DEFAULTS,
    init: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> UnseenAnswer:
    """Fine-tune a private copy of `model` on the task's augmented demonstrations, then answer its test inputs.

    Answering is timed first, with one supervision step of every test row on the untouched network, so the fit gets
    the budget less what answering will cost (with a fifth to spare: the CPUs are shared); when answering alone
    would overrun, the horizon is cut to what fits, and a step that would still end past the budget is not started
    (one step always runs). `model` is never modified.

    Args:
        model: the checkpoint's model (any mixer; a `conv` model runs on the task's canvas `side`).
        task: the parsed task; `side` the canvas it runs on (`inference.canvas.canvas_for` for a size-agnostic
            model, the model's own otherwise).
        policy: the checkpoint's halting policy for one view (ARC has no rule check: the Q head or the horizon).
        budget_s: seconds of test-time work for the whole call.
        init: the vectors' starting point (the average trained embedding), or zeros.
        dtype: the precision the fit and the answer run in (`model.precision.resolve_dtype`, as the server's and
            the evaluation's other answers): on a CPU that does bf16 in hardware bf16 autocast made a fine-tuning
            step 1.5-3x faster (one thread, 12x12 to 32x32 canvases), and the budget, not the step count chosen,
            is what limits a fit there.
    """
    start = time.perf_counter()
    variants = unseen_variants(task, recipe)
    tokens, keys = variant_test_inputs(task, variants, side)
    inputs = torch.as_tensor(tokens)
    which = torch.as_tensor([v for _, v in keys])

    device = next(model.parameters()).device
    with autocast(device, dtype, weights_change=True):
        timer = frozen_copy(model)  # another thread may be running `model` itself
        with torch.no_grad():
            timed = time.perf_counter()
            carry = timer.initial_carry(len(inputs), num_tokens=inputs.shape[1])
            timer.step(carry, inputs.long(), puzzle_vectors=torch.zeros(len(inputs), timer.config.hidden_size))
            per_step = (time.perf_counter() - timed) * 1.2
        left = budget_s - (time.perf_counter() - start)
        steps = max(1, min(policy.max_steps, int(left // max(per_step, 1e-6))))
        answer_s = per_step * steps
        demo_in, demo_out, demo_variant = demonstration_batch(task, variants, side)
        copy, report = fit_network(
            model,
            torch.as_tensor(demo_in),
            torch.as_tensor(demo_out),
            torch.as_tensor(demo_variant),
            torch.as_tensor(demonstration_pairs(task, variants)),
            len(variants),
            time_budget_s=max(0.0, budget_s - (time.perf_counter() - start) - answer_s),
            max_steps=recipe.adapt_steps,
            lr=recipe.adapt_lr,
            vector_lr=recipe.vector_lr,
            batch_size=recipe.adapt_batch,
            supervision_steps=recipe.adapt_supervision_steps,
            init=init,
            seed=recipe.variant_seed,
        )
        predicted = predict_variants(copy, inputs, which, replace(policy, max_steps=steps), deadline=start + budget_s)
    grids = [predicted_grid(predicted.tokens[r], variants[v], side) for r, (_, v) in enumerate(keys)]
    return UnseenAnswer(
        variants,
        keys,
        grids,
        predicted.probability,
        predicted.steps,
        predicted.halted_by,
        predicted.trace,
        predicted.trace_probability,
        report,
        time.perf_counter() - start,
    )

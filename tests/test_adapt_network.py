"""Test-time training of the network itself (`model.adapt.fit_network`) and reading its answers (`predict_variants`).

The model is a tiny size-agnostic (`conv`) ARC TRM from a fixed random init: it has never seen any task, so a task
it solves after `fit_network` was learned inside the call, from the task's own demonstrations. The task family is
"recolour every 1 to 2" on random grids of the colours 0, 1, 3 and 5 (each demonstration then shows every colour,
so the network can learn to copy them all); its variants are symmetries without a colour change, because a `conv`
model's cells never read the puzzle vector and so cannot follow a rule whose colours change per variant.

Timings on the shared CPU (one thread, two training runs beside it): ~25-45 ms per optimiser step of 4-6 rows.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from inference.halting import HaltingPolicy
from model.adapt import (
    NetworkFitReport,
    _Clock,
    demonstration_batch,
    demonstration_pairs,
    fit_network,
    predict_variants,
    predicted_grid,
    trainable_copy,
    two_attempts,
    variant_test_inputs,
)
from model.config import TRMConfig
from model.puzzles.arc import ArcPair, ArcTask
from model.puzzles.augment import IDENTITY, Variant
from model.trm import TRM

SIDE = 8
PALETTE = np.array([0, 1, 3, 5], np.uint8)
VARIANTS = [IDENTITY, Variant(5)]

TOLERANCE_S = 0.15
"""How far past its budget a call may return. The clock checks every step and score before it starts against the
most expensive recent one, so what is left is what it cannot check: building the copy (~5 ms here), the one-row
forward that times the first step, and a step slowed by the training runs sharing the CPU beyond any recent one
(steps take ~30 ms; a 3x slower one overruns by ~60 ms)."""


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def conv_model(seed: int = 0) -> TRM:
    """An 8x8-canvas `conv` ARC model, random init: one layer, T=1, n=2, hidden 32 (~25 ms a step of 6 rows)."""
    torch.manual_seed(seed)
    config = TRMConfig(
        family="arc",
        vocab_size=12,
        seq_len=SIDE * SIDE,
        mixer="conv",
        pos_encodings="none",
        hidden_size=32,
        num_heads=4,
        expansion=2.0,
        num_layers=1,
        puzzle_emb_len=1,
        h_cycles=1,
        l_cycles=2,
        halt_max_steps=4,
    )
    return TRM(config).eval()


def recolour_pair(rng: np.random.Generator, noise: bool = False) -> ArcPair:
    """A random grid with at least one 1, and the same grid with every 1 turned to 2 (random colours if `noise`)."""
    h, w = (int(x) for x in rng.integers(3, SIDE - 1, 2))
    grid = PALETTE[rng.integers(0, len(PALETTE), (h, w))]
    grid[rng.integers(0, h), rng.integers(0, w)] = 1  # so copying the input is never the answer
    out = grid.copy()
    out[grid == 1] = 2
    if noise:
        out = rng.integers(0, 10, (h, w)).astype(np.uint8)
    return ArcPair(grid, out)


def recolour_task(seed: int, demos: int = 3, tests: int = 2, noise: bool = False) -> ArcTask:
    rng = np.random.default_rng(seed)
    return ArcTask(
        tuple(recolour_pair(rng, noise) for _ in range(demos)), tuple(recolour_pair(rng, noise) for _ in range(tests))
    )


def fit(
    model: TRM, task: ArcTask, budget_s: float, side: int = SIDE, **options: object
) -> tuple[TRM, NetworkFitReport]:
    inputs, labels, which = demonstration_batch(task, VARIANTS, side)
    pairs = demonstration_pairs(task, VARIANTS)
    tensors = [torch.as_tensor(a) for a in (inputs, labels, which, pairs)]
    settings: dict[str, object] = {"max_steps": 60, "lr": 1e-2, **options}
    return fit_network(model, *tensors, len(VARIANTS), budget_s, **settings)  # type: ignore[arg-type]


def answers(model: TRM, task: ArcTask, side: int = SIDE) -> list[list[list[list[int]]]]:
    """The two voted attempts of every test input, read where the Q head halts (threshold 0.5, 4 steps at most)."""
    inputs, keys = variant_test_inputs(task, VARIANTS, side)
    variant_of_row = torch.as_tensor([v for _, v in keys])
    predicted = predict_variants(model, torch.as_tensor(inputs), variant_of_row, HaltingPolicy(0.5, 4, "q_head"))
    tokens, probs = predicted.tokens, predicted.probability
    result = []
    for t, pair in enumerate(task.test):
        candidates = [
            (predicted_grid(tokens[r], VARIANTS[v], side), float(probs[r])) for r, (ti, v) in enumerate(keys) if ti == t
        ]
        result.append(two_attempts(candidates, pair.input.shape)[:2])
    return result


def solved(model: TRM, task: ArcTask) -> bool:
    return all(
        pair.output is not None and pair.output.tolist() in attempts
        for pair, attempts in zip(task.test, answers(model, task), strict=True)
    )


def untrained_copy_of(model: TRM) -> TRM:
    """`model` itself, with one zero puzzle-table row per variant (what `fit_network` returns for budget 0)."""
    copy, _ = fit(model, recolour_task(0), 0.0)
    return copy


# ---------------------------------------------------------------------------------------------------- solving
@pytest.mark.parametrize("seed", [0, 1])
def test_an_unseen_task_is_solved_after_fitting_the_network_and_not_before(seed: int) -> None:
    model = conv_model()
    task = recolour_task(seed)
    assert not solved(untrained_copy_of(model), task)

    adapted, report = fit(model, task, 5.0, eval_every=10)

    assert solved(adapted, task)
    assert report.folds and report.steps_taken > 0


# ---------------------------------------------------------------------------------------------------- the budget
@pytest.mark.parametrize("budget_s", [0.2, 1.0, 2.0])
def test_the_call_returns_within_its_budget(budget_s: float) -> None:
    model = conv_model()
    task = recolour_task(0)

    began = time.perf_counter()
    _, report = fit(model, task, budget_s, max_steps=10_000)
    elapsed = time.perf_counter() - began

    assert elapsed <= budget_s + TOLERANCE_S
    assert report.budget_cut  # 10,000 steps never fit: the clock stopped it
    if budget_s >= 1.0:
        assert report.steps_taken > 0


def test_a_zero_budget_returns_the_source_weights_unchanged() -> None:
    model = conv_model()

    copy, report = fit(model, recolour_task(0), 0.0)

    source = model.state_dict()
    for name, value in copy.state_dict().items():
        if name == "puzzle_emb":
            assert value.shape == (len(VARIANTS), model.config.hidden_size) and not value.any()
        else:
            assert torch.equal(value, source[name]), name
    assert report.steps_taken == 0 and report.folds == [] and report.budget_cut


def test_the_source_model_is_left_untouched() -> None:
    model = conv_model()
    model.q_head.requires_grad_(False)  # a mix of flags, so a restore-to-True would show
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}

    adapted, report = fit(model, recolour_task(0), 1.0)

    assert report.steps_taken > 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    changed = [k for k, v in adapted.state_dict().items() if k != "puzzle_emb" and not torch.equal(v, before[k])]
    assert changed  # the copy did train
    assert not any(p.requires_grad for p in adapted.parameters())  # and comes back ready to serve


# ---------------------------------------------------------------------------------------------------- leave-one-out
def test_leave_one_out_stops_early_when_the_held_out_pair_gets_worse() -> None:
    """Noise outputs: the held-out loss falls while the network learns the grid's shape and the colour mix, then
    rises as it memorises the other pairs' noise, so the best checkpoint is well before the cap."""
    model = conv_model()
    task = recolour_task(3, noise=True)

    _, report = fit(model, task, 6.0, max_steps=60, eval_every=5, probe_share=0.9)

    folds = report.folds
    assert folds and folds[0].curve[-1].step == 60  # the first fold ran to the cap
    assert report.best_checkpoint < 40
    assert_chosen_is_the_best_recorded(report)


def test_the_chosen_count_is_the_best_recorded_checkpoint_scaled_to_all_pairs() -> None:
    model = conv_model()
    task = recolour_task(0, demos=3)

    _, report = fit(model, task, 4.0, max_steps=40, eval_every=10, batch_size=2)

    assert_chosen_is_the_best_recorded(report)
    # batch 2 of 4 fold rows against 6: each step is a third of an epoch, not half, so 6/4 as many steps
    assert report.steps_chosen == round(report.best_checkpoint * 6 / 4)


def assert_chosen_is_the_best_recorded(report: NetworkFitReport) -> None:
    curves = [fold.curve for fold in report.folds]
    reached = min(len(c) for c in curves)
    steps = [c.step for c in curves[0][:reached]]
    exact = [sum(curve[i].exact for curve in curves) for i in range(reached)]
    loss = [sum(curve[i].loss for curve in curves) for i in range(reached)]
    best = max(range(reached), key=lambda i: (exact[i], -loss[i], -steps[i]))
    assert report.best_checkpoint == steps[best]


def test_a_probe_the_budget_cannot_take_far_enough_gives_its_time_to_the_final_fit() -> None:
    """At the first step's cost the first fold could not reach `min_probe_steps` (as on a 32x32 ARC canvas on a
    CPU, where a step costs seconds): the probe stops after that step, and the final fit aims at the cap."""
    model = conv_model()
    task = recolour_task(0, demos=3)

    _, report = fit(model, task, 2.0, max_steps=12, min_probe_steps=10**9)

    assert report.probe_abandoned and report.folds == [] and report.best_checkpoint is None
    assert report.steps_chosen == 12 and report.steps_taken == 12 and report.budget_cut
    _, probed = fit(model, task, 2.0, max_steps=12, eval_every=4)  # the default floor, 8 steps: the probe runs
    assert not probed.probe_abandoned and probed.folds and probed.folds[0].curve[-1].step == 12


def test_the_step_estimate_forgets_the_warm_up_step_once_others_are_timed() -> None:
    """A first step on a new shape can cost several later ones (kernel selection); it must not block steps that
    fit, but it is all there is to go on until a second step is timed."""
    clock = _Clock(60.0)
    clock.record(13.0, 1)
    assert clock.cost(2) == pytest.approx(26.0)
    clock.record(2.0, 1)
    clock.record(3.0, 1)
    assert clock.cost(2) == pytest.approx(6.0)  # the slowest of the later steps, not the warm-up


def test_one_pair_skips_the_probe_and_fits_the_default_count() -> None:
    model = conv_model()
    task = recolour_task(0, demos=1)

    _, report = fit(model, task, 2.0, single_pair_steps=5)

    assert report.folds == [] and report.best_checkpoint is None
    assert report.steps_chosen == 5 and report.steps_taken == 5 and not report.budget_cut


def test_a_conv_model_fits_a_canvas_other_than_its_own() -> None:
    model = conv_model()  # an 8x8 canvas; the task runs on 6x6 (L = 36, not seq_len)
    task = recolour_task(0)
    small = ArcTask(
        tuple(p for p in task.train if max(p.input.shape) <= 5), tuple(p for p in task.test if max(p.input.shape) <= 5)
    )
    assert small.train and small.test

    adapted, report = fit(model, small, 1.0, max_steps=5, single_pair_steps=5)

    assert report.steps_taken > 0
    assert len(answers(adapted, small, side=6)) == len(small.test)


# ---------------------------------------------------------------------------------------------------- predicting
def test_predictions_are_read_where_the_halting_policy_stops_each_row() -> None:
    model = untrained_copy_of(conv_model())
    with torch.no_grad():  # a Q head loud enough that the rows' halting probabilities differ
        model.q_head.weight.normal_(0.0, 2.0)
        model.q_head.bias.zero_()
    inputs = torch.as_tensor(variant_test_inputs(recolour_task(0, tests=4), VARIANTS, SIDE)[0]).long()
    variant_of_row = torch.tensor([0, 1] * (len(inputs) // 2))
    with torch.no_grad():
        carry, trace, trace_probs = model.initial_carry(len(inputs)), [], []
        for _ in range(3):
            out = model.step(carry, inputs, variant_of_row)
            carry = out.carry
            trace.append(out.logits.argmax(-1).numpy())
            trace_probs.append(torch.sigmoid(out.q_halt).numpy())
    threshold = float(np.median(trace_probs[0]))  # about half the rows halt at the first step
    halts_at = [next((s for s in range(3) if trace_probs[s][r] >= threshold), 2) for r in range(len(inputs))]
    assert len(set(halts_at)) > 1  # the case tells "first step over the threshold" from "always the last"

    predicted = predict_variants(model, inputs, variant_of_row, HaltingPolicy(threshold, 3, "q_head"))

    for r, s in enumerate(halts_at):
        assert np.array_equal(predicted.tokens[r], trace[s][r])
        assert predicted.probability[r] == pytest.approx(trace_probs[s][r]) and predicted.steps[r] == s + 1
        assert np.array_equal(predicted.trace[s, r], trace[s][r])


def test_answering_stops_at_its_deadline_after_the_first_step() -> None:
    """A deadline already past: one step runs and every row is read there; none: the whole horizon runs."""
    model = trainable_copy(conv_model(), len(VARIANTS))
    inputs, keys = variant_test_inputs(recolour_task(3), VARIANTS, SIDE)
    variant_of_row = torch.as_tensor([v for _, v in keys])
    policy = HaltingPolicy(0.999, 4, "q_head")
    cut = predict_variants(model, torch.as_tensor(inputs), variant_of_row, policy, deadline=time.perf_counter())
    assert cut.trace.shape[0] == 1 and (cut.steps == 1).all()
    full = predict_variants(model, torch.as_tensor(inputs), variant_of_row, policy)
    assert full.trace.shape[0] == 4
    assert np.array_equal(full.trace[0], cut.trace[0])

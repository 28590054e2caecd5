"""Test-time adaptation: fitting puzzle vectors with the network frozen, and the ARC helpers around it.

The last test trains a tiny ARC model in-test on a family of tasks ("recolour 1 to c", one puzzle id per c) with
one colour held out, then shows that vectors fitted on the held-out task's demonstrations solve its test inputs,
where the average trained embedding does not.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from model.adapt import (
    _token_loss,
    demonstration_batch,
    fit_puzzle_vectors,
    frozen_copy,
    predicted_grid,
    two_attempts,
    variant_test_inputs,
)
from model.puzzles.arc import ArcPair, ArcTask, encode_grid
from model.puzzles.augment import IDENTITY, Variant
from model.trm import TRM
from tests.conftest import tiny_config

SIDE = 6


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def arc_model(side: int = SIDE, seed: int = 0, **overrides: object) -> TRM:
    torch.manual_seed(seed)
    settings: dict[str, object] = {"num_puzzle_ids": 3, **overrides}
    config = tiny_config(family="arc", vocab_size=12, seq_len=side * side, **settings)
    return TRM(config).eval()


def recolour_pair(colour: int, rng: np.random.Generator, side: int = SIDE) -> ArcPair:
    """A random grid (without `colour`, with at least one 1) and the same grid with every 1 turned into `colour`."""
    h, w = (int(x) for x in rng.integers(2, side, 2))
    grid = rng.integers(0, 10, (h, w)).astype(np.uint8)
    grid[grid == colour] = 0
    grid[rng.integers(0, h), rng.integers(0, w)] = 1  # so copying the input is never the answer
    out = grid.copy()
    out[grid == 1] = colour
    return ArcPair(grid, out)


def recolour_task(colour: int, rng: np.random.Generator, demos: int = 5, tests: int = 1) -> ArcTask:
    return ArcTask(
        tuple(recolour_pair(colour, rng) for _ in range(demos)), tuple(recolour_pair(colour, rng) for _ in range(tests))
    )


def as_tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.as_tensor(a).long() for a in arrays]


# ---------------------------------------------------------------------------------------------------- the fit
def test_fit_lowers_the_demonstration_loss_of_a_frozen_model_and_leaves_it_untouched() -> None:
    model = arc_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    task = recolour_task(4, rng, demos=3)
    variants = [IDENTITY, Variant(1), Variant(4)]
    inputs, labels, which = as_tensors(*demonstration_batch(task, variants, SIDE))
    assert inputs.shape == (9, SIDE * SIDE) and which.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    vectors, losses = fit_puzzle_vectors(model, inputs, labels, which, len(variants), steps=40, lr=5e-2)

    assert vectors.shape == (3, model.config.hidden_size) and not vectors.requires_grad
    assert len(losses) == 40
    assert min(losses) < 0.95 * losses[0]  # an untrained network reads little from its prefix: a modest fall
    assert np.mean(losses[-5:]) < np.mean(losses[10:15]) < np.mean(losses[:5])  # falling, not just noise
    # The returned vectors are the best seen: evaluating them gives the lowest loss of the run.
    with torch.no_grad():
        out = model.step(model.initial_carry(len(inputs)), inputs, puzzle_vectors=vectors[which])
    assert float(_token_loss(out.logits, labels)) == pytest.approx(min(losses), rel=1e-4)
    # The network is frozen and given back as it was: same weights, same requires_grad flags.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_fit_stops_on_its_time_budget_and_keeps_the_start_vectors_without_time() -> None:
    model = arc_model()
    task = recolour_task(3, np.random.default_rng(1), demos=2)
    inputs, labels, which = as_tensors(*demonstration_batch(task, [IDENTITY], SIDE))
    init = torch.full((model.config.hidden_size,), 0.25)

    vectors, losses = fit_puzzle_vectors(model, inputs, labels, which, 1, steps=50, time_budget_s=0.0, init=init)
    assert losses == [] and torch.equal(vectors, init[None])

    start = time.perf_counter()
    _, losses = fit_puzzle_vectors(model, inputs, labels, which, 1, steps=100_000, time_budget_s=0.3)
    assert 1 <= len(losses) < 100_000 and time.perf_counter() - start < 2.0


def test_sign_sgd_and_deep_supervision_also_lower_the_loss() -> None:
    model = arc_model()
    task = recolour_task(5, np.random.default_rng(2), demos=3)
    inputs, labels, which = as_tensors(*demonstration_batch(task, [IDENTITY], SIDE))
    _, losses = fit_puzzle_vectors(
        model, inputs, labels, which, 1, steps=25, lr=2e-2, optimizer="sign_sgd", supervision_steps=2
    )
    assert losses[-1] < losses[0] - 0.02 and np.mean(losses[-5:]) < np.mean(losses[:5])


def test_fit_rejects_mismatched_shapes_and_out_of_range_variants() -> None:
    model = arc_model()
    x = torch.zeros(2, SIDE * SIDE, dtype=torch.long)
    with pytest.raises(ValueError, match="must both be"):
        fit_puzzle_vectors(model, x, x[:1], torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"index 0\.\.0"):
        fit_puzzle_vectors(model, x, x, torch.tensor([0, 1]), 1)


def test_frozen_copy_shares_no_storage_and_has_no_trainable_parameter() -> None:
    model = arc_model(num_puzzle_ids=5)
    copy = frozen_copy(model)
    assert copy.puzzle_emb.shape == (1, model.config.hidden_size)  # the big table is not copied
    own = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() not in own and not p.requires_grad for p in copy.parameters())
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randint(0, 12, (2, SIDE * SIDE))
    v = torch.randn(2, model.config.hidden_size)
    with torch.no_grad():
        a = model.step(model.initial_carry(2), x, puzzle_vectors=v)
        b = copy.step(copy.initial_carry(2), x, puzzle_vectors=v)
    torch.testing.assert_close(a.logits, b.logits)


# ---------------------------------------------------------------------------------------------------- ARC helpers
def test_variant_test_inputs_are_test_major_and_predictions_map_back() -> None:
    task = ArcTask(
        (ArcPair(np.array([[1, 2]], np.uint8), np.array([[2, 1]], np.uint8)),),
        (ArcPair(np.array([[1, 2, 3]], np.uint8)), ArcPair(np.array([[4], [5]], np.uint8))),
    )
    variants = [IDENTITY, Variant(1, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9))]
    tokens, keys = variant_test_inputs(task, variants, SIDE)
    assert keys == [(0, 0), (0, 1), (1, 0), (1, 1)] and tokens.shape == (4, SIDE * SIDE)
    # A "prediction" equal to the augmented input maps back to the original input.
    assert predicted_grid(tokens[1], variants[1], SIDE) == [[1, 2, 3]]
    assert predicted_grid(tokens[3], variants[1], SIDE) == [[4], [5]]
    assert predicted_grid(np.zeros(SIDE * SIDE, np.uint8), IDENTITY, SIDE) is None


def test_two_attempts_skip_empty_predictions_and_never_answer_an_empty_grid() -> None:
    a, b = [[1]], [[2]]
    assert two_attempts([(a, 0.1), (None, 0.9), (b, 0.9), (a, 0.2)], (1, 1))[:2] == [a, b]
    assert two_attempts([(a, 0.1), (a, 0.3)], (1, 1)) == [a, a]
    assert two_attempts([(None, 0.5)], (2, 3)) == [[[0, 0, 0], [0, 0, 0]]] * 2


# ---------------------------------------------------------------------------------------------------- end to end
HELD_OUT = 6
TRAINED = [2, 3, 4, 5, 7, 8, 9]


@pytest.fixture(scope="module")
def recolour_model() -> TRM:
    """A tiny ARC model trained (one supervision step from a fresh carry) on "recolour 1 to c", c != HELD_OUT."""
    torch.set_num_threads(1)
    model = arc_model(seed=0, num_puzzle_ids=1 + len(TRAINED), h_cycles=1, halt_max_steps=1)
    model.train()
    rng = np.random.default_rng(0)
    table = torch.zeros(len(TRAINED), model.config.hidden_size, requires_grad=True)
    opt = torch.optim.Adam([{"params": list(model.parameters()), "lr": 3e-3}, {"params": [table], "lr": 1e-2}])
    for _ in range(150):
        task_of = rng.integers(0, len(TRAINED), 32)
        pairs = [recolour_pair(TRAINED[t], rng) for t in task_of]
        x = torch.as_tensor(np.stack([encode_grid(p.input, SIDE) for p in pairs])).long()
        y = torch.as_tensor(np.stack([encode_grid(p.output, SIDE) for p in pairs])).long()  # type: ignore[arg-type]
        out = model.step(model.initial_carry(32), x, puzzle_vectors=table[torch.as_tensor(task_of)])
        loss = _token_loss(out.logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        model.puzzle_emb[1:] = table
    return model.eval()


def solve(model: TRM, task: ArcTask, variants: list[Variant], vectors: torch.Tensor) -> list[list[list[int]]]:
    """One supervision step per (test input, variant), mapped back and voted: attempt_1 of every test input."""
    tokens, keys = variant_test_inputs(task, variants, SIDE)
    which = torch.as_tensor([v for _, v in keys])
    x = torch.as_tensor(tokens).long()
    with torch.no_grad():
        out = model.step(model.initial_carry(len(x)), x, puzzle_vectors=vectors[which])
    preds, probs = out.logits.argmax(-1).numpy(), torch.sigmoid(out.q_halt).numpy()
    answers = []
    for t, pair in enumerate(task.test):
        rows = [i for i, (tt, _) in enumerate(keys) if tt == t]
        candidates = [(predicted_grid(preds[i], variants[keys[i][1]], SIDE), float(probs[i])) for i in rows]
        answers.append(two_attempts(candidates, pair.input.shape)[0])
    return answers


@pytest.mark.slow  # ~15 s on one thread, most of it training the model the test adapts
def test_adapted_vectors_solve_a_task_the_model_never_saw(recolour_model: TRM) -> None:
    model = frozen_copy(recolour_model)
    rng = np.random.default_rng(7)
    task = recolour_task(HELD_OUT, rng, demos=5, tests=12)
    expected = [p.output.tolist() for p in task.test]  # type: ignore[union-attr]
    # Symmetries only: a colour permutation would move the colour the rule starts from (always 1 in this family).
    variants = [IDENTITY, Variant(2)]
    mean = recolour_model.puzzle_emb[1:].mean(0)

    unadapted = solve(model, task, variants, mean.expand(len(variants), -1))
    inputs, labels, which = as_tensors(*demonstration_batch(task, variants, SIDE))
    vectors, losses = fit_puzzle_vectors(model, inputs, labels, which, len(variants), steps=100, lr=3e-2, init=mean)
    adapted = solve(model, task, variants, vectors)

    assert min(losses) < 0.2 * losses[0]
    solved = sum(a == e for a, e in zip(adapted, expected, strict=True))
    before = sum(a == e for a, e in zip(unadapted, expected, strict=True))
    assert solved >= 9 and before <= 2, (solved, before)
    assert all(HELD_OUT in np.asarray(a) for a in adapted)  # a colour no trained embedding ever asked for

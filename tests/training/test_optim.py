"""Optimisers and schedules of the reference recipe: update rules checked against their formulas."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from training.optim import EMA, AdamAtan2, lr_at, sign_sgd_rows


def test_adam_atan2_matches_the_formula_over_three_steps() -> None:
    lr, (b1, b2), wd = 0.01, (0.9, 0.95), 0.5
    start = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    grads = [
        torch.tensor([0.1, -0.2, 0.0, 3.0], dtype=torch.float64),
        torch.tensor([-0.3, -0.1, 0.5, 1.0], dtype=torch.float64),
        torch.tensor([0.2, 0.4, -0.5, -2.0], dtype=torch.float64),
    ]
    param = nn.Parameter(start.clone())
    opt = AdamAtan2([param], lr=lr, betas=(b1, b2), weight_decay=wd)

    p, m, v = start.tolist(), [0.0] * 4, [0.0] * 4
    for t, g in enumerate(grads, start=1):
        param.grad = g.clone()
        opt.step()
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        for i, gi in enumerate(g.tolist()):
            p[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            p[i] -= lr / bc1 * math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(bc2))
        assert param.detach().tolist() == pytest.approx(p, rel=1e-12, abs=1e-15), f"step {t}"


def test_adam_atan2_skips_parameters_without_gradient() -> None:
    param = nn.Parameter(torch.ones(3))
    opt = AdamAtan2([param], lr=0.1, weight_decay=1.0)
    opt.step()
    assert torch.equal(param.detach(), torch.ones(3))  # not even decayed


def test_sign_sgd_rows_sums_duplicate_ids_and_moves_only_touched_rows() -> None:
    table = torch.arange(12, dtype=torch.float32).view(4, 3) / 10
    before = table.clone()
    ids = torch.tensor([1, 3, 1])
    grads = torch.tensor([[1.0, -2.0, 0.5], [0.0, 2.0, -1.0], [-3.0, 1.0, 0.0]])
    lr, wd = 0.1, 0.5

    sign_sgd_rows(table, ids, grads, lr, wd)

    # id 1: [1, -2, 0.5] + [-3, 1, 0] = [-2, -1, 0.5]; the sum's sign differs from the first row's in column 0.
    assert table[1].tolist() == pytest.approx((before[1] * (1 - lr * wd) - lr * torch.tensor([-1, -1, 1.0])).tolist())
    assert table[3].tolist() == pytest.approx((before[3] * (1 - lr * wd) - lr * torch.tensor([0, 1, -1.0])).tolist())
    # Untouched rows neither move nor decay.
    assert torch.equal(table[0], before[0]) and torch.equal(table[2], before[2])


def test_lr_warms_up_linearly_then_stays_constant_with_ratio_one() -> None:
    base, warmup, total = 1e-3, 10, 100
    assert lr_at(0, base, warmup, total, 1.0) == 0.0
    assert lr_at(5, base, warmup, total, 1.0) == pytest.approx(base / 2)
    assert lr_at(9, base, warmup, total, 1.0) == pytest.approx(base * 0.9)
    for step in (10, 11, 55, 99, 100, 500):
        assert lr_at(step, base, warmup, total, 1.0) == pytest.approx(base)


def test_lr_decays_by_cosine_to_the_min_ratio() -> None:
    base, warmup, total, ratio = 1e-3, 10, 110, 0.1
    assert lr_at(10, base, warmup, total, ratio) == pytest.approx(base)
    assert lr_at(60, base, warmup, total, ratio) == pytest.approx(base * (ratio + (1 - ratio) * 0.5))
    assert lr_at(35, base, warmup, total, ratio) == pytest.approx(
        base * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi / 4)))
    )
    assert lr_at(110, base, warmup, total, ratio) == pytest.approx(base * ratio)
    assert lr_at(1000, base, warmup, total, ratio) == pytest.approx(base * ratio)  # stays at the floor
    values = [lr_at(s, base, warmup, total, ratio) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer("table", torch.zeros(4, 3))


def test_ema_update_is_rate_times_shadow_plus_rest_times_param() -> None:
    model = WithBuffer()
    rate = 0.9
    ema = EMA(model, rate)
    assert set(ema.shadow) == {"linear.weight", "linear.bias"}  # trainable parameters only
    w0 = model.linear.weight.detach().clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    ema.update(model)
    expected = rate * w0 + (1 - rate) * (w0 + 1.0)
    assert torch.allclose(ema.shadow["linear.weight"], expected, atol=1e-7)
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    ema.update(model)
    expected = rate * expected + (1 - rate) * (w0 + 2.0)
    assert torch.allclose(ema.shadow["linear.weight"], expected, atol=1e-7)
    # The shadow is a copy: training the live weights does not move it.
    assert not torch.equal(ema.shadow["linear.weight"], model.linear.weight.detach())


def test_ema_state_dict_holds_shadow_weights_and_live_buffers() -> None:
    model = WithBuffer()
    ema = EMA(model, 0.5)
    with torch.no_grad():
        model.linear.weight.add_(2.0)
        model.linear.bias.add_(2.0)
        model.table.fill_(7.0)
        model.frozen.fill_(3.0)
    ema.update(model)

    state = ema.state_dict_for(model)

    assert set(state) == set(model.state_dict())
    assert torch.equal(state["linear.weight"], ema.shadow["linear.weight"])
    assert torch.equal(state["linear.bias"], ema.shadow["linear.bias"])
    assert not torch.equal(state["linear.weight"], model.linear.weight.detach())
    assert torch.equal(state["table"], torch.full((4, 3), 7.0))
    assert torch.equal(state["frozen"], torch.full((2,), 3.0))
    # It loads into a fresh model, and it is a copy, not a view of the live tensors.
    fresh = WithBuffer()
    fresh.load_state_dict(state)
    state["table"].zero_()
    assert torch.equal(model.table, torch.full((4, 3), 7.0))

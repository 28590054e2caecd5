"""Update rules and losses checked against formulas written out by hand."""

import math

import pytest
import torch

from training.losses import act_loss, stablemax_cross_entropy
from training.optim import EMA, AdamAtan2, lr_at, sign_sgd_rows


def test_stablemax_cross_entropy_matches_a_hand_computation():
    logits = torch.tensor([[[2.0, -1.0, 0.0]]])
    s = [3.0, 0.5, 1.0]  # x + 1 for x >= 0, 1 / (1 - x) below
    expected = -math.log(s[0] / sum(s))
    loss = stablemax_cross_entropy(logits, torch.tensor([[0]]))  # label 0 is ignored
    assert loss.item() == 0.0
    loss = stablemax_cross_entropy(torch.cat([logits, logits], 1), torch.tensor([[0, 0]]))
    assert loss.sum().item() == 0.0
    labelled = stablemax_cross_entropy(logits[..., [1, 0, 2]], torch.tensor([[1]]))  # label 1 -> logit 2.0
    assert labelled.item() == pytest.approx(expected)


def test_act_loss_sums_sequence_means_and_trains_halting_on_exact_correctness():
    # Two sequences of 2 tokens, vocab 3; sequence 0 is fully right, sequence 1 has one wrong token.
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]], [[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]]])
    labels = torch.tensor([[1, 2], [1, 2]])
    q_halt = torch.tensor([0.3, -0.2])
    out = act_loss(logits, labels, q_halt)
    per_tok = stablemax_cross_entropy(logits, labels)
    lm = per_tok.mean(-1).sum()
    bce = -(math.log(torch.sigmoid(torch.tensor(0.3)).item()) + math.log(1 - torch.sigmoid(torch.tensor(-0.2)).item()))
    assert out.exact.tolist() == [True, False]
    assert out.lm.item() == pytest.approx(lm.item())
    assert out.total.item() == pytest.approx(lm.item() + 0.5 * bce, rel=1e-6)


def test_adam_atan2_follows_the_reference_update():
    torch.manual_seed(0)
    p = torch.randn(5, requires_grad=True)
    ref = p.detach().clone()
    m = torch.zeros(5)
    v = torch.zeros(5)
    lr, b1, b2, wd = 0.01, 0.9, 0.95, 0.1
    opt = AdamAtan2([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    for t in range(1, 4):
        g = torch.randn(5)
        p.grad = g.clone()
        opt.step()
        ref = ref * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref = ref - lr / (1 - b1**t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - b2**t))
        assert torch.allclose(p.detach(), ref, atol=1e-6)


def test_sign_sgd_sums_duplicate_ids_and_moves_only_touched_rows():
    table = torch.ones(4, 2)
    ids = torch.tensor([1, 1, 3])
    grads = torch.tensor([[1.0, -3.0], [1.0, 1.0], [-2.0, 0.0]])
    sign_sgd_rows(table, ids, grads, lr=0.1, weight_decay=0.5)
    decay = 1 - 0.1 * 0.5
    assert torch.allclose(table[1], torch.tensor([decay - 0.1, decay + 0.1]))  # sums 2 and -2
    assert torch.allclose(table[3], torch.tensor([decay + 0.1, decay]))  # sign(0) = 0
    assert torch.equal(table[0], torch.ones(2)) and torch.equal(table[2], torch.ones(2))


def test_learning_rate_warms_up_then_holds_or_decays():
    assert lr_at(0, 1.0, 10, 100, 1.0) == 0.0
    assert lr_at(5, 1.0, 10, 100, 1.0) == 0.5
    assert lr_at(50, 1.0, 10, 100, 1.0) == 1.0
    assert lr_at(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 10, 100, 0.0) == pytest.approx(0.5)


def test_ema_tracks_parameters_and_keeps_buffers():
    layer = torch.nn.Linear(2, 2)
    layer.register_buffer("table", torch.zeros(3))
    ema = EMA(layer, rate=0.9)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
        layer.table.add_(7.0)
    ema.update(layer)
    state = ema.state_dict_for(layer)
    assert torch.allclose(state["weight"], start + 0.1)
    assert torch.equal(state["table"], torch.full((3,), 7.0))

"""Losses of deep supervision: stable-max cross-entropy, the ACT total and the halting target, against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import act_loss, stablemax_cross_entropy


def s(x: float) -> float:
    """The stable-max map written out: x + 1 above zero, 1 / (1 - x) below."""
    return x + 1 if x >= 0 else 1 / (1 - x)


def stablemax_nll(row: list[float], label: int) -> float:
    return -math.log(s(row[label]) / sum(s(v) for v in row))


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_stablemax_cross_entropy_equals_hand_value() -> None:
    # s([2, -1, 0.5]) = [3, 0.5, 1.5], sum 5: label 2 has p = 0.3.
    logits = torch.tensor([[[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]]])
    labels = torch.tensor([[2, 1]])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64
    assert loss.shape == (1, 2)
    assert loss[0, 0].item() == pytest.approx(-math.log(0.3), rel=1e-12)
    # s([-3, 0, 4]) = [0.25, 1, 5]: label 1 has p = 1 / 6.25.
    assert loss[0, 1].item() == pytest.approx(math.log(6.25), rel=1e-12)


def test_stablemax_gradient_is_finite_and_exact_where_a_logit_is_one() -> None:
    # bf16 logits land on exactly 1.0 all the time; there 1 / (1 - x) divides by zero in the branch not taken.
    logits = torch.tensor([[[1.0, -1.0, 0.5], [1.0, 1.0, -2.0]]], dtype=torch.bfloat16, requires_grad=True)
    labels = torch.tensor([[1, 2]])
    stablemax_cross_entropy(logits, labels).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # d/dx_j of -log(s_label / sum s) = s'(x_j) / sum s - [j = label] s'(x_label) / s_label, s' = 1 above zero.
    row, label = [1.0, -1.0, 0.5], 1
    total = sum(s(v) for v in row)  # 2 + 0.5 + 1.5
    slope = [1.0, 1 / (1 - row[1]) ** 2, 1.0]
    expected = [slope[j] / total - (slope[j] / s(row[j]) if j == label else 0.0) for j in range(3)]
    assert logits.grad[0, 0].float().tolist() == pytest.approx(expected, rel=1e-2)


def test_stablemax_ignored_labels_contribute_nothing() -> None:
    logits = torch.randn(2, 5, 4)
    labels = torch.tensor([[0, 1, 0, 3, 0], [0, 0, 0, 0, 0]])
    loss = stablemax_cross_entropy(logits, labels)
    assert torch.all(loss[labels == 0] == 0)
    assert torch.all(loss[labels != 0] > 0)
    # Changing the logits at ignored positions changes nothing.
    other = logits.clone()
    other[labels == 0] = 100.0
    assert torch.equal(stablemax_cross_entropy(other, labels), loss)


def test_act_loss_total_equals_hand_computed_value() -> None:
    logits_rows = [
        [[1.0, 2.0, -1.0, 0.0], [0.5, -0.5, 3.0, 1.0], [-2.0, 1.0, 0.0, 0.0]],
        [[0.0, 0.0, 1.0, -3.0], [2.0, 1.0, 1.0, 1.0], [1.5, -1.0, 2.5, 0.0]],
    ]
    labels_rows = [[1, 2, 0], [3, 0, 0]]  # sequence 0 has 2 scored tokens, sequence 1 has 1
    q_rows = [-1.5, 0.7]
    logits = torch.tensor(logits_rows, requires_grad=True)
    labels = torch.tensor(labels_rows)
    q_halt = torch.tensor(q_rows, requires_grad=True)

    loss = act_loss(logits, labels, q_halt)

    lm = 0.0
    halt = 0.0
    for b in range(2):
        scored = [t for t in range(3) if labels_rows[b][t] != 0]
        lm += sum(stablemax_nll(logits_rows[b][t], labels_rows[b][t]) for t in scored) / len(scored)
        exact = all(max(range(4), key=lambda v, t=t: logits_rows[b][t][v]) == labels_rows[b][t] for t in scored)
        halt += bce(q_rows[b], float(exact))
    assert loss.lm.item() == pytest.approx(lm, rel=1e-9)
    assert loss.q_halt.item() == pytest.approx(halt, rel=1e-6)
    assert loss.total.item() == pytest.approx(lm + 0.5 * halt, rel=1e-6)
    loss.total.backward()  # the total is what gets differentiated
    assert logits.grad is not None and q_halt.grad is not None


def test_halting_target_is_exact_correctness() -> None:
    vocab = 5
    labels = torch.tensor([[2, 3, 0, 4], [2, 3, 1, 4]])
    answers = torch.tensor([[2, 3, 1, 4], [2, 3, 1, 1]])  # row 0: only the ignored position differs; row 1: one wrong
    logits = torch.nn.functional.one_hot(answers, vocab).float() * 3.0
    q_halt = torch.tensor([0.3, 0.3], requires_grad=True)

    loss = act_loss(logits, labels, q_halt)

    assert loss.exact.tolist() == [True, False]
    assert loss.correct_tokens.tolist() == [3, 3]
    assert loss.valid_tokens.tolist() == [3, 4]
    assert loss.q_halt.item() == pytest.approx(bce(0.3, 1.0) + bce(0.3, 0.0), rel=1e-6)
    # d total / d q = 0.5 * (sigmoid(q) - target): pushed up for the right answer, down for the wrong one.
    loss.total.backward()
    p = 1 / (1 + math.exp(-0.3))
    assert q_halt.grad is not None
    assert q_halt.grad.tolist() == pytest.approx([0.5 * (p - 1), 0.5 * p], rel=1e-6)

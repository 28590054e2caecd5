"""The size-agnostic `conv` mixer: one set of weights on any H x W, exact translation equivariance, locality,
a size-free Q head, ONNX with dynamic H and W; and the paper's mixers untouched by it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import TRMConfig
from model.export_onnx import check_export, export_step
from model.puzzles.maze import GOAL, OPEN, START, WALL
from model.trm import TRM
from tests.conftest import tiny_config


def conv_config(**overrides: object) -> TRMConfig:
    base: dict[str, object] = dict(
        family="maze", vocab_size=6, seq_len=64, mixer="conv", pos_encodings="none", puzzle_emb_len=2
    )
    base.update(overrides)
    return tiny_config(**base)


def maze_canvas(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(1, height, width) tokens: a random maze-like patch in the top-left, walls elsewhere (the seam included)."""
    grid = torch.full((1, height, width), WALL, dtype=torch.long)
    patch = torch.randint(WALL, OPEN + 1, (7, 9), generator=generator)
    patch[0, 0], patch[-1, -1] = START, GOAL
    grid[0, :7, :9] = patch
    return grid


def run(model: TRM, inputs: torch.Tensor, steps: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    carry = model.initial_carry(len(inputs), num_tokens=inputs[0].numel())
    for _ in range(steps):
        out = model.step(carry, inputs)
        carry = out.carry
    return out.logits, out.q_halt


@torch.no_grad()
def test_one_set_of_weights_runs_on_two_sizes_and_a_rectangle() -> None:
    model = TRM(conv_config()).eval()
    for height, width in [(8, 8), (13, 13), (6, 11)]:
        inputs = torch.randint(1, 5, (2, height, width))
        logits, q_halt = run(model, inputs)
        assert logits.shape == (2, height * width, 6) and q_halt.shape == (2,)
        assert torch.isfinite(logits).all()


@torch.no_grad()
def test_flat_square_inputs_equal_the_same_grid_given_as_h_by_w() -> None:
    model = TRM(conv_config()).eval()
    inputs = torch.randint(1, 5, (2, 9, 9))
    assert torch.equal(run(model, inputs)[0], run(model, inputs.flatten(1))[0])
    with pytest.raises(ValueError, match="not a square"):
        model.step(model.initial_carry(1, num_tokens=10), torch.ones(1, 10, dtype=torch.long))


@torch.no_grad()
def test_a_maze_moved_inside_a_bigger_wall_canvas_gives_the_moved_answer_for_any_weights() -> None:
    """Exact by construction: the grid is a torus and no token knows its position, so moving the maze inside the
    wall canvas is a cyclic shift, which every layer commutes with; the pooled prefix does not see the shift."""
    generator = torch.Generator().manual_seed(3)
    for seed in range(3):
        torch.manual_seed(seed)
        model = TRM(conv_config()).eval()
        canvas = maze_canvas(14, 17, generator)
        moved = torch.roll(canvas, shifts=(4, 6), dims=(1, 2))  # still inside the canvas: walls wrap onto walls
        logits, q_halt = run(model, canvas)
        logits_moved, q_moved = run(model, moved)
        expected = torch.roll(logits.view(1, 14, 17, 6), shifts=(4, 6), dims=(1, 2)).reshape(1, -1, 6)
        torch.testing.assert_close(logits_moved, expected, rtol=0, atol=1e-5)
        assert torch.equal(logits_moved.argmax(-1), expected.argmax(-1))
        torch.testing.assert_close(q_moved, q_halt, rtol=0, atol=1e-5)


@torch.no_grad()
def test_one_step_only_sees_a_bounded_neighbourhood_of_each_cell() -> None:
    """T=1, n=1, 2 blocks: z reads x within 2 cells, y reads z within 2 more; farther cells cannot change."""
    model = TRM(conv_config(h_cycles=1, l_cycles=1, num_layers=2)).eval()
    inputs = torch.full((1, 15, 15), OPEN, dtype=torch.long)
    changed = inputs.clone()
    changed[0, 7, 7] = WALL
    a, b = (model.step(model.initial_carry(1, num_tokens=225), x).logits.view(15, 15, 6) for x in (inputs, changed))
    moved = (a - b).abs().amax(-1) > 0
    rows, cols = torch.nonzero(moved, as_tuple=True)
    assert moved[7, 7] and (rows - 7).abs().max() <= 4 and (cols - 7).abs().max() <= 4


def test_q_head_learns_from_the_pooled_grid_summary() -> None:
    """The Q head reads prefix slot 0, which the grid reaches only through the pooled (mean, max) summary."""
    model = TRM(conv_config())
    torch.nn.init.normal_(model.q_head.weight)  # zero at init (as the reference), which would stop every gradient
    inputs = torch.randint(1, 5, (2, 8, 8))
    out = model.step(model.initial_carry(2, num_tokens=64), inputs)
    out.q_halt.sum().backward()
    assert all(block.local is not None and block.local.pool_proj.weight.grad is not None for block in model.net.layers)
    assert model.embed_tokens.weight.grad is not None and model.embed_tokens.weight.grad.abs().sum() > 0


def test_config_needs_no_positions_and_a_square_canvas() -> None:
    with pytest.raises(ValueError, match="pos_encodings 'none'"):
        conv_config(pos_encodings="rope")
    with pytest.raises(ValueError, match="square seq_len"):
        conv_config(seq_len=60)
    with pytest.raises(ValueError, match="'conv'"):
        conv_config(mixer="conv2d")


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_paper_mixers_build_the_same_weights_and_see_no_grid(mixer: str) -> None:
    """The conv mixer adds modules only to its own variant: the paper variants draw the same random numbers."""
    config = tiny_config(mixer=mixer, pos_encodings="rope" if mixer == "attention" else "none")
    torch.manual_seed(0)
    model = TRM(config)
    assert model.grid_of(torch.zeros(1, config.seq_len, dtype=torch.long)) is None
    assert not any("local" in name for name, _ in model.named_parameters())


def test_onnx_export_has_dynamic_h_and_w_and_matches_torch(tmp_path: Path) -> None:
    model = TRM(conv_config(h_cycles=1, l_cycles=2))
    path = export_step(model, tmp_path / "conv.onnx")  # traced on a 5x7 grid
    assert check_export(model, path, batch_sizes=(1, 3), steps=3, grids=[(9, 9), (6, 13)]) < 1e-4
    with pytest.raises(ValueError, match="dynamo"):
        export_step(model, tmp_path / "legacy.onnx", exporter="torchscript")


@torch.no_grad()
def test_the_arc_broadcast_keeps_translation_exact_and_lets_the_task_vector_reach_every_cell() -> None:
    """`conv_broadcast` (ARC): a moved grid still gives the moved answer, and unlike the maze mixer a different
    puzzle vector changes the answer of every cell, however far from the prefix."""
    config = conv_config(family="arc", vocab_size=12, conv_broadcast=True, puzzle_emb_len=1)
    torch.manual_seed(0)
    model = TRM(config).eval()
    grid = torch.zeros((1, 12, 12), dtype=torch.long)
    grid[0, :5, :7] = torch.randint(2, 12, (5, 7))
    moved = torch.roll(grid, shifts=(3, 4), dims=(1, 2))

    def answer(inputs: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        carry = model.initial_carry(1, num_tokens=inputs[0].numel())
        for _ in range(2):
            out = model.step(carry, inputs, puzzle_vectors=vector)
            carry = out.carry
        return out.logits.view(1, 12, 12, 12)

    vector = torch.randn(1, config.hidden_size)
    expected = torch.roll(answer(grid, vector), shifts=(3, 4), dims=(1, 2))
    torch.testing.assert_close(answer(moved, vector), expected, rtol=0, atol=1e-5)
    other = answer(grid, torch.randn(1, config.hidden_size))
    assert ((other - answer(grid, vector)).abs().amax(-1) > 1e-4).all()
    plain = TRM(conv_config(family="arc", vocab_size=12, puzzle_emb_len=1)).eval()
    assert not any("broadcast" in name for name in plain.state_dict())  # the maze mixer gains no weights


def test_broadcast_needs_the_conv_mixer() -> None:
    with pytest.raises(ValueError, match="conv_broadcast needs mixer 'conv'"):
        TRMConfig(conv_broadcast=True)

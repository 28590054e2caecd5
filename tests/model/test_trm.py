import pytest
import torch

from model.layers import swiglu_width, trunc_normal_
from model.trm import TRM, count_trainable_parameters
from tests.conftest import tiny_config

FAMILIES = [
    {"family": "sudoku", "vocab_size": 11, "seq_len": 81},
    {"family": "maze", "vocab_size": 6, "seq_len": 100},
    {"family": "arc", "vocab_size": 12, "seq_len": 100, "num_puzzle_ids": 7},
]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f["family"])
@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_step_shapes_for_every_family(family, mixer):
    config = tiny_config(**family, mixer=mixer, pos_encodings="rope" if mixer == "attention" else "none")
    model = TRM(config)
    carry = model.initial_carry(3)
    inputs = torch.randint(0, config.vocab_size, (3, config.seq_len))
    out = model.step(carry, inputs, torch.zeros(3, dtype=torch.long))
    assert out.logits.shape == (3, config.seq_len, config.vocab_size)
    assert out.q_halt.shape == (3,) and out.q_continue.shape == (3,)
    assert out.carry.y.shape == (3, config.total_len, config.hidden_size)
    assert out.q_halt.dtype == torch.float32


def test_carry_comes_back_detached_and_logits_carry_gradient():
    model = TRM(tiny_config())
    out = model.step(model.initial_carry(2), torch.randint(0, 11, (2, 16)))
    assert not out.carry.y.requires_grad and not out.carry.z.requires_grad
    assert out.logits.requires_grad


def test_gradients_reach_only_the_last_n_plus_one_network_calls():
    config = tiny_config(h_cycles=3, l_cycles=2)
    model = TRM(config)
    calls: list[bool] = []
    model.net.register_forward_hook(lambda mod, inp, out: calls.append(out.requires_grad))
    out = model.step(model.initial_carry(2), torch.randint(0, 11, (2, 16)))
    per_recursion = config.l_cycles + 1
    assert len(calls) == config.h_cycles * per_recursion
    assert calls == [False] * (len(calls) - per_recursion) + [True] * per_recursion
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.net.parameters())


def test_same_input_gives_same_output():
    model = TRM(tiny_config()).eval()
    inputs = torch.randint(0, 11, (2, 16))
    a = model.step(model.initial_carry(2), inputs)
    b = model.step(model.initial_carry(2), inputs)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.carry.z, b.carry.z)


def test_heads_and_tables_start_like_the_reference():
    model = TRM(tiny_config(num_puzzle_ids=5))
    assert torch.all(model.q_head.weight == 0) and torch.all(model.q_head.bias == -5)
    assert torch.all(model.puzzle_emb == 0) and model.puzzle_emb.shape == (5, 32)
    names = {n for n, _ in model.named_parameters()}
    assert "puzzle_emb" not in names and "y_init" not in names  # buffers, not trained by the main optimizer
    assert {"puzzle_emb", "y_init", "z_init"} <= set(model.state_dict())


def test_initial_states_are_fixed_truncated_normals_broadcast_to_every_position():
    model = TRM(tiny_config())
    carry = model.initial_carry(2)
    assert torch.equal(carry.y[1, 7], model.y_init) and torch.equal(carry.z[0, 0], model.z_init)
    big = trunc_normal_(torch.empty(200_000))
    assert abs(float(big.std()) - 1.0) < 0.01
    assert 2.25 < float(big.abs().max()) <= 2.2737 + 1e-4  # cut at +-2 std units of the narrowed normal


def test_reset_only_touches_masked_slots():
    model = TRM(tiny_config())
    out = model.step(model.initial_carry(3), torch.randint(0, 11, (3, 16)))
    reset = model.reset(out.carry, torch.tensor([True, False, True]))
    assert torch.equal(reset.y[0, 3], model.y_init) and torch.equal(reset.y[1], out.carry.y[1])


def test_puzzle_vectors_replace_table_rows():
    model = TRM(tiny_config(num_puzzle_ids=3)).eval()
    with torch.no_grad():
        model.puzzle_emb[2] = torch.randn(32)
    inputs = torch.randint(0, 11, (1, 16))
    by_id = model.step(model.initial_carry(1), inputs, torch.tensor([2]))
    by_vec = model.step(model.initial_carry(1), inputs, puzzle_vectors=model.puzzle_emb[2:3])
    assert torch.allclose(by_id.logits, by_vec.logits)


def test_swiglu_width_rounds_up_to_multiples_of_256():
    assert swiglu_width(512, 4.0) == 1536
    assert swiglu_width(97, 4.0) == 512
    assert swiglu_width(128, 2.0) == 256


def test_learned_positions_add_a_table():
    model = TRM(tiny_config(pos_encodings="learned"))
    assert model.embed_pos is not None and model.embed_pos.weight.shape == (20, 32)
    assert count_trainable_parameters(model) > count_trainable_parameters(TRM(tiny_config(pos_encodings="none")))


def test_compiling_on_a_cpu_without_a_compiler_fails_before_any_work(tmp_path, monkeypatch):
    model = TRM(tiny_config())
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ here
    with pytest.raises(RuntimeError, match=r"no g\+\+ on PATH.*server: no --compile"):
        model.compile_networks()
    assert not any(name.startswith("_orig_mod") or "._orig_mod" in name for name, _ in model.named_parameters())

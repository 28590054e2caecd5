import torch

from model.factory import build_model
from model.hrm import HRM
from model.trm import count_trainable_parameters
from tests.conftest import tiny_config


def hrm_config(**overrides):
    return tiny_config(arch="hrm", puzzle_emb_len=1, no_act_continue=False, **overrides)


def test_hrm_paper_preset_has_the_reference_parameter_count():
    config = hrm_config(hidden_size=512, num_heads=8, expansion=4.0, num_layers=4, seq_len=81)
    assert count_trainable_parameters(build_model(config)) == 27_275_266


def test_gradients_reach_only_the_last_l_and_last_h_calls():
    config = hrm_config(h_cycles=3, l_cycles=2)
    model = HRM(config)
    calls: list[tuple[str, bool]] = []
    model.l_net.register_forward_hook(lambda m, i, o: calls.append(("L", o.requires_grad)))
    model.h_net.register_forward_hook(lambda m, i, o: calls.append(("H", o.requires_grad)))
    out = model.step(model.initial_carry(2), torch.randint(0, 11, (2, 16)))
    expected = (["L"] * config.l_cycles + ["H"]) * config.h_cycles
    assert [name for name, _ in calls] == expected
    assert [grad for _, grad in calls] == [False] * (len(expected) - 2) + [True, True]
    out.logits.sum().backward()
    assert all(p.grad is not None for p in model.h_net.parameters())
    assert all(p.grad is not None for p in model.l_net.parameters())


def test_hrm_halts_when_halt_beats_continue():
    model = HRM(hrm_config())
    q_halt, q_cont = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.0, -2.0, 2.0])
    assert (model.halting_logit(q_halt, q_cont) > 0).tolist() == [True, True, False]


def test_config_json_names_the_architecture(tmp_path):
    from model.checkpoint import load_checkpoint, save_checkpoint

    model = HRM(hrm_config())
    save_checkpoint(model, model.config, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert isinstance(loaded.model, HRM) and loaded.config.arch == "hrm"


def test_q_continue_target_matches_a_hand_computed_example():
    from training.losses import q_continue_target

    next_halt = torch.tensor([2.0, -1.0, 0.0])
    next_cont = torch.tensor([1.0, 3.0, 5.0])
    is_last = torch.tensor([False, False, True])
    expected = torch.sigmoid(torch.tensor([2.0, 3.0, 0.0]))  # max, max, halt only at the last step
    assert torch.allclose(q_continue_target(next_halt, next_cont, is_last), expected)


def test_hrm_trains_through_the_shared_loop(tmp_path):
    import numpy as np

    from training.config import load_preset
    from training.data.dataset import PuzzleSet
    from training.loop import Trainer

    preset = load_preset(
        "sudoku-4x4-tiny",
        ["model.arch='hrm'", "model.puzzle_emb_len=1", "model.no_act_continue=false", "train.ema=false"],
    )
    rng = np.random.default_rng(0)
    data = PuzzleSet(
        rng.integers(1, 6, (64, 16)).astype(np.uint8),
        rng.integers(2, 6, (64, 16)).astype(np.uint8),
        np.zeros(64, np.int32),
        np.arange(64, dtype=np.int32),
    )
    trainer = Trainer(preset, data, None, tmp_path)
    assert isinstance(trainer.model, HRM)
    first = trainer.train_step()
    for _ in range(3):
        last = trainer.train_step()
    assert np.isfinite(first["lm_loss"]) and np.isfinite(last["lm_loss"])


def test_compile_networks_compiles_both_hrm_networks_and_keeps_the_step():
    # Training and the server compile through this method; HRM has no `net`, so a hard-coded `model.net` broke it.
    model = HRM(hrm_config()).eval()
    inputs = torch.randint(0, 11, (2, 16))
    with torch.no_grad():
        before = model.step(model.initial_carry(2), inputs).logits
        model.compile_networks(backend="eager")
        after = model.step(model.initial_carry(2), inputs).logits
    assert all(isinstance(getattr(model, n), torch._dynamo.eval_frame.OptimizedModule) for n in ("l_net", "h_net"))
    assert torch.allclose(before, after, atol=1e-6)

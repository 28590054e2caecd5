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

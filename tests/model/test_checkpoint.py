import json

import pytest
import torch
import yaml

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.convert import convert
from model.trm import TRM
from tests.conftest import tiny_config


def _outputs(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, model.config.vocab_size, (2, model.config.seq_len), generator=g)
    with torch.no_grad():
        out = model.step(model.initial_carry(2), inputs)
    return out.logits, out.q_halt


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = TRM(tiny_config(num_puzzle_ids=3)).eval()
    with torch.no_grad():
        model.puzzle_emb.normal_()
    save_checkpoint(model, model.config, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == model.config
    for a, b in zip(_outputs(model), _outputs(loaded.model), strict=True):
        assert torch.equal(a, b)
    assert len(loaded.sha256) == 64


def test_truncated_weights_fail_naming_the_file(tmp_path):
    model = TRM(tiny_config())
    save_checkpoint(model, model.config, tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path)


def test_corrupted_header_fails_naming_the_file(tmp_path):
    model = TRM(tiny_config())
    save_checkpoint(model, model.config, tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not json!!!!"
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(tmp_path)


def test_config_weights_mismatch_names_the_tensor(tmp_path):
    model = TRM(tiny_config())
    save_checkpoint(model, model.config, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.*' has shape"):
        load_checkpoint(tmp_path)


def test_missing_tensor_is_reported(tmp_path):
    model = TRM(tiny_config())
    save_checkpoint(model, model.config, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["pos_encodings"] = "learned"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing tensor .embed_pos\.weight."):
        load_checkpoint(tmp_path)


def test_pickle_checkpoints_are_refused(tmp_path):
    from model.checkpoint import load_state

    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"only \.safetensors"):
        load_state(tmp_path / "model.pt")


def _reference_state(model: TRM, compiled: bool) -> dict[str, torch.Tensor]:
    """Lay our weights out with the reference's key names, as its pretrain.py would save them."""
    prefix = ("_orig_mod." if compiled else "") + "model.inner."
    ours_to_ref = {
        "embed_tokens.weight": "embed_tokens.embedding_weight",
        "puzzle_emb": "puzzle_emb.weights",
        "y_init": "H_init",
        "z_init": "L_init",
    }
    state = {}
    for key, tensor in model.state_dict().items():
        ref = ours_to_ref.get(key, key.replace("net.layers.", "L_level.layers.").replace(".attn.", ".self_attn."))
        state[prefix + ref] = tensor.to(torch.bfloat16) if key in ("y_init", "z_init") else tensor
    return state


@pytest.mark.parametrize("mixer", ["attention", "mlp"])
def test_converting_a_reference_state_dict_reproduces_the_model(tmp_path, mixer):
    # Attention weights do not reveal seq_len, so the converter takes it from the task (sudoku = 81).
    seq_len = 81 if mixer == "attention" else 16
    config = tiny_config(
        mixer=mixer, pos_encodings="rope" if mixer == "attention" else "none", num_puzzle_ids=2, seq_len=seq_len
    )
    model = TRM(config).eval()
    src = tmp_path / "run" / "step_100"
    src.parent.mkdir()
    torch.save(_reference_state(model, compiled=True), src)
    arch = {
        "H_cycles": config.h_cycles,
        "L_cycles": config.l_cycles,
        "L_layers": config.num_layers,
        "H_layers": 0,
        "hidden_size": 32,
        "num_heads": 4,
        "expansion": 2.0,
        "puzzle_emb_len": 4,
        "pos_encodings": config.pos_encodings,
        "mlp_t": mixer == "mlp",
        "halt_max_steps": 4,
        "halt_exploration_prob": 0.1,
        "name": "recursive_reasoning.trm",
    }
    (src.parent / "all_config.yaml").write_text(
        yaml.safe_dump({"arch": arch, "data_paths": ["data/sudoku-extreme-1k-aug-1000"]})
    )
    convert(src, tmp_path / "out")
    loaded = load_checkpoint(tmp_path / "out").model
    assert loaded.config.seq_len == seq_len and loaded.config.mixer == mixer
    # H_init/L_init went through bf16 in the reference file, so compare against a model with those values.
    with torch.no_grad():
        model.y_init.copy_(model.y_init.to(torch.bfloat16).float())
        model.z_init.copy_(model.z_init.to(torch.bfloat16).float())
    for a, b in zip(_outputs(model), _outputs(loaded), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_convert_reports_a_malformed_config_or_an_empty_step_file_in_one_line(tmp_path, caplog):
    from model.convert import main

    def error() -> str:
        messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        caplog.clear()
        assert len(messages) == 1 and "\n" not in messages[0] and "Traceback" not in messages[0]
        return messages[0]

    src = tmp_path / "step_1"
    torch.save({"model.inner.embed_tokens.embedding_weight": torch.zeros(2, 2)}, src)
    (tmp_path / "all_config.yaml").write_text("arch: {H_cycles: 3\n  L_cycles: [\n")
    assert main([str(src), str(tmp_path / "out")]) == 1
    assert "all_config.yaml: not valid YAML at line 2" in error()

    (tmp_path / "all_config.yaml").write_text("- just\n- a list\n")
    assert main([str(src), str(tmp_path / "out")]) == 1
    assert "expected a mapping of settings, found list" in error()

    (tmp_path / "all_config.yaml").write_text(yaml.safe_dump({"arch": {}, "data_paths": ["sudoku"]}))
    src.write_bytes(b"")
    assert main([str(src), str(tmp_path / "out")]) == 1
    assert "the file is empty (0 bytes)" in error()

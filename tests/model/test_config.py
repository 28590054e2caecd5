import json

import pytest

from model.config import TRMConfig
from tests.conftest import tiny_config


def test_config_round_trips_through_config_json(tmp_path):
    config = tiny_config(mixer="mlp", pos_encodings="none", training={"preset": "x", "data": {"n": 3}})
    config.save(tmp_path / "config.json")
    assert TRMConfig.load(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["mixer"] == "mlp"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"family": "chess"}, "family"),
        ({"hidden_size": 30, "num_heads": 4}, "divisible"),
        ({"h_cycles": 0}, "h_cycles"),
        ({"puzzle_emb_len": 0}, "puzzle_emb_len"),
        ({"mixer": "conv"}, "mixer"),
        ({"halt_exploration_prob": 1.5}, "halt_exploration_prob"),
    ],
)
def test_invalid_config_is_rejected_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_unknown_key_in_config_json_names_the_file(tmp_path):
    data = tiny_config().to_dict() | {"hiden_size": 3}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"config\.json.*hiden_size"):
        TRMConfig.load(path)

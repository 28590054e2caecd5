"""Paper presets build exactly the reference models; presets are typed and overridable."""

import json

import pytest

from training import run
from training.config import load_preset

PAPER = {
    "sudoku-extreme-mlp": 5_028_866,
    "sudoku-extreme-att": 6_828_034,
    "maze-hard": 6_822_914,
    "arc1": 6_829_058,
    "arc2": 6_829_058,
    "hrm-sudoku-extreme": 27_275_266,
}


@pytest.mark.parametrize(("name", "count"), PAPER.items())
def test_paper_preset_dry_run_reports_the_reference_parameter_count(name, count, capsys):
    assert run.main(["--preset", name, "--dry-run"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["trainable_parameters"] == count


def test_paper_recipes_carry_the_reference_schedule():
    mlp = load_preset("sudoku-extreme-mlp")
    assert (mlp.model.h_cycles, mlp.model.l_cycles, mlp.model.mixer) == (3, 6, "mlp")
    assert (mlp.train.lr, mlp.train.global_batch_size, mlp.train.lr_warmup_steps, mlp.train.ema_rate) == (
        1e-4,
        768,
        2000,
        0.999,
    )
    arc = load_preset("arc1")
    assert (arc.model.l_cycles, arc.train.puzzle_emb_lr, arc.train.weight_decay) == (4, 1e-2, 0.1)


def test_overrides_apply_and_unknown_keys_are_rejected():
    preset = load_preset("sudoku-cpu", ["train.lr=3e-4", "model.h_cycles=3"])
    assert preset.train.lr == 3e-4 and preset.model.h_cycles == 3
    with pytest.raises(ValueError, match="unknown keys"):
        load_preset("sudoku-cpu", ["train.learning_rate=1"])
    with pytest.raises(ValueError, match="no preset"):
        load_preset("sudoku-nope")

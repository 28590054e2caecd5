"""Every checkpoint under weights/ loads, runs, and is described by a card whose command is really its command.

The shipped weights are what a fresh install serves, so a broken file, a card that names the wrong preset or a
preset edited after training (the card's command would no longer reproduce the checkpoint) must fail here.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from model.checkpoint import WEIGHTS_FILE, Checkpoint, load_checkpoint, read_card_metrics
from training.config import load_preset

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = sorted(p for p in WEIGHTS.iterdir() if p.is_dir())
FROM_DATA = {"training", "num_puzzle_ids"}  # written by the run from its dataset, not taken from the preset
MAX_BYTES = 20 * 1024 * 1024  # the training issue's limit per checkpoint


@cache
def shipped(directory: Path) -> Checkpoint:
    return load_checkpoint(directory)


def test_the_three_families_ship_a_model() -> None:
    families = {shipped(d).config.family for d in SHIPPED}
    assert {"sudoku", "maze", "arc"} <= families


@pytest.mark.parametrize("directory", SHIPPED, ids=[d.name for d in SHIPPED])
def test_a_shipped_checkpoint_matches_its_card_and_preset(directory: Path) -> None:
    ckpt = shipped(directory)
    assert (directory / WEIGHTS_FILE).stat().st_size < MAX_BYTES
    training = ckpt.config.training
    assert isinstance(training, dict)
    preset = load_preset(str(training["preset"]), list(training.get("overrides", [])))
    expected = {k: v for k, v in preset.model.to_dict().items() if k not in FROM_DATA}
    assert {k: v for k, v in ckpt.config.to_dict().items() if k not in FROM_DATA} == expected
    card = (directory / "README.md").read_text()
    assert f"--preset {preset.name}" in card
    assert "## Known weaknesses" in card
    assert read_card_metrics(directory), "metrics.json holds the card's measured figures"


@pytest.mark.parametrize("directory", SHIPPED, ids=[d.name for d in SHIPPED])
def test_a_shipped_checkpoints_preset_trains_in_its_precision(directory: Path) -> None:
    """A run records the precision it trained in; older ones only by an override, and without one were fp32.
    A run resumed on other machines records the steps of each precision, and the one most steps ran in counts.

    `auto` means bf16 on a CPU with bf16 hardware, so a preset behind an fp32 checkpoint must pin float32,
    and `auto` is allowed only behind a bf16 one (on a CPU without bf16 it then trains in fp32, as the card says).
    """
    training = shipped(directory).config.training
    assert isinstance(training, dict)
    overrides = dict(o.split("=", 1) for o in training.get("overrides", []))
    trained_in = training.get("dtype", overrides.get("train.dtype", "float32"))
    if steps := training.get("steps_by_dtype"):
        trained_in = max(steps, key=steps.get)
    in_preset = load_preset(str(training["preset"]), []).train.dtype
    assert in_preset == trained_in or (in_preset, trained_in) == ("auto", "bfloat16"), (in_preset, trained_in)


@pytest.mark.parametrize("directory", SHIPPED, ids=[d.name for d in SHIPPED])
def test_a_shipped_checkpoint_runs_a_step_with_finite_outputs(directory: Path) -> None:
    model = shipped(directory).model
    tokens = torch.randint(1, model.config.vocab_size, (2, model.config.seq_len))
    with torch.inference_mode():
        out = model.step(model.initial_carry(2), tokens, torch.zeros(2, dtype=torch.long))
        out = model.step(out.carry, tokens, torch.zeros(2, dtype=torch.long))
    assert out.logits.shape == (2, model.config.seq_len, model.config.vocab_size)
    halting = model.halting_logit(out.q_halt, out.q_continue)
    assert torch.isfinite(out.logits).all() and torch.isfinite(halting).all()

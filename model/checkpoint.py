"""Checkpoint directories: `config.json` + `model.safetensors` (+ the model card `README.md`).

Weights load only from safetensors (tensors, never pickles), strictly: a missing, unexpected or mis-shaped key
fails with the file and the first mismatch named, because a silently half-loaded model gives wrong answers
that look plausible.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from model.config import TRMConfig
from model.factory import build_model
from model.trm import TRM

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on CPU) and what describes it."""

    name: str
    path: Path
    config: TRMConfig
    model: TRM
    sha256: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(model: nn.Module, config: TRMConfig, directory: str | Path) -> Path:
    """Write config.json and model.safetensors (fp32 tensors, contiguous) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory / CONFIG_FILE)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "arch": config.arch})
    return directory


def load_state(weights: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning every failure into a CheckpointError that names the file."""
    if weights.suffix != ".safetensors":
        raise CheckpointError(f"{weights}: only .safetensors checkpoints are loaded (pickles can run code)")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: file not found")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strictly copy `state` into `model`; the first missing, unexpected or mis-shaped key is an error."""
    expected = model.state_dict()
    for key in expected:
        if key not in state:
            raise CheckpointError(f"{source}: missing tensor {key!r} (expected shape {list(expected[key].shape)})")
    for key, tensor in state.items():
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected tensor {key!r} (shape {list(tensor.shape)})")
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {list(tensor.shape)}, config expects {list(expected[key].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: tensor {key!r} contains NaN or Inf")
    model.load_state_dict(state, strict=True)


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Load `directory/{config.json, model.safetensors}` into a model in eval mode."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: file not found")
    try:
        config = TRMConfig.load(config_path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    weights = directory / WEIGHTS_FILE
    state = load_state(weights)
    model = build_model(config)
    load_into(model, state, weights)
    model.eval()
    return Checkpoint(directory.name, directory, config, model, sha256_file(weights))


def read_card_metrics(directory: str | Path) -> dict[str, object]:
    """The measured figures a model card declares in its `metrics.json` sidecar, or {} if none."""
    path = Path(directory) / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}

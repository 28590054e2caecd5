"""Checkpoint directories: `config.json` + `model.safetensors` (+ the model card `README.md`).

Weights load only from safetensors (tensors, never pickles), strictly: a missing, unexpected or mis-shaped key
fails with the file and the first mismatch named, because a silently half-loaded model gives wrong answers
that look plausible.

A large puzzle table (the HRM authors' ARC-AGI-2 checkpoint has about a million rows, 2 GB) stays memory-mapped
from the file rather than copied: the server then holds only the rows it reads. Files are therefore written to a
temporary name and moved into place, never rewritten in place, so a process that maps the old file keeps it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
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
MAPPED_TABLE_MIN_BYTES = 64 << 20
"""A puzzle table this large stays memory-mapped from the file; a smaller one is copied, so a process holding a
small model (every shipped one) does not depend on its file after loading."""
FINITE_CHUNK = 1 << 24  # elements per finiteness check: a 2 GB table needs no 512 MB mask


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
    return write_checkpoint(model.state_dict(), config, directory)


def write_checkpoint(state: Mapping[str, torch.Tensor], config: TRMConfig, directory: str | Path) -> Path:
    """Write `state` (our key names) as fp32 safetensors and `config` as config.json into `directory`.

    The weights go to a temporary file that then replaces model.safetensors, so a process that memory-maps the old
    file keeps reading the old weights rather than a half-written or truncated file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory / CONFIG_FILE)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    weights = directory / WEIGHTS_FILE
    partial = weights.with_name(weights.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt", "arch": config.arch})
    partial.replace(weights)
    return directory


def load_state(weights: Path) -> dict[str, torch.Tensor]:
    """Open a safetensors file (memory-mapped: tensors are read when used), turning every failure into a
    CheckpointError that names the file."""
    if weights.suffix != ".safetensors":
        raise CheckpointError(f"{weights}: only .safetensors checkpoints are loaded (pickles can run code)")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: file not found")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc


def expected_shapes(config: TRMConfig) -> dict[str, torch.Size]:
    """Every tensor a checkpoint of `config` holds, with its shape, from a model built on the meta device (no
    memory, so a million-row puzzle table costs nothing to describe)."""
    with torch.device("meta"):
        model = build_model(config)
    return {key: tensor.shape for key, tensor in model.state_dict().items()}


def _all_finite(tensor: torch.Tensor) -> bool:
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + FINITE_CHUNK]).all()) for i in range(0, flat.numel(), FINITE_CHUNK))


def check_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Size],
    source: Path,
    display: Callable[[str], str] = str,
) -> None:
    """Fail on the first missing, unexpected, mis-shaped or non-finite tensor, naming `source` and the tensor as
    `display` shows it (a converter shows the reference's own key names)."""
    for key, shape in expected.items():
        if key not in state:
            raise CheckpointError(f"{source}: missing tensor {display(key)!r} (expected shape {list(shape)})")
    for key, tensor in state.items():
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected tensor {display(key)!r} (shape {list(tensor.shape)})")
        if tensor.shape != expected[key]:
            raise CheckpointError(
                f"{source}: tensor {display(key)!r} has shape {list(tensor.shape)}, "
                f"config expects {list(expected[key])}"
            )
        if not _all_finite(tensor):
            raise CheckpointError(f"{source}: tensor {display(key)!r} contains NaN or Inf")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strictly copy `state` into `model`; the first missing, unexpected or mis-shaped key is an error."""
    check_state(state, {k: v.shape for k, v in model.state_dict().items()}, source)
    model.load_state_dict(state, strict=True)


def build_from_state(config: TRMConfig, state: Mapping[str, torch.Tensor], source: Path) -> TRM:
    """The model of `config` holding the tensors of `state`, checked strictly first.

    Every tensor is copied into the model except a puzzle table of at least `MAPPED_TABLE_MIN_BYTES`, which the
    model takes as it is: from a safetensors file that is the file's memory map, so nothing is read until a row is
    used and the table is never held twice. The model is built with a one-row table for that reason (all other
    shapes are independent of the row count), and then given the real one.
    """
    check_state(state, expected_shapes(config), source)
    model = build_model(replace(config, num_puzzle_ids=1))
    model.config = config
    table = state["puzzle_emb"]
    model.puzzle_emb = table if table.nbytes >= MAPPED_TABLE_MIN_BYTES else table.clone()
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k != "puzzle_emb"}, strict=False)
    if missing != ["puzzle_emb"] or unexpected:  # check_state already ruled this out
        raise CheckpointError(f"{source}: tensors do not match the model (missing {missing}, unexpected {unexpected})")
    return model


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
    model = build_from_state(config, load_state(weights), weights)
    model.eval()
    return Checkpoint(directory.name, directory, config, model, sha256_file(weights))


def read_card_metrics(directory: str | Path) -> dict[str, object]:
    """The measured figures a model card declares in its `metrics.json` sidecar, or {} if none."""
    path = Path(directory) / "metrics.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}

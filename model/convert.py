"""Convert a reference TinyRecursiveModels checkpoint (`step_N` + `all_config.yaml`) into our format.

    python -m model.convert path/to/step_65104 weights/sudoku-extreme-mlp

The reference saves a plain `torch.save` state dict of its compiled loss wrapper: keys carry the prefix
`_orig_mod.model.inner.` (without `_orig_mod.` when compile was off). It is read with `weights_only=True`, so
no pickled code runs, renamed to our keys, checked strictly against the model the config builds, and written
as safetensors. Shapes the config does not state (vocab, puzzle-id count, seq_len) come from the tensors.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from model.checkpoint import CheckpointError, load_into, save_checkpoint
from model.config import TRMConfig
from model.factory import build_model

log = logging.getLogger(__name__)

PREFIXES = ("_orig_mod.model.inner.", "model.inner.", "_orig_mod.", "inner.")
RENAMES = [
    (r"^embed_tokens\.embedding_weight$", "embed_tokens.weight"),
    (r"^embed_pos\.embedding_weight$", "embed_pos.weight"),
    (r"^puzzle_emb\.weights$", "puzzle_emb"),
    (r"^H_init$", "y_init"),
    (r"^L_init$", "z_init"),
    (r"^L_level\.layers\.(\d+)\.self_attn\.", r"net.layers.\1.attn."),
    (r"^L_level\.layers\.(\d+)\.", r"net.layers.\1."),
]
SKIPPED = ("puzzle_emb.local_weights", "puzzle_emb.local_ids")


def rename_key(key: str) -> str | None:
    """Our name for a reference key, or None for tensors that are not model state."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if key in SKIPPED or key.endswith(("rotary_emb.cos_cached", "rotary_emb.sin_cached")):
        return None
    for pattern, repl in RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _family(data_paths: Any) -> str:
    text = str(data_paths).lower()
    for family in ("sudoku", "maze", "arc"):
        if family in text:
            return family
    raise CheckpointError(f"cannot tell the puzzle family from data_paths {data_paths!r}")


def config_from_reference(all_config: dict[str, Any], state: dict[str, torch.Tensor]) -> TRMConfig:
    """Build a TRMConfig from the dumped `PretrainConfig` and the tensor shapes."""
    arch = all_config.get("arch", {})
    family = _family(all_config.get("data_paths") or all_config.get("data_path"))
    vocab, hidden = state["embed_tokens.weight"].shape
    prefix = int(arch.get("puzzle_emb_len", 16))
    mlp_t = bool(arch.get("mlp_t", False))
    if mlp_t:
        seq_len = int(state["net.layers.0.mlp_t.down_proj.weight"].shape[0]) - prefix
    else:
        seq_len = 81 if family == "sudoku" else 900
    table = state.get("puzzle_emb")
    return TRMConfig(
        family=family,  # type: ignore[arg-type]
        vocab_size=int(vocab),
        seq_len=seq_len,
        num_puzzle_ids=int(table.shape[0]) if table is not None else 1,
        puzzle_emb_len=prefix,
        hidden_size=int(hidden),
        num_heads=int(arch.get("num_heads", 8)),
        expansion=float(arch.get("expansion", 4.0)),
        num_layers=int(arch.get("L_layers", 2)),
        h_cycles=int(arch.get("H_cycles", 3)),
        l_cycles=int(arch.get("L_cycles", 6)),
        mixer="mlp" if mlp_t else "attention",
        pos_encodings=arch.get("pos_encodings", "rope"),
        rope_theta=float(arch.get("rope_theta", 10000.0)),
        rms_norm_eps=float(arch.get("rms_norm_eps", 1e-5)),
        halt_max_steps=int(arch.get("halt_max_steps", 16)),
        halt_exploration_prob=float(arch.get("halt_exploration_prob", 0.1)),
        no_act_continue=bool(arch.get("no_ACT_continue", True)),
        training={"converted_from": "TinyRecursiveModels reference checkpoint"},
    )


def convert(src: Path, dst: Path, config_path: Path | None = None) -> TRMConfig:
    config_path = config_path or src.parent / "all_config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: all_config.yaml not found beside the checkpoint")
    try:
        all_config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise CheckpointError(f"{config_path}: not valid YAML{at}: {problem}") from exc
    if not isinstance(all_config, dict):
        raise CheckpointError(f"{config_path}: expected a mapping of settings, found {type(all_config).__name__}")
    if not src.is_file():
        raise CheckpointError(f"{src}: no such checkpoint file")
    if src.stat().st_size == 0:
        raise CheckpointError(f"{src}: the file is empty (0 bytes), so it holds no weights; was the copy cut short?")
    try:
        raw = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{src}: cannot read reference checkpoint ({reason})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{src}: expected a state dict of tensors, found {type(raw).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        new = rename_key(key)
        if new is not None:
            state[new] = tensor.float()
    config = config_from_reference(all_config, state)
    model = build_model(config)
    load_into(model, state, src)
    save_checkpoint(model, config, dst)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="reference step_N file")
    parser.add_argument("dst", type=Path, help="output checkpoint directory")
    parser.add_argument("--config", type=Path, help="all_config.yaml (default: beside SRC)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = convert(args.src, args.dst, args.config)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 1
    log.info("wrote %s (%s, %s mixer, %d puzzle ids)", args.dst, config.family, config.mixer, config.num_puzzle_ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())

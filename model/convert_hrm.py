"""The HRM authors' checkpoints (sapientinc/HRM): their key names, their config, their puzzle-id names.

An HRM reference checkpoint differs from a TRM one (`model.convert`) in four ways that matter here:
* two networks, `H_level` (our `h_net`, f_H) and `L_level` (our `l_net`, f_L), each `H_layers`/`L_layers` blocks;
* a prefix of ONE slot: `puzzle_emb_len = ceil(puzzle_emb_ndim / hidden_size)` = 1, so RoPE puts the puzzle slot
  at position 0 and token i at 1 + i;
* halting by `q_halt > q_continue` (our `HRM.halting_logit`), with a trained q_continue (`no_act_continue` off);
* an `all_config.yaml` without vocab, sequence length or id count (they come from the tensors and the task), with
  `data_path` as one string.

The carry keeps TRM's names: z_H is our `y` (its start `H_init` is `y_init`) and z_L is `z` (`L_init` is
`z_init`). The dataset builder names ARC variants `<task>_t<tid>_<colour map digits>`; `identifier_name` turns
those into ours (`<task>|||t<tid>|||<digits>`, `model.puzzles.augment`), which the server's ARC path reads.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CheckpointError
from model.config import TRMConfig
from model.puzzles.augment import SEPARATOR

HRM_RENAMES = [
    (r"^embed_tokens\.embedding_weight$", "embed_tokens.weight"),
    (r"^embed_pos\.embedding_weight$", "embed_pos.weight"),
    (r"^puzzle_emb\.weights$", "puzzle_emb"),
    (r"^H_init$", "y_init"),
    (r"^L_init$", "z_init"),
    (r"^H_level\.layers\.(\d+)\.self_attn\.", r"h_net.layers.\1.attn."),
    (r"^H_level\.layers\.(\d+)\.", r"h_net.layers.\1."),
    (r"^L_level\.layers\.(\d+)\.self_attn\.", r"l_net.layers.\1.attn."),
    (r"^L_level\.layers\.(\d+)\.", r"l_net.layers.\1."),
]
# Ours -> theirs, to name a tensor the way the user's file does in error messages.
_REFERENCE_NAMES = [
    (r"^embed_tokens\.weight$", "embed_tokens.embedding_weight"),
    (r"^embed_pos\.weight$", "embed_pos.embedding_weight"),
    (r"^puzzle_emb$", "puzzle_emb.weights"),
    (r"^y_init$", "H_init"),
    (r"^z_init$", "L_init"),
    (r"^h_net\.layers\.(\d+)\.attn\.", r"H_level.layers.\1.self_attn."),
    (r"^h_net\.", "H_level."),
    (r"^l_net\.layers\.(\d+)\.attn\.", r"L_level.layers.\1.self_attn."),
    (r"^l_net\.", "L_level."),
]
SEQ_LEN = {"sudoku": 81, "maze": 900, "arc": 900}
"""Tokens per puzzle by task: nothing in the checkpoint states it (RoPE has no table), the dataset does."""
_HRM_VARIANT = re.compile(r"^(?P<task>.+)_t(?P<tid>[0-7])_(?P<perm>[0-9]{10})$")


def rename_hrm_key(key: str) -> str:
    """Our name for an HRM reference key (prefix already stripped); unknown keys pass through unchanged, so the
    strict check reports them."""
    for pattern, repl in HRM_RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def reference_name(ours: str) -> str:
    """The HRM reference's name for one of our keys (for messages about a reference file)."""
    for pattern, repl in _REFERENCE_NAMES:
        new, n = re.subn(pattern, repl, ours)
        if n:
            return new
    return ours


def identifier_name(name: str) -> str:
    """A puzzle-id name from the HRM dataset builder in our variant-name form; other names are returned as given.

    `007bbfb7_t3_0582917364` (dihedral 3, colour c -> digit c) becomes `007bbfb7|||t3|||0582917364`; the bare task
    name (the un-augmented variant) and `<blank>` stay as they are.
    """
    match = _HRM_VARIANT.match(name)
    if match is None or SEPARATOR in name:
        return name
    return SEPARATOR.join((match["task"], f"t{match['tid']}", match["perm"]))


def _int(arch: dict[str, Any], key: str, default: int, source: Path) -> int:
    value = arch.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{source}: arch.{key} is {value!r}, expected an integer")
    return value


def config_from_hrm(all_config: dict[str, Any], state: dict[str, torch.Tensor], family: str, source: Path) -> TRMConfig:
    """A TRMConfig (arch `hrm`) from the HRM `all_config.yaml` and the renamed tensors' shapes.

    Defaults are the published models' values (`config/arch/hrm_v1.yaml`), used only where the file lacks a key.
    """
    arch = all_config.get("arch") or {}
    if not isinstance(arch, dict):
        raise CheckpointError(f"{source}: `arch` in all_config.yaml is not a mapping")
    vocab, hidden = state["embed_tokens.weight"].shape
    h_layers, l_layers = _int(arch, "H_layers", 4, source), _int(arch, "L_layers", 4, source)
    if h_layers != l_layers:
        raise CheckpointError(
            f"{source}: H_layers {h_layers} differs from L_layers {l_layers}; our HRM gives both networks one "
            "layer count (every published HRM has 4 and 4)"
        )
    emb_dim = _int(arch, "puzzle_emb_ndim", int(hidden), source)
    if emb_dim != hidden:
        raise CheckpointError(
            f"{source}: puzzle_emb_ndim {emb_dim} differs from hidden_size {hidden}; only a puzzle vector that fills "
            "exactly one prefix slot is supported (every published HRM has both at 512)"
        )
    prefix = _int(arch, "puzzle_emb_len", 0, source) or math.ceil(emb_dim / hidden)
    positions = arch.get("pos_encodings", "rope")
    mlp_t = bool(arch.get("mlp_t", False))  # the TRM repository's copy of HRM can swap attention for an MLP
    if mlp_t:
        seq_len = int(state["l_net.layers.0.mlp_t.down_proj.weight"].shape[0]) - prefix
    elif positions == "learned" and "embed_pos.weight" in state:
        seq_len = int(state["embed_pos.weight"].shape[0]) - prefix
    else:
        seq_len = SEQ_LEN[family]
    table = state.get("puzzle_emb")
    data = all_config.get("data_path") or all_config.get("data_paths")
    return TRMConfig(
        family=family,  # type: ignore[arg-type]
        arch="hrm",
        vocab_size=int(vocab),
        seq_len=seq_len,
        num_puzzle_ids=int(table.shape[0]) if table is not None else 1,
        puzzle_emb_len=prefix,
        hidden_size=int(hidden),
        num_heads=_int(arch, "num_heads", 8, source),
        expansion=float(arch.get("expansion", 4.0)),
        num_layers=h_layers,
        h_cycles=_int(arch, "H_cycles", 2, source),
        l_cycles=_int(arch, "L_cycles", 2, source),
        mixer="mlp" if mlp_t else "attention",
        pos_encodings=positions,
        rope_theta=float(arch.get("rope_theta", 10000.0)),
        rms_norm_eps=float(arch.get("rms_norm_eps", 1e-5)),
        halt_max_steps=_int(arch, "halt_max_steps", 16, source),
        halt_exploration_prob=float(arch.get("halt_exploration_prob", 0.1)),
        no_act_continue=False,  # HRM trains q_continue and halts on q_halt > q_continue
        training={"converted_from": "HRM reference checkpoint", "source": source.name, "data": str(data)},
    )

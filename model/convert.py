"""Convert a reference checkpoint, TRM (TinyRecursiveModels) or HRM (the HRM authors'), into our format.

    python -m model.convert path/to/step_65104 weights/sudoku-extreme-mlp
    python -m model.convert HRM-checkpoint-ARC-2/ weights/hrm-arc2 --identifiers data/arc-2-aug-1000/identifiers.json

SRC is the checkpoint file (`step_N` as training writes it, `checkpoint` as the published repositories name it)
or the directory holding it; `all_config.yaml` sits beside it. Both references save a plain `torch.save` state
dict of their compiled loss wrapper: keys carry the prefix `_orig_mod.model.inner.` (without `_orig_mod.` when
compile was off). The file is read with `weights_only=True`, so no pickled code runs, and memory-mapped, so a
2 GB puzzle table is never held in memory while it is renamed, checked and written out. Which model it is comes
from the tensors: HRM has an `H_level` network, TRM only `L_level` (`model.convert_hrm` holds HRM's names and
config). The tensors are renamed to our keys, checked strictly against the shapes the config implies (the first
missing, unexpected or mis-shaped tensor is an error naming the file and the reference's key) and written as
safetensors. Shapes the config does not state (vocab, puzzle-id count, seq_len) come from the tensors or the task.

ARC checkpoints number their tasks by the rows of the puzzle table, in the order of the dataset's
`identifiers.json`; `--identifiers` copies that file beside the weights (HRM's variant names rewritten to ours),
so the server can run a named task with its trained rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from model.checkpoint import CheckpointError, check_state, expected_shapes, write_checkpoint
from model.config import FAMILIES, TRMConfig
from model.convert_hrm import config_from_hrm, identifier_name, reference_name, rename_hrm_key

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
IDENTIFIERS_FILE = "identifiers.json"

Arch = Literal["trm", "hrm"]


def strip_prefix(key: str) -> str:
    """A reference key without the compiled (`_orig_mod.`) or plain wrapper prefix."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def is_model_state(key: str) -> bool:
    """False for the tensors a reference file may hold that are not weights (sparse-embedding scratch, RoPE
    caches); `key` is prefix-free."""
    return key not in SKIPPED and not key.endswith(("rotary_emb.cos_cached", "rotary_emb.sin_cached"))


def rename_key(key: str) -> str | None:
    """Our name for a TRM reference key, or None for tensors that are not model state."""
    key = strip_prefix(key)
    if not is_model_state(key):
        return None
    for pattern, repl in RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _family(data_paths: Any) -> str:
    """The puzzle family a dataset directory names (`data/sudoku-extreme-1k-aug-1000`, `data/arc-2-aug-1000`):
    read from the last part of each path, so a parent directory's name cannot decide it."""
    paths = data_paths if isinstance(data_paths, list) else [data_paths]
    text = " ".join(Path(str(p)).name for p in paths if p).lower()
    for family in ("sudoku", "maze", "arc"):
        if family in text:
            return family
    raise CheckpointError(
        f"cannot tell the puzzle family from data_paths {data_paths!r}; name it with --family sudoku|maze|arc"
    )


def config_from_reference(all_config: dict[str, Any], state: dict[str, torch.Tensor]) -> TRMConfig:
    """Build a TRMConfig from the dumped `PretrainConfig` and the tensor shapes."""
    family = _family(all_config.get("data_paths") or all_config.get("data_path"))
    return config_from_trm(all_config, state, family)


def config_from_trm(all_config: dict[str, Any], state: dict[str, torch.Tensor], family: str) -> TRMConfig:
    """`config_from_reference` for a family already known."""
    arch = all_config.get("arch", {})
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


def _trm_reference_name(ours: str) -> str:
    """The TRM reference's name for one of our keys (for messages about a reference file)."""
    for pattern, repl in (
        (r"^embed_tokens\.weight$", "embed_tokens.embedding_weight"),
        (r"^embed_pos\.weight$", "embed_pos.embedding_weight"),
        (r"^puzzle_emb$", "puzzle_emb.weights"),
        (r"^y_init$", "H_init"),
        (r"^z_init$", "L_init"),
        (r"^net\.layers\.(\d+)\.attn\.", r"L_level.layers.\1.self_attn."),
        (r"^net\.", "L_level."),
    ):
        new, n = re.subn(pattern, repl, ours)
        if n:
            return new
    return ours


def find_checkpoint_file(src: Path) -> Path:
    """SRC itself, or in a directory its `checkpoint` (the published name) or else its latest `step_N`."""
    if not src.is_dir():
        return src
    if (src / "checkpoint").is_file():
        return src / "checkpoint"
    steps = [(int(p.name[5:]), p) for p in src.glob("step_*") if p.name[5:].isdigit() and p.is_file()]
    if not steps:
        raise CheckpointError(f"{src}: no `checkpoint` or `step_N` file in this directory")
    return max(steps)[1]


def read_all_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: all_config.yaml not found beside the checkpoint")
    try:
        all_config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise CheckpointError(f"{path}: not valid YAML{at}: {problem}") from exc
    if not isinstance(all_config, dict):
        raise CheckpointError(f"{path}: expected a mapping of settings, found {type(all_config).__name__}")
    return all_config


def read_reference_state(src: Path) -> dict[str, torch.Tensor]:
    """The reference file's tensors under prefix-free keys, memory-mapped where the file format allows it."""
    if not src.is_file():
        raise CheckpointError(f"{src}: no such checkpoint file")
    if src.stat().st_size == 0:
        raise CheckpointError(f"{src}: the file is empty (0 bytes), so it holds no weights; was the copy cut short?")
    try:
        try:
            raw = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            log.warning("%s: written in torch's legacy format, which cannot be memory-mapped; reading it whole", src)
            raw = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{src}: cannot read reference checkpoint ({reason})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{src}: expected a state dict of tensors, found {type(raw).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{src}: entry {key!r} is a {type(tensor).__name__}, not a tensor")
        plain = strip_prefix(str(key))
        if is_model_state(plain):
            state[plain] = tensor
    return state


def detect_arch(all_config: dict[str, Any], keys: list[str], src: Path) -> Arch:
    """`hrm` when the file has HRM's high-level network, else `trm`; a config naming the other model is an error."""
    arch: Arch = "hrm" if any(k.startswith("H_level.") for k in keys) else "trm"
    arch_section = all_config.get("arch")
    name = str(arch_section.get("name", "")) if isinstance(arch_section, dict) else ""
    named: Arch | None = "hrm" if "hrm" in name.lower() else "trm" if "trm" in name.lower() else None
    if named is not None and named != arch:
        has = "an H_level network" if arch == "hrm" else "no H_level network"
        raise CheckpointError(f"{src}: all_config.yaml names {name!r} ({named}), but the file has {has} ({arch})")
    return arch


def read_identifiers(path: Path, rows: int) -> list[str]:
    """The dataset's identifiers.json (row -> puzzle name) for a table of `rows` rows, in our variant-name form."""
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read identifiers ({exc})") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: expected a JSON list of puzzle names, one per row of the puzzle table")
    if len(names) != rows:
        raise CheckpointError(
            f"{path}: {len(names)} names for a puzzle table of {rows} rows: this is not the identifiers file of "
            "the dataset the checkpoint was trained on"
        )
    return [identifier_name(n) for n in names]


def convert(
    src: Path,
    dst: Path,
    config_path: Path | None = None,
    identifiers: Path | None = None,
    family: str | None = None,
) -> TRMConfig:
    """Convert the reference checkpoint `src` (a file, or a directory holding one) into the directory `dst`.

    `family` overrides the puzzle family that `all_config.yaml`'s dataset path names.
    """
    src = find_checkpoint_file(src)
    all_config = read_all_config(config_path or src.parent / "all_config.yaml")
    reference = read_reference_state(src)
    arch = detect_arch(all_config, list(reference), src)
    rename: Callable[[str], str | None] = rename_hrm_key if arch == "hrm" else rename_key
    display = reference_name if arch == "hrm" else _trm_reference_name
    state: dict[str, torch.Tensor] = {}
    for key, tensor in reference.items():
        new = rename(key)
        if new is not None:
            # fp32 tensors pass through untouched (still the file's memory map); only H_init/L_init are bf16.
            state[new] = tensor if tensor.dtype == torch.float32 else tensor.float()
    if "embed_tokens.weight" not in state:
        raise CheckpointError(f"{src}: missing tensor 'embed_tokens.embedding_weight' (vocab and hidden size)")
    family = family or _family(all_config.get("data_paths") or all_config.get("data_path"))
    config = (
        config_from_hrm(all_config, state, family, src) if arch == "hrm" else config_from_trm(all_config, state, family)
    )
    check_state(state, expected_shapes(config), src, display)
    names = read_identifiers(identifiers, config.num_puzzle_ids) if identifiers is not None else None
    write_checkpoint(state, config, dst)
    if names is not None:
        (dst / IDENTIFIERS_FILE).write_text(json.dumps(names) + "\n")
    elif config.family == "arc" and config.num_puzzle_ids > 1:
        log.warning(
            "%s: no --identifiers given, so no task is known by name: every ARC task will be treated as unseen "
            "(test-time adaptation). Pass the dataset's identifiers.json to use the trained rows.",
            dst,
        )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="reference checkpoint file (step_N or checkpoint) or its directory")
    parser.add_argument("dst", type=Path, help="output checkpoint directory")
    parser.add_argument("--config", type=Path, help="all_config.yaml (default: beside SRC)")
    parser.add_argument(
        "--identifiers", type=Path, help="the training dataset's identifiers.json (ARC: row -> task variant)"
    )
    parser.add_argument(
        "--family", choices=FAMILIES, help="puzzle family (default: named by the dataset path in all_config.yaml)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = convert(args.src, args.dst, args.config, args.identifiers, args.family)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "wrote %s (%s %s, %s mixer, %d-slot prefix, %d puzzle ids)",
        args.dst,
        config.arch.upper(),
        config.family,
        config.mixer,
        config.puzzle_emb_len,
        config.num_puzzle_ids,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Resumable training state, kept apart from the shipped weights.

`<run>/state/tensors.safetensors` holds the live weights, the EMA shadow, the optimizer moments and the ACT
slots (carry, step counters, current puzzles) of the whole global batch; `<run>/state/state.json` holds the
counters (optimizer step, data epoch and offset). Every random draw of the loop is derived from the step and
data position, so loading both continues the run bit for bit.

Except for one kind of run: one batched per canvas (a size-agnostic ARC model, `training.sampler`) restarts its
slots whenever the canvas changes, and its carry on the largest canvas is 33 MB of the state's 43 (32 slots of
1025 x 128 fp32, twice). Its state leaves the slots out, and a resumed run starts with every slot halted, as
after a canvas change: the weights, optimiser and data position continue exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from model.trm import Carry, plain_name

if TYPE_CHECKING:
    from training.loop import ACTState, Trainer

ACT_FIELDS = ("steps", "halted", "inputs", "labels", "puzzle_ids")


def _act_tensors(act: ACTState) -> dict[str, torch.Tensor]:
    out = {"y": act.carry.y, "z": act.carry.z}
    out.update({name: getattr(act, name) for name in ACT_FIELDS})
    return out


def keeps_slots(trainer: Trainer) -> bool:
    """Whether the state holds the ACT slots: for every run but one batched per canvas (see the module's note)."""
    return "canvas" not in trainer.stream.data.extras


def save_state(trainer: Trainer, directory: Path) -> None:
    """Write the state of every rank's slots (gathered) plus rank 0's weights and optimizer."""
    slots = _act_tensors(trainer.act) if keeps_slots(trainer) else {}
    act = {k: trainer.dist.gather(v.float() if v.dtype == torch.bool else v) for k, v in slots.items()}
    if trainer.dist.rank != 0:
        return
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"model/{plain_name(k)}": v for k, v in trainer.model.state_dict().items()})
    if trainer.ema is not None:
        tensors.update({f"ema/{plain_name(k)}": v for k, v in trainer.ema.shadow.items()})
    opt = trainer.optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, pstate in opt["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                tensors[f"opt/{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = float(value)
    tensors.update({f"act/{k}": v for k, v in act.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = directory / "tensors.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(directory / "tensors.safetensors")
    meta = {
        "step": trainer.step,
        "epoch": trainer.stream.epoch,
        "offset": trainer.stream.offset,
        "world": trainer.dist.world,
        "optimizer_scalars": scalars,
        "preset": trainer.preset.to_dict(),
        "init_from": trainer.init_record,
        "steps_by_dtype": trainer.steps_by_dtype,
    }
    (directory / "state.json").write_text(json.dumps(meta, indent=2))


def load_state(trainer: Trainer, directory: Path) -> None:
    """Restore a trainer built from the same preset to the saved point."""
    meta = json.loads((directory / "state.json").read_text())
    tensors = load_file(str(directory / "tensors.safetensors"), device=str(trainer.device))
    names = {plain_name(k): k for k in trainer.model.state_dict()}
    model_state = {names.get(k[len("model/") :], k): v for k, v in tensors.items() if k.startswith("model/")}
    trainer.model.load_state_dict(model_state, strict=True)
    if trainer.ema is not None:
        for name in trainer.ema.shadow:
            trainer.ema.shadow[name] = tensors[f"ema/{plain_name(name)}"].clone()
    opt = trainer.optimizer.state_dict()
    params = opt["param_groups"][0]["params"] if len(opt["param_groups"]) == 1 else None
    indices = params if params is not None else [i for g in opt["param_groups"] for i in g["params"]]
    new_state: dict[int, dict[str, Any]] = {}
    for idx in indices:
        entry: dict[str, Any] = {}
        for key, value in tensors.items():
            if key.startswith(f"opt/{idx}/"):
                entry[key.split("/", 2)[2]] = value.clone()
        for key, value in meta["optimizer_scalars"].items():
            pidx, name = key.split("/", 1)
            if int(pidx) == idx:
                entry[name] = int(value) if trainer.cfg.optimizer == "adam_atan2" else torch.tensor(value)
        if entry:
            new_state[idx] = entry
    opt["state"] = new_state
    trainer.optimizer.load_state_dict(opt)

    lo = trainer.dist.rank * trainer.local_batch
    sl = slice(lo, lo + trainer.local_batch)
    act = {k[len("act/") :]: v[sl] for k, v in tensors.items() if k.startswith("act/")}
    from training.loop import ACTState

    if act:
        trainer.act = ACTState(
            carry=Carry(act["y"], act["z"]),
            steps=act["steps"].long(),
            halted=act["halted"].bool(),
            inputs=act["inputs"].long(),
            labels=act["labels"].long(),
            puzzle_ids=act["puzzle_ids"].long(),
        )
    else:  # a run batched per canvas: every slot starts afresh, as after a canvas change
        trainer.act = trainer.fresh_act_state()
    trainer.init_record = meta.get("init_from")
    trainer.step = meta["step"]
    # A state saved before the count existed says nothing of its steps' precision.
    trainer.steps_by_dtype = dict(meta.get("steps_by_dtype", {"unrecorded": meta["step"]}))
    trainer.stream.epoch = meta["epoch"]
    trainer.stream.offset = meta["offset"]

"""Compute precision: which dtype `auto` means on this machine, and the autocast context that applies it.

Training (`train.dtype`), evaluation (`--dtype`) and the server (`--dtype`) share one rule, so a checkpoint is
trained, measured and served the same way on the same machine: bf16 autocast on a GPU and on a CPU that does bf16
arithmetic in hardware, fp32 elsewhere. The rule matters on a CPU because bf16 without hardware support is
emulated: on an AVX2-only AMD EPYC a compiled maze-15x15-cpu training step took about 100 s in bf16 against 5.5 s
in fp32 (two threads), while on an AVX512-BF16 EPYC bf16 took 1.65 s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""/proc/cpuinfo flags of bf16 arithmetic in hardware: AVX512-BF16 and AMX on x86, the BF16 extension on Arm."""
CPUINFO = Path("/proc/cpuinfo")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU does bf16 arithmetic in hardware; without it bf16 autocast is emulated, and far slower."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: stay with fp32
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def resolve_dtype(setting: str, device: torch.device, cpuinfo: Path = CPUINFO) -> torch.dtype:
    """`auto` is bf16 on a GPU and on a CPU with native bf16, else fp32; `float32` and `bfloat16` are taken as said.

    An explicit `bfloat16` on a CPU without native bf16 is honoured (it may be what a test of numerics wants) but
    logged as a warning once, since it is an order of magnitude slower than fp32 there.
    """
    if setting == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16(cpuinfo))
        return torch.bfloat16 if native else torch.float32
    if setting not in DTYPES:
        raise ValueError(f"dtype must be auto, float32 or bfloat16, not {setting!r}")
    if setting == "bfloat16" and device.type == "cpu" and not cpu_has_native_bf16(cpuinfo):
        _warn_emulated(str(cpuinfo))
    return DTYPES[setting]


def dtype_name(dtype: torch.dtype) -> str:
    """The setting that names `dtype` ("float32", "bfloat16"), as results and providers report it."""
    return str(dtype).removeprefix("torch.")


@functools.cache
def _warn_emulated(cpuinfo: str) -> None:
    log.warning(
        "bfloat16 asked for on a CPU without bf16 arithmetic (%s lists none of %s): it is emulated, about 18x slower "
        "than float32 in training here; dtype 'auto' picks float32 on this CPU",
        cpuinfo,
        ", ".join(sorted(NATIVE_BF16_FLAGS)),
    )


def autocast(
    device: torch.device, dtype: torch.dtype, weights_change: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast where asked for; fp32 runs without any autocast context.

    `weights_change`: the weights are updated inside the context (test-time training around several optimiser
    steps). Autocast keeps the low-precision copy of each trainable weight it casts until the context exits, so
    without this every step after the first would run on the first step's weights.
    """
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=not weights_change)

"""Which device a process computes on: one rule for training, evaluation, benchmarks and the server.

`auto` means this process's GPU when CUDA is there and the CPU otherwise. Under `torchrun` each process owns the
GPU of its `LOCAL_RANK`; everywhere else that variable is unset and `auto` means GPU 0. Naming a CUDA device on a
machine without CUDA is refused here, by name, instead of failing later inside the first tensor copy.
"""

from __future__ import annotations

import os

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a torch device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available")
    return device

"""ONNX Runtime engine: the same slots and step contract as the torch engine, run by an InferenceSession.

The exported graph is ONE supervision step (tokens, prefix vector, y, z -> y, z, logits, q_halt, q_continue)
with a dynamic batch axis (`python -m model.export_onnx`). The checkpoint's `model.onnx` is used when present
and up to date; otherwise the step is exported at start-up into a cache directory, so read-only weight mounts
work. On CUDA the carry lives in device OrtValues and steps run through IO binding, so y and z never cross to
the host between steps; on CPU plain numpy arrays are the carry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import Checkpoint
from model.export_onnx import export_step, make_session
from server.engine import Engine, StepResult

log = logging.getLogger(__name__)
OUTPUTS = ["y_out", "z_out", "logits", "q_halt", "q_continue"]


def onnx_path_for(ckpt: Checkpoint) -> Path:
    """`model.onnx` beside the weights if it was exported from these weights, else a cached export."""
    beside = ckpt.path / "model.onnx"
    stamp = ckpt.path / "model.onnx.sha256"
    if beside.is_file() and stamp.is_file() and stamp.read_text().strip() == ckpt.sha256:
        return beside
    cache = Path(os.environ.get("TRM_ONNX_CACHE", Path(tempfile.gettempdir()) / "trm-onnx"))
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{ckpt.sha256}:{torch.__version__}".encode()).hexdigest()[:16]
    target = cache / f"{ckpt.name}-{key}.onnx"
    if not target.is_file():
        log.info("exporting %s to %s", ckpt.name, target)
        export_step(ckpt.model, target)
    return target


class OnnxEngine(Engine):
    backend = "onnx"

    def __init__(self, ckpt: Checkpoint, slots: int, device: torch.device, threads: int = 0) -> None:
        table = ckpt.model.puzzle_emb.detach().cpu().numpy()
        super().__init__(ckpt.config, table, slots)
        path = onnx_path_for(ckpt)
        self.session = make_session(path, "cuda" if device.type == "cuda" else "cpu", threads or None)
        self.provider = self.session.get_providers()[0]
        self.on_gpu = self.provider == "CUDAExecutionProvider"
        self.is_hrm = ckpt.config.arch == "hrm"
        cfg = ckpt.config
        init = ckpt.model.initial_carry(1)
        self.y_init = init.y[0, 0].numpy().astype(np.float32)
        self.z_init = init.z[0, 0].numpy().astype(np.float32)
        self.y = np.empty((slots, cfg.total_len, cfg.hidden_size), dtype=np.float32)
        self.z = np.empty_like(self.y)
        self.y[:] = self.y_init
        self.z[:] = self.z_init
        self.inputs = np.zeros((slots, cfg.seq_len), dtype=np.int64)
        self.vectors = np.zeros((slots, cfg.hidden_size), dtype=np.float32)
        self.cuda: dict[str, torch.Tensor] | None = None
        if self.on_gpu:
            dev = device if device.index is not None else torch.device("cuda", 0)
            self.cuda = {
                name: torch.as_tensor(arr, device=dev)
                for name, arr in (("y", self.y), ("z", self.z), ("inputs", self.inputs), ("vectors", self.vectors))
            }

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, slots: int, device: torch.device, threads: int = 0) -> OnnxEngine:
        return cls(ckpt, slots, device, threads)

    def load(self, slot: int, tokens: np.ndarray, vector: np.ndarray) -> None:
        if self.cuda is not None:
            c = self.cuda
            c["inputs"][slot] = torch.as_tensor(tokens, dtype=torch.long)
            c["vectors"][slot] = torch.as_tensor(vector, dtype=torch.float32)
            c["y"][slot] = torch.as_tensor(self.y_init)
            c["z"][slot] = torch.as_tensor(self.z_init)
            return
        self.inputs[slot] = tokens
        self.vectors[slot] = vector
        self.y[slot] = self.y_init
        self.z[slot] = self.z_init

    def _step(self, slots: Sequence[int]) -> StepResult:
        if self.on_gpu:
            return self._step_cuda(slots)
        idx = np.asarray(slots, dtype=np.int64)
        contiguous = bool(len(idx)) and np.array_equal(idx, np.arange(len(idx)))
        sel: slice | np.ndarray = slice(0, len(idx)) if contiguous else idx
        feeds = {"inputs": self.inputs[sel], "puzzle_vectors": self.vectors[sel], "y": self.y[sel], "z": self.z[sel]}
        y, z, logits, q_halt, q_continue = self.session.run(OUTPUTS, feeds)
        self.y[sel] = y
        self.z[sel] = z
        return self._result(logits, q_halt, q_continue)

    def _result(self, logits: np.ndarray, q_halt: np.ndarray, q_continue: np.ndarray) -> StepResult:
        halt = q_halt - q_continue if self.is_hrm else q_halt
        finite = np.isfinite(logits).reshape(len(logits), -1).all(axis=1) & np.isfinite(halt)
        return StepResult(tokens=logits.argmax(-1), q_halt=halt.astype(np.float32), finite=finite)

    def _step_cuda(self, slots: Sequence[int]) -> StepResult:
        """IO binding on device buffers: the carry stays in GPU memory; only tokens and q come back."""
        assert self.cuda is not None
        c = self.cuda
        idx = torch.as_tensor(list(slots), dtype=torch.long, device=c["y"].device)
        k = len(slots)
        feeds = {
            "inputs": c["inputs"][idx].contiguous(),
            "puzzle_vectors": c["vectors"][idx].contiguous(),
            "y": c["y"][idx].contiguous(),
            "z": c["z"][idx].contiguous(),
        }
        cfg = self.config
        outs = {
            "y_out": torch.empty_like(feeds["y"]),
            "z_out": torch.empty_like(feeds["z"]),
            "logits": torch.empty(k, cfg.seq_len, cfg.vocab_size, device=idx.device),
            "q_halt": torch.empty(k, device=idx.device),
            "q_continue": torch.empty(k, device=idx.device),
        }
        binding = self.session.io_binding()
        device_id = idx.device.index or 0
        for group, bind in ((feeds, binding.bind_input), (outs, binding.bind_output)):
            for name, t in group.items():
                dtype = np.int64 if t.dtype == torch.long else np.float32
                bind(name, "cuda", device_id, dtype, tuple(t.shape), t.data_ptr())
        torch.cuda.synchronize(idx.device)  # the gathers above ran on torch's stream
        self.session.run_with_iobinding(binding)
        c["y"][idx] = outs["y_out"]
        c["z"][idx] = outs["z_out"]
        logits = outs["logits"]
        return StepResult(
            tokens=logits.argmax(-1).cpu().numpy(),
            q_halt=(outs["q_halt"] - outs["q_continue"] if self.is_hrm else outs["q_halt"]).cpu().numpy(),
            finite=(torch.isfinite(logits).flatten(1).all(1) & torch.isfinite(outs["q_halt"])).cpu().numpy(),
        )

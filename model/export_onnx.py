"""Export ONE supervision step of a checkpoint's model to ONNX, and check that ONNX Runtime reproduces it.

    python -m model.export_onnx WEIGHTS_DIR [--out FILE] [--opset N] [--exporter dynamo|torchscript]

The graph is `TRM.step` with the puzzle vector as an input: (inputs, puzzle_vectors, y, z) -> (y_out, z_out,
logits, q_halt, q_continue), batch axis dynamic. A `conv` model (size-agnostic) takes inputs (B, H, W) with H and W
dynamic too, and y/z of (B, prefix + H*W, D): one file serves every grid size. The step, not the whole 16-step
loop, is exported because the server's scheduler runs one step per tick over changing slots and halts each puzzle
on its own. The puzzle table stays out of the graph (the server looks rows up; ARC tables have ~1M rows), and so
do y_init/z_init (the caller resets slots). In eval mode under no_grad the T-1 gradient-free recursions are plain
ops, so the graph is simply the unrolled h_cycles x (l_cycles + 1) network calls sharing one set of weight
initializers.

Exporter: the torch.export-based exporter (`dynamo=True`, torch's default since 2.9, needs onnxscript) handles
the Rotary buffers (folded to constants), SDPA (decomposed to MatMul/Softmax) and the in-place prefix write
without workarounds, and its batch Dim keeps every input's batch axis tied. The legacy TorchScript exporter also
works and exports ~5x faster, but it is deprecated, so it is kept only as `exporter="torchscript"`.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from model.checkpoint import load_checkpoint
from model.trm import TRM, Carry

log = logging.getLogger(__name__)

INPUTS = ("inputs", "puzzle_vectors", "y", "z")
OUTPUTS = ("y_out", "z_out", "logits", "q_halt", "q_continue")
Exporter = Literal["dynamo", "torchscript"]
Device = Literal["cpu", "cuda"]


class StepGraph(nn.Module):
    """`TRM.step` with flat tensor inputs and outputs, the shape an ONNX graph needs."""

    def __init__(self, model: TRM) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, inputs: Tensor, puzzle_vectors: Tensor, y: Tensor, z: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        out = self.model.step(Carry(y, z), inputs, puzzle_vectors=puzzle_vectors)
        return out.carry.y, out.carry.z, out.logits, out.q_halt, out.q_continue


def _as_trm(model: nn.Module) -> TRM:
    """The export contract (step with puzzle vectors, fp32 carry) holds for TRM and its HRM subclass only."""
    if not isinstance(model, TRM):
        raise TypeError(f"can only export TRM/HRM models, got {type(model).__name__}")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise TypeError(f"export needs fp32 weights (the graph's inputs are float32), got {sorted(map(str, dtypes))}")
    return model


def example_inputs(
    model: TRM, batch_size: int, generator: torch.Generator | None = None, grid: tuple[int, int] | None = None
) -> tuple[Tensor, ...]:
    """Random tokens and puzzle vectors with a carry near the initial state: what a real step sees.

    `grid` (H, W) gives a `conv` model (B, H, W) inputs; it defaults to a 5x7 grid for them, distinct sides so
    the export does not tie H to W, and to flat (B, seq_len) inputs for every other mixer.
    """
    cfg = model.config
    device = model.y_init.device
    if cfg.mixer == "conv":
        grid = grid or (5, 7)
        shape: tuple[int, ...] = (batch_size, *grid)
    else:
        shape = (batch_size, cfg.seq_len)
    tokens = torch.randint(0, cfg.vocab_size, shape, generator=generator)
    vectors = torch.randn(batch_size, cfg.hidden_size, generator=generator)
    carry = model.initial_carry(batch_size, device=device, num_tokens=tokens[0].numel())
    noise = 0.1 * torch.randn((2, *carry.y.shape), generator=generator).to(device)
    return tokens.to(device), vectors.to(device), carry.y + noise[0], carry.z + noise[1]


def export_step(model: nn.Module, path: str | Path, opset: int | None = None, exporter: Exporter = "dynamo") -> Path:
    """Write one supervision step of `model` to `path` as a single self-contained ONNX file.

    Args:
        model: a TRM or HRM in fp32 (its train/eval mode is restored afterwards).
        path: the .onnx file; written to a temporary name first and renamed, so a concurrent reader (a server
            looking for a cached export) never sees a half-written file.
        opset: ONNX opset; None takes the exporter's default (opset 18+ for dynamo, 17 for torchscript).
        exporter: "dynamo" (torch.export-based, the supported path) or "torchscript" (legacy, deprecated).

    Returns:
        The path written.
    """
    trm = _as_trm(model)
    if trm.config.mixer == "conv" and exporter == "torchscript":
        # Its tracer records the grid's H and W as constants: the file would serve one size only.
        raise ValueError("a 'conv' model exports with exporter='dynamo' only (torchscript would fix H and W)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Batch 2, not 1: torch.export specialises size-1 dimensions, which would pin the batch axis to 1.
    args = example_inputs(trm, 2, torch.Generator().manual_seed(0))
    was_training = trm.training
    graph = StepGraph(trm).eval()  # reaches the model too; its mode is restored at the end
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Both come from torch internals and say nothing about this model: one batch Dim is shared on purpose.
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            if exporter == "dynamo":
                batch = torch.export.Dim("batch")
                dynamic: tuple[dict[int, Any], ...] = tuple({0: batch} for _ in INPUTS)
                if trm.config.mixer == "conv":
                    # H and W are free; the carry's length (prefix + H*W) follows from them, which AUTO lets
                    # torch.export derive rather than a Dim we would have to relate by hand.
                    height, width = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
                    auto = torch.export.Dim.AUTO
                    dynamic = ({0: batch, 1: height, 2: width}, {0: batch}, {0: batch, 1: auto}, {0: batch, 1: auto})
                torch.onnx.export(
                    graph,
                    args,
                    str(tmp),
                    dynamo=True,
                    input_names=list(INPUTS),
                    output_names=list(OUTPUTS),
                    dynamic_shapes=dynamic,
                    opset_version=opset,
                    external_data=False,  # one file: models are MBs, and consumers copy or cache a single path
                    optimize=True,
                    verbose=False,
                )
            elif exporter == "torchscript":
                torch.onnx.export(
                    graph,
                    args,
                    str(tmp),
                    dynamo=False,
                    input_names=list(INPUTS),
                    output_names=list(OUTPUTS),
                    dynamic_axes={name: {0: "batch"} for name in (*INPUTS, *OUTPUTS)},
                    opset_version=opset or 17,
                )
            else:
                raise ValueError(f"unknown exporter {exporter!r}: expected 'dynamo' or 'torchscript'")
        tmp.chmod(0o644)  # mkstemp makes it owner-only; a server in another container user must read it
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        trm.train(was_training)
    log.info("exported %s step to %s (%.1f MB, %s)", trm.arch, path, path.stat().st_size / 1e6, exporter)
    return path


def onnx_providers() -> list[str]:
    """Execution providers of the installed onnxruntime (CUDAExecutionProvider only with onnxruntime-gpu)."""
    return list(ort.get_available_providers())


def default_threads() -> int:
    """Cores this process may use (the affinity mask, which containers narrow), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_session(path: str | Path, device: Device | str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession for an exported step, on CUDA when asked for and available, else on CPU.

    Graph optimisation is ORT_ENABLE_ALL (fusions of the unrolled blocks matter at small batch); intra-op threads
    default to the usable cores, and inter-op is 1 because the step is one sequential chain of network calls.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" in onnx_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            log.warning("CUDAExecutionProvider not available (providers %s); running ONNX on CPU", onnx_providers())
    elif device != "cpu":
        raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def rounding_sensitivity(graph: StepGraph, args: tuple[Tensor, ...], expected: Sequence[Tensor]) -> list[float]:
    """How far each output moves when the carry is nudged by ~8 fp32 ulps (relative 1e-6): the fp32 noise floor.

    Two correct fp32 implementations round differently at every op, and the recursion amplifies that like any
    input error. A deep random-init model (the paper's 512-wide, T=3, n=6) turns a 1e-6 nudge into 1e-3 in one
    step and into O(1) after a few, so a fixed 1e-4 bar would fail torch against itself; ONNX Runtime stays
    within ~1.6x of this probe on every model measured, while a wrong graph is off by the activations' scale.
    """
    tokens, vectors, y, z = args
    generator = torch.Generator().manual_seed(7)
    nudged = [t * (1 + 1e-6 * torch.randn(t.shape, generator=generator).to(t.device)) for t in (y, z)]
    with torch.no_grad():
        moved = graph(tokens, vectors, *nudged)
    return [float((a - b).abs().max()) for a, b in zip(expected, moved, strict=True)]


def check_export(
    model: nn.Module,
    path: str | Path,
    batch_sizes: Sequence[int] = (1, 5),
    steps: int = 4,
    atol: float = 1e-4,
    session: Any = None,
    grids: Sequence[tuple[int, int]] | None = None,
) -> float:
    """Run the exported step and the torch step side by side and return the largest absolute difference.

    Each batch size starts from random inputs and is chained for `steps` steps, feeding ONNX's y_out/z_out back
    in, so the check covers the states a served puzzle reaches, not just the first step. Both sides run every
    step from the SAME carry: free-running chains are no use as a test, because an untrained model is chaotic
    (a 1e-6 nudge of y grows to ~3e-2 in 16 steps in torch alone), so they would measure the model, not the
    export. Every output (y, z, logits, q_halt, q_continue) is compared; a difference above `atol` is accepted
    only if it is within 5x of the model's own fp32 noise floor (`rounding_sensitivity`). A `conv` model is checked
    on each of `grids` (H, W), by default two shapes other than the exported one. Otherwise raises
    RuntimeError naming the difference, output, batch and step: a graph that disagrees must not be served.
    """
    trm = _as_trm(model)
    session = session or make_session(path, "cpu")
    was_training = trm.training
    graph = StepGraph(trm).eval()  # reaches the model too; its mode is restored at the end
    generator = torch.Generator().manual_seed(1234)
    worst, floor = 0.0, 0.0
    try:
        shapes: Sequence[tuple[int, int] | None] = [None]
        if trm.config.mixer == "conv":
            shapes = list(grids or [(9, 9), (6, 11)])
        for grid, batch_size in [(g, b) for g in shapes for b in batch_sizes]:
            tokens, vectors, y, z = example_inputs(trm, batch_size, generator, grid)
            feeds = {"inputs": tokens.cpu().numpy(), "puzzle_vectors": vectors.cpu().numpy()}
            y_np, z_np = y.cpu().numpy(), z.cpu().numpy()
            for step in range(steps):
                args = (tokens, vectors, torch.from_numpy(y_np).to(y.device), torch.from_numpy(z_np).to(z.device))
                with torch.no_grad():
                    expected = graph(*args)
                got = session.run(list(OUTPUTS), {**feeds, "y": y_np, "z": z_np})
                diffs = []
                for name, want, have in zip(OUTPUTS, expected, got, strict=True):
                    if tuple(have.shape) != tuple(want.shape):
                        raise RuntimeError(f"{path}: output {name} has shape {have.shape}, torch gives {want.shape}")
                    diffs.append(float(np.max(np.abs(want.cpu().numpy() - have))) if have.size else 0.0)
                if not max(diffs) <= atol:  # `not <=` also catches NaN
                    noise = rounding_sensitivity(graph, args, expected)
                    floor = max(floor, *noise)
                    for name, diff, tol in zip(OUTPUTS, diffs, noise, strict=True):
                        if not diff <= max(atol, 5 * tol):
                            raise RuntimeError(
                                f"{path}: ONNX step does not reproduce the torch step: max abs diff {diff:.3g} > "
                                f"{atol:g} and > 5x the fp32 noise floor {tol:.3g} "
                                f"(output {name}, batch {batch_size}, grid {grid}, step {step + 1})"
                            )
                worst = max(worst, *diffs)
                y_np, z_np = got[0], got[1]
    finally:
        trm.train(was_training)
    if floor:
        log.warning(
            "ONNX differs from torch by up to %.3g, above %g but within the model's fp32 noise floor (%.3g): "
            "this model amplifies rounding, so parity is only checked to that level",
            worst,
            atol,
            floor,
        )
    log.info("ONNX parity ok: max abs diff %.3g over batches %s x %d steps", worst, list(batch_sizes), steps)
    return worst


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: export a checkpoint's step beside its weights (or to --out), check it, and stamp the weights' sha256."""
    parser = argparse.ArgumentParser(
        prog="python -m model.export_onnx", description="Export one TRM supervision step to ONNX."
    )
    parser.add_argument("weights_dir", type=Path, help="checkpoint directory with config.json + model.safetensors")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: WEIGHTS_DIR/model.onnx)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted ONNX-vs-torch difference")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # The exporter warns once per missing torchvision op at WARNING level; irrelevant to TRM and alarming to read.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # onnxscript's optimiser logs every deduplicated constant at INFO: hundreds of lines per export.
    for noisy in ("onnx_ir", "onnxscript"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    ckpt = load_checkpoint(args.weights_dir)
    out: Path = args.out or ckpt.path / "model.onnx"
    export_step(ckpt.model, out, opset=args.opset, exporter=args.exporter)
    check_export(ckpt.model, out, atol=args.atol)
    # The server reuses an export only when this stamp matches the weights it loaded (server/onnx_engine.py).
    out.with_name(out.name + ".sha256").write_text(ckpt.sha256 + "\n")
    log.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()

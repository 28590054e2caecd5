"""The Tiny Recursive Model: one small network that refines an answer y and a latent z, then says when to stop.

Reads top to bottom like the paper's pseudo-code. Names follow the paper: `y` is the answer state (the
reference code's z_H), `z` the latent (z_L), T = `h_cycles`, n = `l_cycles`. One call of `step` is one
supervision step; training and serving both drive the model only through `initial_carry`, `reset` and `step`.

With the size-agnostic `conv` mixer the grid's shape comes from the inputs: (B, H, W) for any H x W, or flat
(B, L) read as a square. The carry then holds prefix + H*W positions (`initial_carry(..., num_tokens=H*W)`).
"""

from __future__ import annotations

import math
import shutil
from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.config import TRMConfig
from model.layers import Grid, ReasoningNet, Rotary, lecun_linear, trunc_normal_


class Carry(NamedTuple):
    """What persists between supervision steps: y and z, each (B, prefix + tokens, hidden), always detached.

    tokens is seq_len, or H*W of the grid a `conv` model is stepping."""

    y: Tensor
    z: Tensor


class StepOutput(NamedTuple):
    carry: Carry
    logits: Tensor  # (B, seq_len or H*W, vocab): answer read from y without the prefix, row-major
    q_halt: Tensor  # (B,) fp32: halt when > 0 (sigmoid = halting probability)
    q_continue: Tensor  # (B,) fp32: only trained by HRM-style ACT; TRM ignores it


def plain_name(name: str) -> str:
    """A parameter name without the `_orig_mod.` that `torch.compile` inserts: the name an eager model uses, so
    weights move between compiled and eager copies (checkpoints, training state, adaptation)."""
    return name.replace("_orig_mod.", "")


class TRM(nn.Module):
    """Tiny Recursive Model with deep supervision and a learned halting head."""

    arch = "trm"
    puzzle_emb: Tensor
    y_init: Tensor
    z_init: Tensor

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        if config.arch != self.arch:
            raise ValueError(f"{type(self).__name__} cannot build arch {config.arch!r}")
        self.config = config
        d = config.hidden_size
        self.embed_scale = math.sqrt(d)

        # Token embedding std 1/sqrt(d): after the sqrt(d) scale the input has unit scale.
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        trunc_normal_(self.embed_tokens.weight, std=1.0 / self.embed_scale)
        self.embed_pos: nn.Embedding | None = None
        if config.pos_encodings == "learned":
            self.embed_pos = nn.Embedding(config.total_len, d)
            trunc_normal_(self.embed_pos.weight, std=1.0 / self.embed_scale)
        self.rotary: Rotary | None = None
        if config.pos_encodings == "rope" and config.mixer == "attention":
            self.rotary = Rotary(config.head_dim, config.total_len, config.rope_theta)

        # Puzzle table: a buffer, not a parameter. It is zero-initialised, excluded from the trainable count and
        # the main optimizer, and trained row-sparsely by sign-SGD (ARC has ~1M rows).
        self.register_buffer("puzzle_emb", torch.zeros(config.num_puzzle_ids, d))
        # Fixed (never trained) starting points of y and z, broadcast to every position of a fresh slot.
        self.register_buffer("y_init", trunc_normal_(torch.empty(d), std=1.0))
        self.register_buffer("z_init", trunc_normal_(torch.empty(d), std=1.0))

        self.build_networks()
        self.lm_head = lecun_linear(d, config.vocab_size)
        # Q head starts at "almost surely continue" (sigmoid(-5) ~ 0.7%) so early training is not cut short.
        self.q_head = nn.Linear(d, 2, bias=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    network_names: tuple[str, ...] = ("net",)
    """The sub-networks `build_networks` creates: what `compile_networks` compiles."""

    def build_networks(self) -> None:
        """TRM: ONE network does both the latent and the answer update."""
        self.net = ReasoningNet(self.config)

    def compile_networks(self, **options: object) -> None:
        """`torch.compile` each reasoning network in place (the step around them stays eager).

        On a CPU, inductor builds C++ with g++ at the first call; without one that call fails deep inside torch,
        so a missing compiler is reported here, before any work, by training and the server alike.
        """
        if self.y_init.device.type == "cpu" and shutil.which("g++") is None:
            raise RuntimeError(
                "torch.compile on a CPU needs a C++ compiler and there is no g++ on PATH: install one "
                "(apt-get install g++) or leave compilation off (training: --set train.compile=off; "
                "server: no --compile)"
            )
        for name in self.network_names:
            setattr(self, name, torch.compile(getattr(self, name), **options))  # type: ignore[call-overload]

    def halting_logit(self, q_halt: Tensor, q_continue: Tensor) -> Tensor:
        """The logit whose sign decides halting at inference: TRM halts when q_halt > 0."""
        return q_halt

    # ---------------------------------------------------------------- carry
    def initial_carry(
        self, batch_size: int, device: torch.device | None = None, num_tokens: int | None = None
    ) -> Carry:
        """A carry with every slot at the fixed initial state.

        `num_tokens` is the puzzle's token count, H*W for a `conv` model stepping another grid size; the default
        is `seq_len`, the only size the paper's mixers accept.
        """
        tokens = self.config.seq_len if num_tokens is None else num_tokens
        shape = (batch_size, self.config.puzzle_emb_len + tokens, self.config.hidden_size)
        device = device or self.y_init.device
        return Carry(self.y_init.to(device).expand(shape).clone(), self.z_init.to(device).expand(shape).clone())

    def reset(self, carry: Carry, mask: Tensor) -> Carry:
        """Put the slots where `mask` (B,) is true back to the initial state; others keep their carry."""
        m = mask.view(-1, 1, 1)
        return Carry(
            torch.where(m, self.y_init.to(carry.y.dtype), carry.y),
            torch.where(m, self.z_init.to(carry.z.dtype), carry.z),
        )

    # ---------------------------------------------------------------- input
    def grid_of(self, inputs: Tensor) -> Grid | None:
        """The (H, W) a `conv` model lays its tokens out on: from (B, H, W) inputs, or a square from flat (B, L).
        None for the paper's mixers, which see a sequence."""
        if self.config.mixer != "conv":
            return None
        if inputs.dim() == 3:
            return int(inputs.shape[1]), int(inputs.shape[2])
        side = math.isqrt(int(inputs.shape[1]))
        if side * side != inputs.shape[1]:
            raise ValueError(f"flat inputs of {inputs.shape[1]} tokens are not a square grid: pass (B, H, W)")
        return side, side

    def input_embeddings(self, inputs: Tensor, puzzle_vectors: Tensor) -> Tensor:
        """x: (B, prefix + L, D). Prefix slot 0 holds the puzzle vector, slots 1.. are zero; all scaled by sqrt(D)."""
        tokens = self.embed_tokens(inputs.long())  # (B, L, D)
        b, _, d = tokens.shape
        prefix = tokens.new_zeros(b, self.config.puzzle_emb_len, d)
        prefix[:, 0] = puzzle_vectors.to(tokens.dtype)
        x = torch.cat((prefix, tokens), dim=1)
        if self.embed_pos is not None:
            x = 0.70710678 * (x + self.embed_pos.weight.to(x.dtype))  # keep the variance of the sum at ~1
        return self.embed_scale * x

    # ---------------------------------------------------------------- recursion
    def latent_recursion(self, x: Tensor, y: Tensor, z: Tensor, grid: Grid | None = None) -> tuple[Tensor, Tensor]:
        """n updates of the latent from (x, y, z), then one update of the answer from (y, z)."""
        for _ in range(self.config.l_cycles):
            z = self.net(z, y + x, self.rotary, grid)
        y = self.net(y, z, self.rotary, grid)
        return y, z

    def deep_recursion(self, x: Tensor, y: Tensor, z: Tensor, grid: Grid | None = None) -> tuple[Tensor, Tensor]:
        """T recursions; only the last one is differentiated (the last n+1 network calls carry gradient)."""
        with torch.no_grad():
            for _ in range(self.config.h_cycles - 1):
                y, z = self.latent_recursion(x, y, z, grid)
        return self.latent_recursion(x, y, z, grid)

    def step(
        self, carry: Carry, inputs: Tensor, puzzle_ids: Tensor | None = None, puzzle_vectors: Tensor | None = None
    ) -> StepOutput:
        """One supervision step.

        Args:
            carry: the (y, z) of every slot, from `initial_carry`, `reset` or the previous step.
            inputs: (B, seq_len) token ids; a `conv` model also takes (B, H, W), or (B, L) for a square L.
            puzzle_ids: (B,) rows of the puzzle table; ignored when `puzzle_vectors` is given.
            puzzle_vectors: (B, D) prefix vectors to use instead of table rows (test-time adaptation, ONNX).

        Returns:
            The new carry (detached), answer logits (B, seq_len or H*W, vocab) and the Q head's halt/continue
            logits.
        """
        if puzzle_vectors is None:
            if puzzle_ids is None:
                puzzle_ids = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
            puzzle_vectors = self.puzzle_emb[puzzle_ids.long()]
        grid = self.grid_of(inputs)
        x = self.input_embeddings(inputs if grid is None else inputs.flatten(1), puzzle_vectors)
        y, z = self.deep_recursion(x, carry.y, carry.z, grid)
        logits = self.lm_head(y[:, self.config.puzzle_emb_len :])
        q = self.q_head(y[:, 0]).float()
        return StepOutput(Carry(y.detach(), z.detach()), logits, q[:, 0], q[:, 1])


def count_trainable_parameters(model: nn.Module) -> int:
    """Trainable parameters; the puzzle table and the initial states are buffers and do not count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

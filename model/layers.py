"""Building blocks of the TRM network, matching the reference code's maths and weight layouts.

Post-norm blocks with a weightless RMSNorm, SwiGLU with the reference's width rounding, non-causal attention
with rotary positions, the sequence-axis MLP that replaces attention in the paper's TRM-MLP, and (beyond the paper)
a local 2D mixer that has no size at all. Fused weight
layouts (qkv rows = [q | k | v], gate_up rows = [gate | up]) are kept so official checkpoints convert by renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import TRMConfig


def trunc_normal_(tensor: Tensor, std: float = 1.0, bound: float = 2.0) -> Tensor:
    """JAX-style truncated normal: cut at +-`bound` standard units, then rescaled so the result has std `std`.

    Truncation at +-2 shrinks the standard deviation to ~0.88; dividing by that puts the cut at +-2.27*std,
    which is what the reference's initialiser does (TRM_REFERENCE.md section 9).
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        lo, hi = math.erf(-bound / sqrt2), math.erf(bound / sqrt2)
        z = (hi - lo) / 2.0
        pdf_u = math.exp(-0.5 * bound**2) / math.sqrt(2 * math.pi)
        # variance of a unit normal truncated to [-b, b]: 1 - 2*b*phi(b)/(Phi(b) - Phi(-b)), and z = Phi(b) - Phi(-b)
        comp_std = math.sqrt(1.0 - 2 * bound * pdf_u / z)
        tensor.uniform_(lo, hi).erfinv_().mul_(sqrt2 * std / comp_std)
        tensor.clamp_(-bound * std / comp_std, bound * std / comp_std)
    return tensor


def lecun_linear(in_features: int, out_features: int, bias: bool = False) -> nn.Linear:
    """Linear layer with truncated LeCun-normal init (std 1/sqrt(fan_in)) and zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    trunc_normal_(layer.weight, std=1.0 / math.sqrt(in_features))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last axis with no learnable scale, computed in fp32 and cast back."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    return x32.to(dtype)


def swiglu_width(hidden: int, expansion: float) -> int:
    """Inner SwiGLU width: round(expansion * hidden * 2/3), rounded up to a multiple of 256 (1536 for 512)."""
    inner = round(expansion * hidden * 2 / 3)
    return -(-inner // 256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, expansion: float) -> None:
        super().__init__()
        inner = swiglu_width(hidden, expansion)
        self.gate_up_proj = lecun_linear(hidden, 2 * inner)
        self.down_proj = lecun_linear(inner, hidden)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)  # type: ignore[no-any-return]


class Rotary(nn.Module):
    """Rotary position tables for every position, prefix included (positions 0..total_len-1).

    The tables are derived, not learned, so they are non-persistent buffers and never reach a checkpoint.
    """

    cos: Tensor
    sin: Tensor

    def __init__(self, head_dim: int, length: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, head_dim): frequencies repeated for rotate-half
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE in fp32 on x of shape (B, L, heads, head_dim)."""
    dtype = x.dtype
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    out = x32 * cos[:, None, :] + rotated * sin[:, None, :]
    return out.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv_proj = lecun_linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = lecun_linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, rotary: Rotary | None) -> Tensor:
        b, length, _ = x.shape
        qkv = self.qkv_proj(x).view(b, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)  # each (B, L, heads, head_dim)
        if rotary is not None:
            q = apply_rotary(q, rotary.cos, rotary.sin)
            k = apply_rotary(k, rotary.cos, rotary.sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, -1))  # type: ignore[no-any-return]


Grid = tuple[int, int]
"""(H, W) of the puzzle grid laid out row-major after the prefix: what the local mixer needs to see neighbours."""


def circular_pad(cells: Tensor) -> Tensor:
    """(B, D, H, W) -> (B, D, H+2, W+2): the grid wrapped onto a torus, one cell each side.

    Written as slices and concatenations, not `F.pad(mode="circular")`, so an ONNX export keeps H and W dynamic.
    """
    cells = torch.cat((cells[:, :, -1:], cells, cells[:, :, :1]), dim=2)
    return torch.cat((cells[..., -1:], cells, cells[..., :1]), dim=3)


class LocalMixer(nn.Module):
    """Size-agnostic token mixing: a depthwise 3x3 convolution over the H x W grid, and a pooled summary for the prefix.

    Why this shape:
    * Nothing in it depends on H or W, and no token knows where it is, so one set of weights runs on any grid and
      a maze's answer can only come from local evidence spread step by step: the recurrent-convolution setting in
      which "Deep Thinking" networks (Bansal et al., 2022) solve mazes far larger than they trained on by
      iterating longer. A depthwise kernel costs 9*D multiply-adds a cell (a full 3x3 convolution would cost
      9*D*D, more than the SwiGLU that follows and does the channel mixing anyway).
    * The grid is a torus (circular padding): the last row neighbours the first. Zero padding would mark the
      border, which is a position signal; on a torus every cell is alike, so translating a puzzle inside a larger
      canvas (a cyclic shift) shifts the answer exactly, for any weights. Mazes need a wall row and column between
      the torus' copies, which the maze data and codec add (a wall ring already is one).
    * The prefix (puzzle vector in slot 0, read by the Q head) has no place on the grid. Its slots receive a
      projection of the grid's per-channel mean AND max: a summary whose size does not grow with the grid. The
      max is there for halting: "every cell is settled" is a statement about the worst cell, which a mean dilutes
      on a big grid (one open dead end in a 61x61 maze moves a mean by 1/3721) while a max does not.
    * Grid cells never read the prefix: the answer is a purely local function of the puzzle, which is what makes
      the translation property exact and extrapolation plausible. The puzzle vector so only reaches the Q head;
      mazes and Sudoku have one shared vector anyway.
    * ARC is task-conditioned and its rules are often global, so `conv_broadcast` adds one projection of (prefix
      slot 0, grid mean, grid max) to every cell: the task's vector and whole-grid facts reach each cell in one
      layer instead of spreading a cell per layer. It is the same for every cell, so translation still commutes.
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.prefix_len = config.puzzle_emb_len
        self.conv_weight = nn.Parameter(trunc_normal_(torch.empty(d, 1, 3, 3), std=1.0 / 3.0))  # LeCun: fan-in 9
        self.pool_proj = lecun_linear(2 * d, d)
        self.broadcast_proj = lecun_linear(3 * d, d) if config.conv_broadcast else None

    def forward(self, h: Tensor, grid: Grid) -> Tensor:
        b, _, d = h.shape
        height, width = grid
        p = self.prefix_len
        tokens = h[:, p:]  # (B, H*W, D)
        cells = tokens.transpose(1, 2).reshape(b, d, height, width)
        mixed = F.conv2d(circular_pad(cells), self.conv_weight, groups=d)  # (B, D, H, W)
        pooled = torch.cat((tokens.mean(dim=1), tokens.amax(dim=1)), dim=-1)  # (B, 2D)
        prefix = self.pool_proj(pooled)[:, None].expand(b, p, d)
        if self.broadcast_proj is not None:
            mixed = mixed + self.broadcast_proj(torch.cat((h[:, 0], pooled), dim=-1))[:, :, None, None]
        return torch.cat((prefix, mixed.flatten(2).transpose(1, 2)), dim=1)


class Block(nn.Module):
    """Post-norm block: h = norm(h + mix(h)); h = norm(h + SwiGLU(h)).

    With mixer "mlp" the token mixer is a SwiGLU across the sequence axis (width total_len), and its residual
    norm is taken over that axis too, before transposing back, as the reference does. With mixer "conv" it is the
    `LocalMixer`, which needs the grid's (H, W).
    """

    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        self.attn: Attention | None = None
        self.mlp_t: SwiGLU | None = None
        self.local: LocalMixer | None = None
        if config.mixer == "attention":
            self.attn = Attention(config)
        elif config.mixer == "conv":
            self.local = LocalMixer(config)
        else:
            self.mlp_t = SwiGLU(config.total_len, config.expansion)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, h: Tensor, rotary: Rotary | None, grid: Grid | None = None) -> Tensor:
        if self.mlp_t is not None:
            ht = h.transpose(1, 2)  # (B, D, L)
            ht = rms_norm(ht + self.mlp_t(ht), self.eps)
            h = ht.transpose(1, 2)
        elif self.local is not None:
            if grid is None:
                raise ValueError("mixer 'conv' needs the grid's (H, W)")
            h = rms_norm(h + self.local(h, grid), self.eps)
        else:
            assert self.attn is not None
            h = rms_norm(h + self.attn(h, rotary), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningNet(nn.Module):
    """The tiny network: add the injection to the state, then run the blocks (net(a + b) in the paper)."""

    def __init__(self, config: TRMConfig, num_layers: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(config) for _ in range(num_layers or config.num_layers))

    def forward(self, state: Tensor, injection: Tensor, rotary: Rotary | None, grid: Grid | None = None) -> Tensor:
        h = state + injection
        for layer in self.layers:
            h = layer(h, rotary, grid)
        return h

"""The Hierarchical Reasoning Model (HRM), TRM's predecessor, behind the same step interface.

Two separate networks at two frequencies: the low-level f_L updates z_L = f_L(z_L + z_H + x) L_cycles times
per high-level update z_H = f_H(z_H + z_L), H_cycles times per supervision step. Only the LAST f_L call and the
last f_H call are differentiated (HRM's one-step gradient, justified by a fixed-point argument), where TRM
backpropagates through a whole recursion. The answer is read from z_H, so the carry keeps TRM's names:
`y` = z_H and `z` = z_L. Halting uses Q-learning: halt when the halt logit exceeds the continue logit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.layers import Grid, ReasoningNet
from model.trm import TRM


class HRM(TRM):
    arch = "hrm"
    network_names = ("l_net", "h_net")

    def build_networks(self) -> None:
        self.l_net = ReasoningNet(self.config)  # f_L, `num_layers` blocks
        self.h_net = ReasoningNet(self.config)  # f_H, its own weights

    def halting_logit(self, q_halt: Tensor, q_continue: Tensor) -> Tensor:
        """HRM halts when q_halt > q_continue, i.e. when their difference is positive."""
        return q_halt - q_continue

    def deep_recursion(self, x: Tensor, y: Tensor, z: Tensor, grid: Grid | None = None) -> tuple[Tensor, Tensor]:
        """H_cycles x (L_cycles f_L updates, then one f_H update); gradient only through the last of each."""
        cfg = self.config
        with torch.no_grad():
            for h in range(cfg.h_cycles):
                for i in range(cfg.l_cycles):
                    if not (h == cfg.h_cycles - 1 and i == cfg.l_cycles - 1):
                        z = self.l_net(z, y + x, self.rotary, grid)
                if h != cfg.h_cycles - 1:
                    y = self.h_net(y, z, self.rotary, grid)
        z = self.l_net(z, y + x, self.rotary, grid)
        y = self.h_net(y, z, self.rotary, grid)
        return y, z

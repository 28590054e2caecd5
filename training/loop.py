"""The deep-supervision training loop with ACT, as in the reference.

Every optimizer step is ONE supervision step over a batch of slots. A slot keeps its puzzle and its carry
(y, z) across optimizer steps until it halts (Q head says so, or `halt_max_steps` is reached); only halted slots
take rows of the next batch, the rest of that batch is dropped. Exploration sometimes forbids an early halt.

Data parallelism: every rank draws the same global batch and random numbers and works on its slice; gradients
(and the sparse puzzle-row gradients) are summed across ranks, so N processes give the weights one process
gives with the same global batch. The model is driven through `step`, not `forward`, so the all-reduce is
done here rather than by a DistributedDataParallel wrapper.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.device import resolve_device
from model.factory import build_model
from model.precision import autocast, dtype_name, resolve_dtype
from model.trm import TRM, Carry, count_trainable_parameters, plain_name
from training.config import Preset
from training.data.dataset import PuzzleSet
from training.losses import act_loss, q_continue_target
from training.optim import EMA, build_optimizer, lr_at, sign_sgd_rows
from training.sampler import Augment, BatchStream
from training.scoring import evaluate_by_canvas

log = logging.getLogger(__name__)

# Model settings that schedule the ACT loop without changing what one step computes: a stage started from another
# run's weights may change them (e.g. a longer horizon, so the network learns to keep improving past the first one's).
STAGE_SETTINGS = ("halt_max_steps", "halt_exploration_prob")

MAX_BAD_STEPS = 16  # non-finite steps in a row before training stops


@dataclass
class ACTState:
    """Per-slot training state that persists across optimizer steps (the reference's ACT carry)."""

    carry: Carry
    steps: Tensor  # (b,) supervision steps taken by the slot's current puzzle
    halted: Tensor  # (b,) bool; True slots take new data at the next step
    inputs: Tensor  # (b, L)
    labels: Tensor  # (b, L)
    puzzle_ids: Tensor  # (b,)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world)

    def sum_(self, tensor: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, tensor: Tensor) -> Tensor:
        if self.world == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)


def summarize(window: list[dict[str, float]]) -> dict[str, float]:
    """Average losses over steps, and accuracies over the samples that halted in the window."""
    halted = sum(s["halted"] for s in window)
    count = max(1.0, halted)
    return {
        "lr": window[-1]["lr"],
        "lm_loss": sum(s["lm_loss"] for s in window) / len(window),
        "q_halt_loss": sum(s["q_halt_loss"] for s in window) / len(window),
        "halted": halted,
        "accuracy": sum(s["accuracy_sum"] for s in window) / count,
        "exact_accuracy": sum(s["exact_sum"] for s in window) / count,
        "steps": sum(s["steps_sum"] for s in window) / count,
        "q_halt_accuracy": sum(s["q_halt_correct_sum"] for s in window) / count,
    }


class Trainer:
    def __init__(
        self,
        preset: Preset,
        train_data: PuzzleSet,
        test_data: PuzzleSet | None,
        run_dir: Path,
        augment: Augment | None = None,
        device: torch.device | None = None,
        resuming: bool = False,
    ) -> None:
        self.preset = preset
        self.cfg = preset.train
        self.config = preset.model
        self.device = device or resolve_device()
        self.dist = Distributed.from_env(self.device)
        if self.cfg.global_batch_size % self.dist.world:
            raise ValueError(f"global batch {self.cfg.global_batch_size} not divisible by {self.dist.world} ranks")
        self.local_batch = self.cfg.global_batch_size // self.dist.world
        self.run_dir = run_dir
        self.test_data = test_data
        if self.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads or max(1, (os.cpu_count() or 1) // self.dist.world))
        self.dtype = resolve_dtype(self.cfg.dtype, self.device)
        self.precision = dtype_name(self.dtype)  # what `auto` resolved to: recorded with the weights

        torch.manual_seed(self.cfg.seed)
        self.model = build_model(self.config).to(self.device)
        # A resumed run takes its weights and this record from the saved state (`load_state`), so the starting
        # checkpoint may since have moved or been replaced.
        self.init_record: dict[str, str] | None = None
        if self.cfg.init_from and not resuming:
            self.init_record = self._start_from(Path(self.cfg.init_from))
        self.model.train()
        self.step_fn = self.model.step
        if self.cfg.compile == "on" or (self.cfg.compile == "auto" and self.device.type == "cuda"):
            self.model.compile_networks()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            self.cfg.optimizer, params, self.cfg.lr, (self.cfg.beta1, self.cfg.beta2), self.cfg.weight_decay
        )
        self.ema = EMA(self.model, self.cfg.ema_rate) if self.cfg.ema else None
        self.stream = BatchStream(
            train_data, self.cfg.global_batch_size, self.cfg.seed, augment, bucket_run=self.cfg.bucket_run
        )
        self.steps_per_epoch = max(1, self.stream.examples_per_epoch() // self.cfg.global_batch_size)
        self.total_steps = self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch
        self.eval_every = self.cfg.eval_every_steps or self.cfg.eval_interval * self.steps_per_epoch
        self.step = 0
        # Steps per precision over all sittings: `auto` resolves per machine, and a resumed run may change it.
        self.steps_by_dtype: dict[str, int] = {}
        self.bad_steps = 0  # non-finite steps in a row
        self.skipped_steps = 0
        self.act = self.fresh_act_state()

    def _start_from(self, directory: Path) -> dict[str, str]:
        """Copy a checkpoint's weights into the fresh model (before compiling, so the names match); returns what
        the saved weights record about it. The same shapes are not enough: a different recursion depth or mixer
        would load silently and train a different model, so the whole architecture must match. The ACT schedule
        (`STAGE_SETTINGS`) is not architecture: one step computes the same with any horizon, so a later stage may
        train with a longer one."""
        ckpt = load_checkpoint(directory)
        skip = {"training", *STAGE_SETTINGS}
        theirs = {k: v for k, v in ckpt.config.to_dict().items() if k not in skip}
        mine = {k: v for k, v in self.config.to_dict().items() if k not in skip}
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
            raise CheckpointError(f"{directory}: train.init_from has another architecture than the preset ({detail})")
        self.model.load_state_dict(ckpt.model.state_dict(), strict=True)
        log.info("starting from the weights of %s (sha256 %s)", directory, ckpt.sha256[:12])
        return {"path": str(directory), "sha256": ckpt.sha256}

    @property
    def trainable_parameters(self) -> int:
        return count_trainable_parameters(self.model)

    def fresh_act_state(self, length: int | None = None) -> ACTState:
        """Every slot halted, so the next step fills it; `length` tokens a slot (a `conv` model's canvas), by
        default the model's own."""
        b, length = self.local_batch, length or self.config.seq_len
        sized = {} if length == self.config.seq_len else {"num_tokens": length}
        return ACTState(
            carry=self.model.initial_carry(b, self.device, **sized),
            steps=torch.zeros(b, dtype=torch.long, device=self.device),
            halted=torch.ones(b, dtype=torch.bool, device=self.device),
            inputs=torch.zeros(b, length, dtype=torch.long, device=self.device),
            labels=torch.zeros(b, length, dtype=torch.long, device=self.device),
            puzzle_ids=torch.zeros(b, dtype=torch.long, device=self.device),
        )

    # ------------------------------------------------------------------ one optimizer step
    def skip_non_finite_step(self) -> None:
        """A NaN/Inf gradient updates nothing (weights, table, EMA); a run of them stops training loudly.

        Without this guard one bad batch turns every weight, and then the EMA copy that gets shipped, into NaN
        (it happened to the arc-cpu run at step ~2,940), and the run keeps going, saving NaN checkpoints.
        """
        self.bad_steps += 1
        self.skipped_steps += 1
        log.warning("step %d: non-finite gradient, update skipped (%d in a row)", self.step + 1, self.bad_steps)
        if self.bad_steps >= MAX_BAD_STEPS:
            raise FloatingPointError(
                f"training diverged: {self.bad_steps} non-finite steps in a row at step {self.step + 1}; "
                "resume from the last saved state with a lower lr or train.grad_clip"
            )

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns losses and, for the slots that halted, sums to feed `summarize`."""
        batch = self.stream.next()
        lo = self.dist.rank * self.local_batch
        sl = slice(lo, lo + self.local_batch)
        new_inputs = torch.as_tensor(batch.inputs[sl], device=self.device).long()
        new_labels = torch.as_tensor(batch.labels[sl], device=self.device).long()
        new_ids = torch.as_tensor(batch.puzzle_ids[sl], device=self.device).long()
        if new_inputs.shape[1] != self.act.inputs.shape[1]:
            # A size-agnostic model's batch on another canvas: its slots cannot carry over, every slot restarts.
            self.act = self.fresh_act_state(new_inputs.shape[1])

        act = self.act
        h = act.halted
        carry = self.model.reset(act.carry, h)
        steps = torch.where(h, 0, act.steps)
        inputs = torch.where(h[:, None], new_inputs, act.inputs)
        labels = torch.where(h[:, None], new_labels, act.labels)
        ids = torch.where(h, new_ids, act.puzzle_ids)

        train_table = self.cfg.puzzle_emb_lr > 0
        vectors = self.model.puzzle_emb[ids].clone().requires_grad_(train_table)
        # The reference counts this step before scheduling it: the first step gets lr / warmup, not 0.
        lr = lr_at(self.step + 1, self.cfg.lr, self.cfg.lr_warmup_steps, self.total_steps, self.cfg.lr_min_ratio)
        emb_lr = lr_at(
            self.step + 1, self.cfg.puzzle_emb_lr, self.cfg.lr_warmup_steps, self.total_steps, self.cfg.lr_min_ratio
        )
        with autocast(self.device, self.dtype):
            out = self.step_fn(carry, inputs, puzzle_vectors=vectors)
        q_continue = target = None
        if not self.config.no_act_continue:
            # HRM's bootstrapped Q-learning target for "continue": a second, gradient-free pass from the new carry
            # scores the next step; at the last allowed step only halting remains, so its value is the target.
            with torch.no_grad(), autocast(self.device, self.dtype):
                nxt = self.step_fn(out.carry, inputs, puzzle_vectors=vectors.detach())
            target = q_continue_target(nxt.q_halt, nxt.q_continue, steps + 1 >= self.config.halt_max_steps)
            q_continue = out.q_continue
        loss = act_loss(out.logits, labels, out.q_halt, self.cfg.loss, q_continue, target)
        (loss.total / self.cfg.global_batch_size).backward()  # type: ignore[no-untyped-call]

        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.dist.world > 1:
            flat = torch.cat(
                [p.grad.flatten() if p.grad is not None else torch.zeros_like(p).flatten() for p in params]
            )
            self.dist.sum_(flat)
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p).clone()
                offset += n
        # Gradients are identical on every rank after the all-reduce, so every rank takes the same decision.
        grads = [p.grad for p in params if p.grad is not None]
        finite = bool(torch.isfinite(torch.stack([g.norm() for g in grads])).all()) if grads else True
        if finite:
            self.bad_steps = 0
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            if train_table and vectors.grad is not None:
                all_ids = self.dist.gather(ids)
                all_grads = self.dist.gather(vectors.grad)
                sign_sgd_rows(self.model.puzzle_emb, all_ids, all_grads, emb_lr, self.cfg.puzzle_emb_weight_decay)
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.skip_non_finite_step()
        self.optimizer.zero_grad(set_to_none=True)

        with torch.no_grad():
            steps = steps + 1
            max_steps = self.config.halt_max_steps
            halt_logit = self.model.halting_logit(out.q_halt.detach(), out.q_continue.detach())
            halted = (steps >= max_steps) | (halt_logit > 0)
            # Exploration, drawn for the global batch so every rank sees the same numbers.
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.step)
            explore = torch.rand(self.cfg.global_batch_size, generator=gen)[sl] < self.config.halt_exploration_prob
            min_steps = torch.randint(2, max_steps + 1, (self.cfg.global_batch_size,), generator=gen)[sl]
            min_steps = (explore * min_steps).to(self.device)
            halted = halted & (steps >= min_steps) | (steps >= max_steps)
            if not finite:
                halted = torch.ones_like(halted)  # a non-finite carry must not feed the next step: start afresh
        self.act = ACTState(out.carry, steps, halted, inputs, labels, ids)
        self.step += 1
        self.steps_by_dtype[self.precision] = self.steps_by_dtype.get(self.precision, 0) + 1

        # Metrics over halted slots (the reference's convention), summed across ranks.
        hf = halted.float()
        stats = torch.stack(
            [
                hf.sum(),
                (loss.correct_tokens / loss.valid_tokens.clamp(min=1) * hf).sum(),
                (loss.exact.float() * hf).sum(),
                (steps.float() * hf).sum(),
                ((out.q_halt.detach() > 0) == loss.exact).float().mul(hf).sum(),
                loss.lm,
                loss.q_halt,
            ]
        ).double()
        stats = self.dist.sum_(stats.to(self.device)).cpu()
        return {
            "lr": lr,
            "halted": float(stats[0]),
            "accuracy_sum": float(stats[1]),
            "exact_sum": float(stats[2]),
            "steps_sum": float(stats[3]),
            "q_halt_correct_sum": float(stats[4]),
            "lm_loss": float(stats[5]) / self.cfg.global_batch_size,
            "q_halt_loss": float(stats[6]) / self.cfg.global_batch_size,
        }

    # ------------------------------------------------------------------ evaluation and saving
    def ema_model(self) -> TRM:
        """A copy of the model holding the EMA weights (or the live ones without EMA), in eval mode."""
        model = build_model(self.config).to(self.device)
        state = self.ema.state_dict_for(self.model) if self.ema is not None else self.model.state_dict()
        model.load_state_dict({plain_name(k): v for k, v in state.items()})
        model.eval()
        return model

    def evaluate(self) -> dict[str, Any]:
        if self.test_data is None:
            return {}
        model = self.ema_model()
        result = evaluate_by_canvas(
            model,
            self.test_data,
            batch_size=max(64, self.local_batch),
            device=self.device,
            dtype=self.dtype,
            limit=self.cfg.eval_samples,
        )
        return {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}

    def save_weights(self, directory: Path) -> Path:
        """The EMA weights, with the precision this sitting trained in and the steps each precision ran over
        the whole run: `auto` resolves per machine, so the preset alone does not say how a checkpoint was made."""
        training = {**self.config.training, "dtype": self.precision, "steps_by_dtype": self.steps_by_dtype}
        if self.init_record:
            training["init_from"] = self.init_record
        return save_checkpoint(self.ema_model(), replace(self.config, training=training), directory)

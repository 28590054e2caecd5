"""The ARC recipe's defaults: one home for the server's settings and `training.evaluate_arc`.

An ARC answer is voted over augmented variants of the task; a task the model never saw first gets its variants'
puzzle vectors fitted to the demonstrations (test-time adaptation, `model.adapt`). How many variants, how many
fitting steps and how much wall time that takes decide both the answer and its cost, so the server and the
evaluation read them from here and a card's pass@2 is what the server does with its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArcRecipe:
    known_variants: int = 8
    """Known tasks: trained variants (puzzle-table rows) run and voted per test input. The reference votes over up
    to 1001; 8 keeps a CPU answer within seconds."""
    variants: int = 8
    """Unseen tasks: augmented variants (identity included) fitted by test-time adaptation and voted."""
    adapt_steps: int = 100
    """Optimiser steps of test-time adaptation at most (0 answers with the average trained embedding)."""
    adapt_time_budget_s: float = 10.0
    """Wall-clock cap of one task's adaptation."""
    adapt_lr: float = 3e-2
    """Adam learning rate of the fitted puzzle vectors."""
    adapt_supervision_steps: int = 1
    """Supervision steps per adaptation step, carrying the carry forward; each one multiplies its cost."""
    variant_seed: int = 0
    """Seeds the augmentations of an unseen task, so the same task gets the same variants (and answer) each time."""


ARC_DEFAULTS = ArcRecipe()

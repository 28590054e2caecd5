"""The loaded models: checkpoints found under the weights directory, their codecs and engines.

Model names come from directory names found at start-up, and requests are matched against this table only,
so nothing a client sends ever becomes a filesystem path.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from inference.canvas import MARGIN, canvas_sides
from inference.escalation import DEFAULT_BUDGET_STEPS
from inference.halting import Calibration, HaltingPolicy, HaltMode, Operator
from model.checkpoint import CONFIG_FILE, Checkpoint, CheckpointError, load_checkpoint, read_card_metrics
from model.config import TRMConfig
from model.device import resolve_device
from model.precision import resolve_dtype
from model.puzzles import get_codec
from model.puzzles.arc import MAX_SIDE as ARC_MAX_SIDE
from model.puzzles.arc import ArcCodec
from model.puzzles.base import Codec
from model.puzzles.maze import MazeCodec
from model.trm import count_trainable_parameters
from server.engine import Engine, TorchEngine, configure_cpu_threads
from server.settings import Settings

log = logging.getLogger(__name__)

PEOPLE_SPEC = "generate:maze-people:"
"""The evaluation spec of held-out people mazes (`training.data.sources`), whose records routing compares."""


@dataclass
class ModelEntry:
    name: str
    checkpoint: Checkpoint
    codec: Codec
    engine: Engine
    card: dict[str, Any] = field(default_factory=dict)
    identifiers: list[str] = field(default_factory=list)
    """Puzzle-id names (ARC task variants); index = row of the puzzle table."""
    operator: Operator = field(default_factory=Operator)
    """The server's own halting defaults (settings), which beat the card's calibration."""
    pool: str = ""
    """The scheduler queue this entry's puzzles go to: its name, or for one canvas of a size-agnostic model
    "name@SIDExSIDE" (`canvases`)."""
    canvases: list[ModelEntry] = field(default_factory=list)
    """A size-agnostic (`conv`) maze model: one entry per canvas size, smallest first, the model's own canvas
    being this entry. They share the network; each has its codec and its engine, so puzzles batch by size."""
    max_side: int = 0
    """A size-agnostic model (the entry of its own canvas): the longest maze side it takes, `max_maze_side`; 0
    elsewhere, where the grid side is the limit."""

    def for_side(self, side: int | None) -> ModelEntry:
        """The entry that runs a puzzle whose longer side is `side`: this one, or the smallest canvas that fits."""
        if not self.canvases:
            return self
        if side is None:  # an ARC task that does not parse: the largest canvas's codec names what is wrong
            return self.canvases[-1] if self.family == "arc" else self
        return next((c for c in self.canvases if c.codec.fits >= side), self.canvases[-1])  # type: ignore[attr-defined]

    @cached_property
    def measured(self) -> dict[int, float]:
        """The card's held-out exact accuracy on people mazes by side, read once (`measured_maze_accuracy`)."""
        return measured_maze_accuracy(self.card)

    def accuracy_at(self, side: int) -> float | None:
        """Measured exact accuracy for a maze of `side` (inside its ring): the figure of the smallest measured side
        not below it, which understates it as accuracy falls with size; None without one."""
        sides = [s for s in self.measured if s >= side]
        return self.measured[min(sides)] if sides else None

    @cached_property
    def records(self) -> dict[tuple[str, int, str, int], float]:
        """The card's held-out exact accuracies by how they were measured (`held_out_records`), read once."""
        return held_out_records(self.card)

    def dominates(self, other: ModelEntry) -> bool:
        """Whether this model is at least as accurate as `other` on every held-out set both cards measured the same
        way, and more accurate on one of them."""
        shared = self.records.keys() & other.records.keys()
        return (
            bool(shared)
            and all(self.records[k] >= other.records[k] for k in shared)
            and any(self.records[k] > other.records[k] for k in shared)
        )

    @cached_property
    def calibration(self) -> Calibration:
        """The card's halting calibration, read once."""
        return Calibration.from_card(self.card, self.config)

    @property
    def config(self) -> TRMConfig:
        return self.checkpoint.config

    @property
    def family(self) -> str:
        return self.config.family

    def policy(
        self,
        views: int = 1,
        mode: HaltMode = "adaptive",
        max_steps: int | None = None,
        budget: int = DEFAULT_BUDGET_STEPS,
    ) -> HaltingPolicy:
        """How a request's puzzles halt (`inference.halting`): its `max_steps`, else the server's default, else the
        horizon calibrated for that many views and its step `budget` (a model may keep improving past the horizon
        it trained with: maze-15x15 45.8% exact at 8 steps, 49.3% at 16), else `halt_max_steps`; the threshold
        likewise."""
        canvas = self.codec.side if size_agnostic(self.config) else None  # type: ignore[attr-defined]
        return self.calibration.policy(
            views, mode, max_steps=max_steps, operator=self.operator, canvas=canvas, budget=budget
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "puzzle": self.family,
            "arch": self.config.arch,
            "grid_size": self.config.grid_side,
            "max_side": self.max_side or self.config.grid_side,
            "canvases": [c.codec.side for c in self.canvases],  # type: ignore[attr-defined]
            "trained_sides": trained_sides(self.config),
            "config": {k: v for k, v in self.config.to_dict().items() if k != "training"},
            "trainable_parameters": count_trainable_parameters(self.checkpoint.model),
            "sha256": self.checkpoint.sha256,
            "backend": self.engine.backend,
            "provider": self.engine.provider,
            "halt_threshold": self.policy().threshold,
            "max_steps": self.policy().max_steps,
            "max_steps_without_budget": self.policy(budget=0).max_steps,  # one view that no further view backs up
            "halt_threshold_by_views": {  # the view counts calibrated apart; others use halt_threshold
                str(k): self.policy(k).threshold for k in self.calibration.calibrated_views()
            },
            "slots": self.engine.slots,
            "card": self.card,
            "known_tasks": len({n.split("|||")[0] for n in self.identifiers if n != "<blank>"}),
        }


def find_checkpoints(weights_dir: Path, names: list[str]) -> list[Path]:
    if not weights_dir.is_dir():
        raise CheckpointError(f"{weights_dir}: weights directory not found")
    if names:
        return [weights_dir / name for name in names]
    return sorted(p for p in weights_dir.iterdir() if (p / CONFIG_FILE).is_file())


def build_engine(ckpt: Checkpoint, settings: Settings, canvas: int | None = None) -> Engine:
    """The checkpoint's engine; with `canvas`, a size-agnostic model's engine for that canvas side, its slots cut so
    the pool holds about `canvas_tokens` cells."""
    device = resolve_device(settings.device)
    backend = settings.backend
    if backend == "onnx":
        from server.onnx_engine import OnnxEngine

        engine: Engine = OnnxEngine.from_checkpoint(ckpt, settings.slots, device, settings.threads)
        return engine
    dtype = resolve_dtype(settings.dtype, device)
    config, slots = ckpt.config, settings.slots
    if canvas is not None:
        config = replace(config, seq_len=canvas * canvas)
        slots = max(1, min(slots, settings.canvas_tokens // config.seq_len))
    chunk = settings.cpu_chunk_tokens if device.type == "cpu" else 0
    return TorchEngine(ckpt.model, config, slots, device, dtype, settings.compile, chunk)


def size_agnostic(config: TRMConfig) -> bool:
    """A maze or ARC model whose weights have no size (`conv` mixer): it serves any maze up to `max_maze_side`,
    any ARC task up to 30x30, on the smallest of its canvases that takes the puzzle."""
    return config.family in ("maze", "arc") and config.mixer == "conv"


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}
        self.broken: dict[str, str] = {}

    def load(self) -> None:
        """Load, validate and warm up every checkpoint; a broken one fails start-up or is skipped (setting)."""
        if resolve_device(self.settings.device).type == "cpu":
            configure_cpu_threads(self.settings.threads)
        hook = engine_hook(self.settings.engine_hook)
        for path in find_checkpoints(self.settings.weights_dir, self.settings.models):
            try:
                ckpt = load_checkpoint(path)
                entry = self._entry(path, ckpt)
            except (CheckpointError, ValueError, OSError) as exc:
                if self.settings.on_broken_checkpoint == "fail":
                    raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc
                log.error("skipping broken checkpoint %s: %s", path, exc)
                self.broken[path.name] = str(exc)
                continue
            if hook is not None:
                hook(entry.engine)
            self.models[entry.name] = entry
            log.info(
                "loaded %s (%s, %dx%d, %s on %s)",
                entry.name,
                entry.family,
                entry.config.grid_side,
                entry.config.grid_side,
                entry.engine.backend,
                entry.engine.provider,
            )
        if not self.models:
            raise CheckpointError(f"no loadable checkpoint under {self.settings.weights_dir}")

    def _entry(self, path: Path, ckpt: Checkpoint) -> ModelEntry:
        """A loaded, warmed-up entry; a size-agnostic maze model gets its canvas pools (torch backend only: the
        ONNX engine keeps the exported canvas)."""
        config = ckpt.config
        card, ids = read_card_metrics(path), _identifiers(path)
        operator = Operator(self.settings.halt_threshold, self.settings.default_max_steps or None)

        def make(canvas: int | None) -> ModelEntry:
            side = canvas or config.grid_side
            codec: Codec = get_codec(config.family, config.seq_len)
            if size_agnostic(config) and config.family == "maze":
                codec = MazeCodec(side * side, margin=MARGIN)
            elif size_agnostic(config):
                codec = ArcCodec(side * side, margin=MARGIN)
            entry = ModelEntry(
                name=path.name,
                checkpoint=ckpt,
                codec=codec,
                engine=build_engine(ckpt, self.settings, canvas),
                card=card,
                identifiers=ids,
                operator=operator,
                pool=f"{path.name}@{side}x{side}" if canvas else path.name,
            )
            entry.engine.warm_up()
            return entry

        entry = make(None)
        if size_agnostic(config) and self.settings.backend != "onnx":
            entry.max_side = self.settings.max_maze_side if config.family == "maze" else ARC_MAX_SIDE
            sides = canvas_sides(config.grid_side, entry.max_side)
            entry.canvases = [entry, *(make(side) for side in sides[1:])]
        return entry

    def pools(self) -> dict[str, ModelEntry]:
        """Every entry that has its own scheduler queue, by pool name: each model, and each extra canvas of a
        size-agnostic one."""
        return {c.pool or c.name: c for e in self.models.values() for c in (e.canvases or [e])}

    def pick(
        self, family: str, name: str | None, side: int | None = None, measured_at: int | None = None
    ) -> ModelEntry:
        """The named model, or the family's default: among those that fit `side`, the most accurate on mazes of
        `measured_at` (`model.puzzles.maze.drawn_side`; default `side`) by the cards' measured figures
        (`ModelEntry.accuracy_at`), the measured ones first; then one trained on puzzles of `side` if any
        (see `trained_on`), then the smallest grid that fits it (cheapest compute).

        Measured accuracy comes first because training sizes do not tell the better model: the size-agnostic maze
        model, trained on sides 5 to 15, beats the fixed-size models on ring-drawn mazes of their sizes by 30 to 70
        points, where they were trained on unbordered mazes only (`docs/results.md`, "Routing").
        Among models of one size a TRM is preferred: an HRM is shipped to compare against, not as the default.

        Outside mazes, whose routing is by side, a model another one dominates on the held-out sets their cards
        share (`ModelEntry.dominates`) is never the default: so `sudoku-hard` is the default Sudoku model only
        while its card shows it at least as good as `sudoku-9x9` on every set both measured, easy ones included
        (difficulty is unknown at request time, so no routing by it is possible).
        """
        if name is not None:
            entry = self.models.get(name)
            if entry is None:
                raise KeyError(f"unknown model {name!r}; loaded: {', '.join(sorted(self.models))}")
            if entry.family != family:
                raise ValueError(f"model {name!r} solves {entry.family}, not {family}")
            if entry.canvases and side is not None and side > entry.max_side:
                raise _over_limit(side, entry.max_side)
            return entry.for_side(side)
        candidates = [e for e in self.models.values() if e.family == family]
        if not candidates:
            raise KeyError(f"no {family} model is loaded")
        fitting = [e for e in candidates if side is None or (e.max_side or e.config.grid_side) >= side]
        if not fitting:
            largest = max(e.max_side or e.config.grid_side for e in candidates)
            if any(e.canvases for e in candidates):
                raise _over_limit(side, largest)
            raise ValueError(f"puzzle is {side}x{side}, larger than every loaded {family} model ({largest}x{largest})")
        if family != "maze":  # one undominated model at least, unless the cards contradict each other in a cycle
            fitting = [e for e in fitting if not any(o.dominates(e) for o in fitting if o is not e)] or fitting
        at = measured_at if measured_at is not None else side
        measured = {e.name: e.accuracy_at(at) if at is not None else None for e in fitting}
        return min(
            fitting,
            key=lambda e: (
                measured[e.name] is None,
                -(measured[e.name] or 0.0),
                side is not None and not trained_on(e.config, side),
                e.config.grid_side,
                e.config.arch != "trm",
                e.name,
            ),
        ).for_side(side)


def _over_limit(side: int | None, limit: int) -> ValueError:
    return ValueError(
        f"maze is {side} cells on its longer side (inside its wall ring), over this server's limit of "
        f"{limit} a side (setting max_maze_side)"
    )


def measured_maze_accuracy(card: dict[str, Any]) -> dict[int, float]:
    """Exact accuracy by maze side (inside the ring) from a card's one-view held-out records on people mazes
    (`training.evaluate --data generate:maze-people:N:H:W[:SEED[:RING]] --record NAME`), the best where a side has
    several. Other records (other generators, voted views, calibrations) are left out: routing compares models on
    the same kind of mazes as people send."""
    out: dict[int, float] = {}
    for record in card.values():
        if not isinstance(record, dict) or record.get("views", 1) != 1:
            continue
        data, accuracy = record.get("data"), record.get("exact_accuracy")
        if not isinstance(data, str) or not data.startswith(PEOPLE_SPEC) or not isinstance(accuracy, int | float):
            continue
        fields = data[len(PEOPLE_SPEC) :].split(":")
        try:
            h, w = int(fields[1]), int(fields[2])
            ring = int(fields[4]) if len(fields) > 4 else 1
        except (IndexError, ValueError):
            continue
        side = max(h, w) - 2 * (ring == 1)
        out[side] = max(out.get(side, 0.0), float(accuracy))
    return out


def held_out_records(card: dict[str, Any]) -> dict[tuple[str, int, str, int], float]:
    """Exact accuracy of each `training.evaluate --record NAME` record in a card, keyed by how it was measured:
    data spec (which fixes the puzzles and their count), views, halting mode and escalation budget. Two cards'
    figures under the same key were measured the same way and can be compared; calibration sweeps are left out."""
    out: dict[tuple[str, int, str, int], float] = {}
    for record in card.values():
        if not isinstance(record, dict):
            continue
        data, accuracy = record.get("data"), record.get("exact_accuracy")
        if isinstance(data, str) and isinstance(accuracy, int | float) and "halt" in record:
            key = (data, int(record.get("views", 1)), str(record["halt"]), int(record.get("budget_steps", 0)))
            out[key] = float(accuracy)
    return out


def trained_sides(config: TRMConfig) -> tuple[int, int] | None:
    """The maze sides a maze model saw in training: its own side, or from the smallest side of mixed-size data
    (`min_side` in the recorded data source) up to its own. None for other families, which count as trained on
    any size that fits: Sudoku has one size, and ARC models train on every grid size up to their canvas."""
    if config.family != "maze":
        return None
    source = config.training.get("data_source")
    low = source.get("min_side") if isinstance(source, dict) else None
    return (low if isinstance(low, int) else config.grid_side, config.grid_side)


def trained_on(config: TRMConfig, side: int) -> bool:
    """Whether the model saw puzzles of this side in training. A maze model does poorly on smaller mazes padded
    into its grid unless it was trained on them (a 9x9 model trained on 9x9 only: 81% exact on 9x9 mazes, 30% on
    padded 7x7 ones; trained on both: 80% and 93%), so `Registry.pick` prefers such a model over a smaller grid
    that merely fits."""
    sides = trained_sides(config)
    return sides is None or sides[0] <= side <= sides[1]


def engine_hook(spec: str | None) -> Callable[[Engine], None] | None:
    """The test-only `engine_hook` setting ("module:function") resolved to its function, or None when unset."""
    if spec is None:
        return None
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"engine_hook {spec!r} cannot be imported: {exc}") from exc
    if not callable(function):
        raise ValueError(f"engine_hook {spec!r} is not a function")
    log.warning("engine_hook %s is installed: a test-only fault-injection hook", spec)
    hooked: Callable[[Engine], None] = function
    return hooked


def _identifiers(path: Path) -> list[str]:
    ids = path / "identifiers.json"
    if not ids.is_file():
        return []
    data = json.loads(ids.read_text())
    return [str(x) for x in data] if isinstance(data, list) else []

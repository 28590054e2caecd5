"""Build the right network for a config: the architecture is a field of `config.json`, not a guess."""

from __future__ import annotations

from model.config import TRMConfig
from model.hrm import HRM
from model.trm import TRM


def build_model(config: TRMConfig) -> TRM:
    """A freshly initialised model of the architecture `config.arch` names (HRM runs behind TRM's interface, as
    a subclass, so callers get the model's own type and its `step`, `initial_carry` and `config`)."""
    if config.arch == "trm":
        return TRM(config)
    if config.arch == "hrm":
        return HRM(config)
    raise ValueError(f"unknown architecture {config.arch!r}")

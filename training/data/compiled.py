"""Shared plumbing of the numba-compiled generators: the `njit` decorator and the worker-process context."""

from __future__ import annotations

import multiprocessing
from typing import Any

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; without it the same code runs ~100x slower

    def njit(*args: Any, **kwargs: Any) -> Any:  # type: ignore[no-redef]
        return args[0] if args and callable(args[0]) else (lambda f: f)


def fork_context() -> multiprocessing.context.BaseContext:
    """Fork where the OS has it: workers inherit the compiled kernels instead of re-importing the module."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


__all__ = ["fork_context", "njit"]

"""HTTP request and response bodies (the contract in shared/DESIGN.md).

Grids are typed loosely here on purpose: each puzzle family's codec validates its own grid and says exactly
what is wrong and where ("grid[3] has two 5s"), which a generic schema error cannot.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="a loaded model's name")]


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(
        ge=0,
        strict=True,
        description="model steps over all views of the puzzle (0: none past the first round); the server's "
        "default_budget_steps when absent",
    )


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    puzzle: Literal["sudoku", "maze", "arc"]
    grid: Any = Field(
        None,
        description="Sudoku: 9x9 list of int lists (0 = blank) or an 81-character string ('0'/'.' blank). "
        "Maze: square list of equal-length strings over '#', ' ', 'S', 'G'.",
    )
    task: Any = Field(None, description='ARC: {"train": [{"input": G, "output": G}, ...], "test": [{"input": G}, ...]}')
    task_id: str | None = Field(None, max_length=128, description="ARC: a task the model was trained on")
    adapt_budget_s: float | None = Field(
        None,
        ge=0.0,
        description="ARC, a task the model never saw: seconds of test-time training and answering (default: the "
        "server's arc_adapt_time_budget_s, at most its arc_adapt_max_budget_s); the request's deadline grows by it",
    )
    model: ModelName | None = None
    # Strict: JSON `true` is not a step count and `1` or "yes" is not a flag (lax parsing would accept both).
    max_steps: int | None = Field(
        None, ge=1, strict=True, description="supervision steps at most (default: the model's)"
    )
    halt: Literal["adaptive", "q_head", "never"] = Field(
        "adaptive",
        description="adaptive: stop at the first answer that passes the rule check (Sudoku, mazes) or when the "
        "halting head is confident; q_head: the halting head alone, as the paper; never: run every step",
    )
    views: int | None = Field(
        None,
        ge=1,
        le=8,
        strict=True,
        description="Sudoku and maze: also solve the puzzle turned by the first K symmetries of the square and "
        "answer what most of them agree on (K times the compute; the steps shown are the unturned puzzle's); "
        "default: the server's default_views",
    )
    budget: Budget | None = Field(
        None,
        description="Sudoku and maze: what a puzzle whose answer fails the rule check may spend on more views "
        "(other symmetries of the square, tried at once; the first verified answers); easy puzzles verify at once",
    )
    return_steps: bool = Field(False, strict=True)
    stream: bool = Field(False, strict=True)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[SolveRequest] = Field(min_length=1)


class StepState(BaseModel):
    step: int
    solution: Any
    halt_probability: float
    changed_cells: list[tuple[int, int]]


def _omit_if_none(data: dict[str, Any], key: str) -> dict[str, Any]:
    """Drop an optional field that does not apply, so answers without it keep the contract's fields exactly."""
    if data.get(key) is None:
        data.pop(key, None)
    return data


class Timing(BaseModel):
    queue_ms: float
    compute_ms: float
    total_ms: float
    adapt_ms: float | None = Field(
        None, description="ARC tasks the model never saw: time fitting their puzzle vectors (test-time adaptation)"
    )

    @model_serializer(mode="wrap")
    def _omit_absent_adapt(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """adapt_ms appears only where adaptation ran, so the other answers keep the three-field timing."""
        return _omit_if_none(handler(self), "adapt_ms")


class SolveResponse(BaseModel):
    id: str
    model: str
    puzzle: str
    solution: Any
    steps_used: int
    halted_by: Literal["verified", "q_head", "max_steps", "deadline"]
    halt_probability: float
    halt_threshold: float = Field(
        description="the halting probability adaptive halting waits for: the model's calibrated threshold (for this "
        "many views, where calibrated apart), or the server's --halt-threshold"
    )
    verified: bool | None
    timing: Timing
    steps: list[StepState] | None = None
    votes: int | None = Field(None, description="with several views: how many of them gave this answer")
    views_tried: int | None = Field(None, description="with several views: how many ran (asked for and escalated)")
    steps_total: int | None = Field(None, description="with several views: model steps over all of them")

    @model_serializer(mode="wrap")
    def _omit_absent_votes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """votes, views_tried and steps_total appear only where more than one view ran."""
        data: dict[str, Any] = handler(self)
        for key in ("votes", "views_tried", "steps_total"):
            _omit_if_none(data, key)
        return data


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. invalid_puzzle, unknown_model, queue_full")
    message: str
    field: str | None = None


class BatchItem(BaseModel):
    """One entry of a batch answer: a result, or the error that request alone met."""

    status: int
    result: SolveResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]

"""The contract every puzzle family implements: parse an HTTP grid, encode it to tokens, decode, verify.

A codec instance is bound to one model's grid geometry (its `seq_len`), because a 30x30 maze model also serves
smaller mazes by padding them with walls, and decoding has to undo exactly that. Everything here is pure: no
torch, no I/O, so the server, the training data builders and the tests share one definition of each format.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

# Token 0 is PAD in every family's vocabulary; as a label it means "ignore this position".
PAD = 0


class PuzzleError(ValueError):
    """A grid that breaks its family's format or rules.

    `field` is a JSON path into the request ("grid", "grid[3]", "task.train[0].input") so the HTTP layer can
    name it in a 4xx body; the message says what is wrong and where ("row 3 has two 5s").
    """

    def __init__(self, message: str, field: str = "grid") -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Codec(ABC):
    """Turns one family's grids into token sequences of a fixed length and back.

    Subclasses set `family` and `vocab_size` and take the model's `seq_len` at construction. `parse` validates a
    raw JSON value and returns a normalised puzzle object (a numpy grid or a small dataclass); the other methods
    take that object.
    """

    family: ClassVar[str]
    vocab_size: ClassVar[int]

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len

    @abstractmethod
    def parse(self, raw: Any) -> Any:
        """Validate a grid as it arrives over HTTP; raise PuzzleError naming the field and the fault."""

    @abstractmethod
    def encode(self, puzzle: Any) -> np.ndarray:
        """Token ids of shape [seq_len], dtype uint8, for the model's input."""

    @abstractmethod
    def decode(self, tokens: np.ndarray, puzzle: Any) -> Any:
        """Turn predicted token ids [seq_len] back into the JSON answer shape for this puzzle."""

    @abstractmethod
    def verify(self, puzzle: Any, answer: Any) -> bool | None:
        """Check a decoded answer against the family's rules; None where no rule check exists (ARC)."""

    def settle(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
        """The answers [N, seq_len] that predictions [N, seq_len] give for `inputs`: every cell the user gave
        (Sudoku givens; maze walls, S and G) kept as given, whatever the model predicted there. An answer never
        alters what the user gave; a prediction that needed it altered simply fails the rule check."""
        return np.asarray(answers)

    def check_tokens(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray | None:
        """`verify` for a batch at the token level: bool [N] for answers [N, seq_len] to inputs [N, seq_len].

        What halting asks after every step, so it must agree with `verify(puzzle, decode(answer, puzzle))` for the
        puzzle that `inputs` encodes. None where the family has no exact rule check.
        """
        return None

"""ARC evaluation: pass@1/pass@2 after voting, the submission file, and the `python -m training.evaluate` CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from model.checkpoint import save_checkpoint
from model.config import TRMConfig
from model.trm import TRM, Carry, StepOutput
from tests.conftest import tiny_config
from training.data.arc import build
from training.data.dataset import load_identifiers, load_split
from training.evaluate import main
from training.evaluate_arc import evaluate_arc


def _task(seed: int, n_train: int = 2, n_test: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def pair() -> dict[str, Any]:
        h, w = (int(x) for x in rng.integers(1, 6, 2))
        return {"input": rng.integers(0, 10, (h, w)).tolist(), "output": rng.integers(0, 10, (w, h)).tolist()}

    return {"train": [pair() for _ in range(n_train)], "test": [pair() for _ in range(n_test)]}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10x10 ARC dataset: one training task, two evaluation tasks (one with two test inputs), 2 augmentations."""
    src = tmp_path_factory.mktemp("arc-src")
    tasks = {"training": {"train01": _task(1)}, "evaluation": {"eval0001": _task(2), "eval0002": _task(3, 3, 2)}}
    for subset, named in tasks.items():
        (src / subset).mkdir()
        for name, task in named.items():
            (src / subset / f"{name}.json").write_text(json.dumps(task))
    return build(tmp_path_factory.mktemp("arc-ds") / "ds", source=str(src), num_aug=2, seed=42, side=10, max_tasks=2)


@pytest.fixture(scope="module")
def weights(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny checkpoint sized for the dataset's puzzle ids, with its identifiers.json as training writes."""
    ids = load_identifiers(dataset)
    config = tiny_config(family="arc", vocab_size=12, seq_len=100, num_puzzle_ids=len(ids))
    torch.manual_seed(0)
    directory = save_checkpoint(TRM(config), config, tmp_path_factory.mktemp("w") / "arc-tiny")
    shutil.copy2(dataset / "identifiers.json", directory / "identifiers.json")
    return directory


class Oracle(nn.Module):
    """Answers every test row of the dataset with its label, sure of itself from step 1: pass@1 must be 1."""

    def __init__(self, config: TRMConfig, dataset: Path) -> None:
        super().__init__()
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(1))  # evaluate_model finds the device through the parameters
        self.register_buffer("puzzle_emb", torch.zeros(config.num_puzzle_ids, config.hidden_size))
        test = load_split(dataset, "test", mmap=False)
        self.answers = {row.tobytes(): label for row, label in zip(test.inputs, test.labels, strict=True)}

    def initial_carry(self, batch_size: int, device: torch.device | None = None) -> Carry:
        return Carry(torch.zeros(batch_size, 1), torch.zeros(batch_size, 1))

    def step(self, carry: Carry, inputs: Tensor, puzzle_ids: Tensor | None = None, **_: Any) -> StepOutput:
        labels = np.stack([self.answers[row.astype(np.uint8).tobytes()] for row in inputs.numpy()])
        logits = 10.0 * torch.nn.functional.one_hot(torch.as_tensor(labels).long(), self.config.vocab_size).float()
        halt = torch.full((len(inputs),), 5.0)
        return StepOutput(carry, logits, halt, -halt)

    def halting_logit(self, q_halt: Tensor, q_continue: Tensor) -> Tensor:
        return q_halt


def test_an_oracle_scores_pass_at_1_after_inverting_every_variant(dataset: Path) -> None:
    tasks = json.loads((dataset / "test_puzzles.json").read_text())
    ids = load_identifiers(dataset)
    oracle = Oracle(tiny_config(family="arc", vocab_size=12, seq_len=100, num_puzzle_ids=len(ids)), dataset)
    summary, submission = evaluate_arc(oracle, tasks, "known", ids)
    assert (summary["pass@1"], summary["pass@2"], summary["exact_accuracy"], summary["cell_accuracy"]) == (1, 1, 1, 1)
    assert summary["mean_steps"] == 1 and summary["variants_per_test_input"] == 3
    assert summary["solved_tasks"] == sorted(tasks)
    for name, task in tasks.items():
        assert [a["attempt_1"] for a in submission[name]] == [t["output"] for t in task["test"]]


def test_known_tasks_without_trained_rows_score_zero_and_are_listed(dataset: Path) -> None:
    tasks = json.loads((dataset / "test_puzzles.json").read_text())
    ids = [n for n in load_identifiers(dataset) if not n.startswith("eval0002")]
    oracle = Oracle(tiny_config(family="arc", vocab_size=12, seq_len=100, num_puzzle_ids=len(ids)), dataset)
    summary, submission = evaluate_arc(oracle, tasks, "known", ids, max_variants=1)
    assert summary["unknown_tasks"] == ["eval0002"] and summary["pass@1"] == summary["pass@2"] == 0.5
    assert summary["solved_tasks"] == ["eval0001"]
    assert summary["variants_per_test_input"] == 1
    assert [np.shape(a["attempt_1"]) for a in submission["eval0002"]] == [
        np.shape(t["input"]) for t in tasks["eval0002"]["test"]
    ]  # zeros shaped like the input, never []


@pytest.mark.parametrize("mode", ["known", "adapt"])
def test_cli_prints_pass_at_k_json_and_writes_the_submission(
    mode: str, dataset: Path, weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "submission.json"
    argv = ["--weights", str(weights), "--data", str(dataset), "--arc-mode", mode, "--submission", str(out)]
    argv += ["--adapt-steps", "3", "--arc-variants", "2", "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"pass@1", "pass@2", "exact_accuracy", "cell_accuracy", "mean_steps"} <= set(summary)
    assert 0 <= summary["pass@1"] <= summary["pass@2"] <= 1 and summary["arc_mode"] == mode
    assert summary["variants_per_test_input"] == 2 and summary["tasks"] == 2
    assert ("adapt_seconds_per_task" in summary) == (mode == "adapt")
    if mode == "adapt":  # network test-time training: how many optimiser steps each task's final fit took
        assert 0 < summary["fit_steps_per_task"] <= summary["fit_steps_chosen_per_task"] <= 3
        assert 0 <= summary["fit_steps_unfitted_tasks"] <= 2 and 0 <= summary["fit_steps_chosen_zero_tasks"] <= 2
    submission = json.loads(out.read_text())
    assert sorted(submission) == ["eval0001", "eval0002"]
    assert [len(submission[t]) for t in ("eval0001", "eval0002")] == [1, 2]
    for answers in submission.values():
        for answer in answers:
            assert set(answer) == {"attempt_1", "attempt_2"}
            assert all(grid and all(row for row in grid) for grid in answer.values())


def test_cli_scores_one_shard_of_the_tasks_in_id_order(
    dataset: Path, weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--weights", str(weights), "--data", str(dataset), "--arc-mode", "known", "--device", "cpu"]
    assert main([*argv, "--arc-tasks", "1:2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks"] == 1 and summary["arc_tasks"] == "1:2" and summary["test_inputs"] == 2  # eval0002
    with pytest.raises(SystemExit, match="START:END"):
        main([*argv, "--arc-tasks", "a:b"])

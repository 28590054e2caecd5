"""Evaluation: accuracies and halting steps against a manual loop over `model.step`, and the CLI's JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.views import vote_views
from model.checkpoint import load_checkpoint, save_checkpoint
from model.precision import dtype_name, resolve_dtype
from model.puzzles.dihedral import dihedral, inverse_dihedral
from model.trm import TRM
from tests.conftest import tiny_config
from training import evaluate
from training.data.dataset import PuzzleSet
from training.data.sources import load_eval_data
from training.scoring import evaluate_model, evaluate_views, puzzle_rules

REPO = Path(__file__).resolve().parents[2]
N = 6


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny_model(q_bias: float = -5.0, q_weight_std: float = 0.0) -> TRM:
    model = TRM(tiny_config()).eval()
    with torch.no_grad():
        model.q_head.bias.fill_(q_bias)
        model.q_head.weight.normal_(0.0, q_weight_std) if q_weight_std else model.q_head.weight.zero_()
    return model


def inputs_for(n: int = N) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 6, size=(n, 16)).astype(np.uint8)


@torch.no_grad()
def manual_steps(model: TRM, inputs: np.ndarray, steps: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Predictions and halting logits after each of `steps` (default `halt_max_steps`) steps, from a fresh carry."""
    x = torch.as_tensor(inputs).long()
    carry = model.initial_carry(len(x))
    preds, qs = [], []
    for _ in range(steps or model.config.halt_max_steps):
        out = model.step(carry, x)
        carry = out.carry
        preds.append(out.logits.argmax(-1).numpy().astype(np.uint8))
        qs.append(out.q_halt.numpy())
    return preds, qs


def puzzle_set(inputs: np.ndarray, labels: np.ndarray) -> PuzzleSet:
    n = len(inputs)
    return PuzzleSet(inputs, labels, np.zeros(n, np.int32), np.arange(n, dtype=np.int32))


def wrong(token: np.ndarray) -> np.ndarray:
    return (token % 10) + 1  # a non-PAD token other than `token`


def test_evaluate_reports_exact_and_cell_accuracy_of_the_final_answer() -> None:
    model = tiny_model()
    inputs = inputs_for()
    final = manual_steps(model, inputs)[0][-1]
    labels = final.copy()
    labels[1, [0, 3]] = wrong(final[1, [0, 3]])  # two wrong cells
    labels[2, 5:] = 0  # only 5 scored cells, all right
    labels[3, :4] = 0
    labels[3, 7] = wrong(final[3, 7])  # one wrong cell among the scored ones
    scored = int((labels != 0).sum())

    result = evaluate_model(model, puzzle_set(inputs, labels), batch_size=4, keep_predictions=True)

    assert result["puzzles"] == N
    assert result["exact_accuracy"] == pytest.approx(4 / N)
    assert result["cell_accuracy"] == pytest.approx((scored - 3) / scored)
    assert np.array_equal(result["predictions"], final)
    # The Q head never says halt (bias -5), so the adaptive answer is the last one, after every step.
    assert result["mean_steps"] == model.config.halt_max_steps
    assert result["adaptive_exact_accuracy"] == result["exact_accuracy"]
    assert evaluate_model(model, puzzle_set(inputs, labels), limit=3)["exact_accuracy"] == pytest.approx(2 / 3)


def test_mixed_size_sets_report_exact_accuracy_per_side() -> None:
    model = tiny_model()
    inputs = inputs_for()
    labels = manual_steps(model, inputs)[0][-1].copy()
    labels[1, 0] = wrong(labels[1, 0])
    labels[4, 2] = wrong(labels[4, 2])
    data = puzzle_set(inputs, labels)
    sides = np.array([5, 7, 5, 7, 7, 5])
    data.extras["side"] = sides

    result = evaluate_model(model, data, batch_size=3)

    wrong_rows = np.zeros(N, bool)
    wrong_rows[[1, 4]] = True
    assert result["exact_by_side"] == {str(s): pytest.approx(1 - wrong_rows[sides == s].mean()) for s in (5, 7)}
    data.extras["side"] = np.full(N, 7)
    assert "exact_by_side" not in evaluate_model(model, data)  # one size: the headline says it all


def test_adaptive_halting_answers_at_the_first_confident_step() -> None:
    model = tiny_model(q_bias=1.0)  # q_halt = +1 everywhere: every puzzle halts after its first step
    inputs = inputs_for()
    preds, _ = manual_steps(model, inputs)
    result = evaluate_model(model, puzzle_set(inputs, preds[0].copy()), batch_size=N, keep_predictions=True)
    assert result["mean_steps"] == 1
    assert result["adaptive_exact_accuracy"] == 1.0
    assert np.array_equal(result["adaptive_predictions"], preds[0])
    # The "never halt" figures still come from the last step.
    assert result["exact_accuracy"] == pytest.approx(
        np.mean([np.array_equal(a, b) for a, b in zip(preds[-1], preds[0], strict=True)])
    )


def test_adaptive_mean_steps_is_the_mean_first_halting_step() -> None:
    model = tiny_model(q_bias=0.0, q_weight_std=1.0)
    inputs = inputs_for(16)
    preds, qs = manual_steps(model, inputs)
    max_steps = model.config.halt_max_steps
    q = np.stack(qs, axis=1)  # (N, steps)
    first = np.where((q > 0).any(1), (q > 0).argmax(1) + 1, max_steps)

    result = evaluate_model(model, puzzle_set(inputs, preds[-1].copy()), batch_size=16, keep_predictions=True)

    assert 1 <= result["mean_steps"] <= max_steps
    assert result["mean_steps"] == pytest.approx(first.mean())
    assert len(set(first.tolist())) > 1  # the puzzles did stop at different steps
    expected = np.stack([preds[s - 1][i] for i, s in enumerate(first)])
    assert np.array_equal(result["adaptive_predictions"], expected)


def test_vote_views_takes_the_answer_most_views_gave_and_breaks_ties_by_halting_probability() -> None:
    a, b, c = np.array([1, 2]), np.array([3, 4]), np.array([5, 6])
    answers = np.stack(
        [
            np.stack([a, a, b]),  # view 0, puzzles 0..2
            np.stack([b, c, c]),
            np.stack([a, c, b]),
        ]
    )
    probs = np.array([[0.1, 0.9, 0.2], [0.9, 0.1, 0.9], [0.1, 0.2, 0.3]])
    voted = vote_views(answers, probs)
    # puzzle 0: a twice beats b once, though b is the most confident; puzzle 1: one vote each for a and c twice;
    # puzzle 2: b twice (views 0, 2) beats c once.
    assert np.array_equal(voted, np.stack([a, c, b]))
    tie = vote_views(np.stack([np.stack([a]), np.stack([b])]), np.array([[0.4], [0.6]]))
    assert np.array_equal(tie[0], b)  # one vote each: the more confident answer


def answer_under(model: TRM, inputs: np.ndarray, tid: int) -> np.ndarray:
    """What the model answers for each puzzle turned by symmetry `tid`, turned back (the last step's answer)."""
    side = int(np.sqrt(inputs.shape[1]))
    turned = np.stack([dihedral(g.reshape(side, side), tid).reshape(-1) for g in inputs])
    final = manual_steps(model, np.ascontiguousarray(turned))[0][-1]
    return np.stack([inverse_dihedral(g.reshape(side, side), tid).reshape(-1) for g in final])


def test_evaluate_views_turns_each_puzzle_maps_answers_back_and_votes() -> None:
    model = tiny_model()  # never confident: every view answers after its last step, all with the same probability
    inputs = inputs_for(8)
    back = [answer_under(model, inputs, tid) for tid in range(8)]
    assert any(not np.array_equal(back[0], back[t]) for t in range(1, 8))  # the views do disagree
    labels = back[3].copy()  # the truth is what view 3 answers, seen in the puzzle's own orientation

    result = evaluate_views(model, puzzle_set(inputs, labels), 8, keep_predictions=True, batch_size=3)

    assert result["views"] == 8 and result["puzzles"] == 8
    assert result["exact_by_view"][3] == 1.0
    assert result["mean_steps"] == 8 * model.config.halt_max_steps
    expected = []
    for i in range(8):
        rows = [back[t][i].tobytes() for t in range(8)]
        counts = {r: rows.count(r) for r in rows}
        expected.append(back[rows.index(max(counts, key=lambda r: (counts[r], -rows.index(r))))][i])
    assert np.array_equal(result["predictions"], np.stack(expected))
    right = (np.stack(expected) == labels).all(1)
    assert result["exact_accuracy"] == pytest.approx(right.mean())
    plain = evaluate_model(model, puzzle_set(inputs, labels))
    assert result["single_view"]["exact_accuracy"] == plain["adaptive_exact_accuracy"]
    assert result["exact_by_view"][0] == plain["adaptive_exact_accuracy"]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    model = tiny_model()
    return save_checkpoint(model, model.config, tmp_path / "weights")


def test_cli_prints_a_final_json_line_and_records_metrics(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the generated puzzles land in tmp_path
    argv = ["--weights", str(weights), "--data", "generate:sudoku:20:6:10", "--device", "cpu", "--record", "gen4"]
    code = evaluate.main([*argv, "--budget", "0"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["puzzles"] == 20 and summary["halt"] == "adaptive"
    assert 0.0 <= summary["exact_accuracy"] <= summary["cell_accuracy"] <= 1.0
    assert 1 <= summary["mean_steps"] <= 4
    # The spec builds 4x4 puzzles (side from the model's seq_len 16), and the line reports evaluate_model's figures.
    ckpt = load_checkpoint(weights)
    data = load_eval_data("generate:sudoku:20:6:10", ckpt.config)
    assert data.inputs.shape == (20, 16)
    auto = resolve_dtype("auto", torch.device("cpu"))  # bf16 on a CPU with bf16 arithmetic, else fp32
    assert summary["dtype"] == dtype_name(auto)
    result = evaluate_model(ckpt.model, data, dtype=auto, rules=puzzle_rules(ckpt.config))
    assert summary["cell_accuracy"] == result["adaptive_cell_accuracy"]
    assert summary["mean_steps"] == result["mean_steps"]
    recorded = json.loads((weights / "metrics.json").read_text())
    assert recorded["gen4"]["exact_accuracy"] == summary["exact_accuracy"]


def test_cli_dtype_bfloat16_runs_the_steps_under_bf16_autocast(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--weights", str(weights), "--data", "generate:sudoku:20:6:10", "--device", "cpu", "--halt", "never"]
    assert evaluate.main([*argv, "--dtype", "bfloat16"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["dtype"] == "bfloat16"
    ckpt = load_checkpoint(weights)
    data = load_eval_data("generate:sudoku:20:6:10", ckpt.config)
    result = evaluate_model(ckpt.model, data, dtype=torch.bfloat16, rules=puzzle_rules(ckpt.config))
    assert summary["cell_accuracy"] == result["cell_accuracy"]


def test_cli_max_steps_runs_past_the_trained_horizon_and_rejects_zero(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ckpt = load_checkpoint(weights)
    steps = ckpt.config.halt_max_steps + 3
    argv = ["--weights", str(weights), "--data", "generate:sudoku:20:6:10", "--device", "cpu", "--halt", "never"]
    assert evaluate.main([*argv, "--dtype", "float32", "--max-steps", str(steps)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["max_steps"] == steps and summary["mean_steps"] == steps
    data = load_eval_data("generate:sudoku:20:6:10", ckpt.config)
    preds, _ = manual_steps(ckpt.model, data.inputs, steps)
    answers = np.where(data.inputs >= 2, data.inputs, preds[-1])  # the answer keeps the givens
    right = (answers == data.labels).sum()
    assert summary["cell_accuracy"] == right / data.labels.size
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([*argv, "--max-steps", "0"])
    assert exit_info.value.code == 2
    assert "--max-steps must be at least 1" in capsys.readouterr().err


def test_cli_views_votes_and_rejects_counts_outside_the_eight_symmetries(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--weights", str(weights), "--data", "generate:sudoku:12:6:10", "--device", "cpu", "--budget", "0"]
    assert evaluate.main([*argv, "--views", "4"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["views"] == 4 and len(summary["exact_by_view"]) == 4 and summary["puzzles"] == 12
    assert summary["single_view"]["exact_accuracy"] == summary["exact_by_view"][0]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([*argv, "--views", "9"])
    assert exit_info.value.code == 2
    assert "--views must be 1..8" in capsys.readouterr().err


def test_cli_as_a_module_prints_json_with_the_headline_figures(weights: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.evaluate",
            "--weights",
            str(weights),
            "--data",
            "generate:sudoku:20:6:10",
            "--device",
            "cpu",
            "--halt",
            "never",
        ],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "1",
            "TMPDIR": str(tmp_path),
            "TRM_EVAL_CACHE": os.environ["TRM_EVAL_CACHE"],
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"exact_accuracy", "cell_accuracy", "mean_steps"} <= set(summary)
    assert summary["halt"] == "never" and summary["mean_steps"] == 4 and summary["puzzles"] == 20


def _open_graph_edges_minus_nodes(questions: np.ndarray) -> np.ndarray:
    """Per maze: 4-neighbour links between non-wall squares minus the number of such squares (-1 for a tree)."""
    from model.puzzles.maze import WALL

    open_ = questions != WALL
    links = (open_[:, 1:, :] & open_[:, :-1, :]).sum((1, 2)) + (open_[:, :, 1:] & open_[:, :, :-1]).sum((1, 2))
    return links - open_.sum((1, 2))


def test_generated_maze_spec_takes_the_share_of_opened_walls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = tiny_config(family="maze", vocab_size=6, seq_len=81)
    perfect = load_eval_data("generate:maze:40:9:6:7:0", config)
    default = load_eval_data("generate:maze:40:9:6:7", config)
    q_perfect = np.asarray(perfect.inputs).reshape(-1, 9, 9)
    q_default = np.asarray(default.inputs).reshape(-1, 9, 9)
    assert (_open_graph_edges_minus_nodes(q_perfect) == -1).all()  # loops 0: every maze is a tree, one route
    assert (_open_graph_edges_minus_nodes(q_default) >= 0).mean() > 0.5  # the training default opens loops
    assert np.array_equal(np.asarray(load_eval_data("generate:maze:40:9:6:7:0.1", config).inputs), default.inputs)


def test_generated_hard_sudoku_spec_keeps_its_givens_and_rating_floor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = load_eval_data("generate:sudoku-hard:12:20:23:4:9", tiny_config())
    grids = np.asarray(data.inputs).reshape(-1, 9, 9)
    givens = (grids > 1).sum(axis=(1, 2))  # token 1 is a blank, 2..10 the digits
    assert len(grids) == 12 and givens.min() >= 20 and givens.max() <= 23
    assert (np.asarray(data.extras["rating"]) >= 4).all()


def test_generated_sets_are_built_once_and_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from training.data import sources, sudoku

    monkeypatch.setattr(sources, "EVAL_CACHE", tmp_path / "cache")
    first = load_eval_data("generate:sudoku:8:6:10:3", tiny_config())
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one directory per spec, no build leftovers

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the set was generated again")

    monkeypatch.setattr(sudoku, "build", fail)
    again = load_eval_data("generate:sudoku:8:6:10:3", tiny_config())
    assert np.array_equal(np.asarray(again.inputs), np.asarray(first.inputs))
    assert np.array_equal(np.asarray(again.labels), np.asarray(first.labels))
    with pytest.raises(AssertionError, match="generated again"):  # another seed is another set
        load_eval_data("generate:sudoku:8:6:10:4", tiny_config())


@pytest.mark.parametrize(("ring", "canvas"), [(1, 24), (0, 24)])
def test_people_maze_spec_lays_mazes_out_on_the_canvas_the_server_picks(ring: int, canvas: int) -> None:
    config = tiny_config(family="maze", vocab_size=6, seq_len=256, mixer="conv", pos_encodings="none")
    data = load_eval_data(f"generate:maze-people:6:21:21:3:{ring}", config)
    n = len(data)
    inputs = np.asarray(data.inputs).reshape(n, canvas, canvas)
    labels = np.asarray(data.labels).reshape(n, canvas, canvas)
    assert n == 6 and (data.extras["height"] == 21).all()
    assert (inputs[:, 21:] == 1).all() and (inputs[:, :, 21:] == 1).all()  # walls below and right: the margin
    assert (labels[:, 21:] == 0).all() and (labels[:, :, 21:] == 0).all()  # padding is never scored
    assert ((labels == 5).sum(axis=(1, 2)) > 0).all()  # every maze has its path marked
    rules = puzzle_rules(config, data)
    assert rules is not None and rules.check_tokens(data.inputs, data.labels).all()  # the labels pass the check


def test_people_mazes_that_do_not_fit_a_fixed_model_say_so() -> None:
    config = tiny_config(family="maze", vocab_size=6, seq_len=81)
    with pytest.raises(ValueError, match="do not fit this model's 9x9"):
        load_eval_data("generate:maze-people:2:13:13:3:0", config)
    assert len(load_eval_data("generate:maze-people:2:11:11:3:1", config)) == 2  # 9x9 inside the ring fits


@pytest.mark.parametrize(
    "spec",
    [
        "generate:maze:40:9",
        "generate:maze:40:9:6:7:0:1",
        "generate:sudoku:10:30:40:1:0",
        "generate:maze:x:9:6",
        "generate:sudoku-hard:10:17:25",
        "generate:sudoku-hard:10:17:25:3:1:2",
        "generate:maze-people:3:21",
        "generate:maze-people:3:21:21:1:2",
    ],
)
def test_malformed_generate_specs_say_what_is_expected(spec: str) -> None:
    config = tiny_config(family="maze", vocab_size=6, seq_len=81)
    with pytest.raises(ValueError, match="generate:"):
        load_eval_data(spec, config)

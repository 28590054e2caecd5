"""Converting the HRM authors' checkpoints: a file in their layout, written here with random weights, converts to
the expected config, fails strictly naming the file, and steps exactly as a computation written from the documented
facts (HRM_REFERENCE.md): one-slot prefix, RoPE at 0 for the slot and 1 + i for token i, H_cycles x (L_cycles f_L,
then f_H), f_H without x, z_H from H_init, halting when q_halt > q_continue. TRM files still convert as before."""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from model.checkpoint import CheckpointError, load_checkpoint
from model.convert import convert, main
from model.convert_hrm import identifier_name
from model.puzzles.maze import OPEN, START, WALL, shortest_path, tokens_to_chars
from model.trm import TRM
from tests.conftest import tiny_config

HIDDEN, HEADS, LAYERS, H_CYCLES, L_CYCLES = 32, 4, 2, 2, 3
DATA_PATH = {
    "sudoku": "data/sudoku-extreme-1k-aug-1000",
    "maze": "data/maze-30x30-hard-1k",
    "arc": "data/arc-2-aug-1000",
}
VOCAB = {"sudoku": 11, "maze": 6, "arc": 12}
SEQ = {"sudoku": 81, "maze": 900, "arc": 900}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _inner(hidden: int, expansion: float) -> int:
    return -(-round(expansion * hidden * 2 / 3) // 256) * 256


def hrm_reference_state(vocab: int, ids: int, seed: int = 0, expansion: float = 2.0) -> dict[str, torch.Tensor]:
    """Tensors in the HRM reference's own layout and names (no prefix), random and well scaled."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    d, inner = HIDDEN, _inner(HIDDEN, expansion)
    state: dict[str, torch.Tensor] = {
        "H_init": normal(d, std=1.0).to(torch.bfloat16),
        "L_init": normal(d, std=1.0).to(torch.bfloat16),
        "embed_tokens.embedding_weight": normal(vocab, d, std=d**-0.5),
        "lm_head.weight": normal(vocab, d, std=d**-0.5),
        "q_head.weight": normal(2, d, std=d**-0.5),
        "q_head.bias": normal(2, std=0.5),
        "puzzle_emb.weights": normal(ids, d, std=d**-0.5),
    }
    for level in ("H_level", "L_level"):
        for i in range(LAYERS):
            p = f"{level}.layers.{i}."
            state[p + "self_attn.qkv_proj.weight"] = normal(3 * d, d, std=d**-0.5)
            state[p + "self_attn.o_proj.weight"] = normal(d, d, std=d**-0.5)
            state[p + "mlp.gate_up_proj.weight"] = normal(2 * inner, d, std=d**-0.5)
            state[p + "mlp.down_proj.weight"] = normal(d, inner, std=inner**-0.5)
    return state


def hrm_all_config(family: str, **arch: object) -> dict[str, object]:
    """An all_config.yaml as the HRM reference dumps it: `data_path` one string, no vocab or sequence length."""
    base: dict[str, object] = {
        "name": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
        "hidden_size": HIDDEN,
        "num_heads": HEADS,
        "H_layers": LAYERS,
        "L_layers": LAYERS,
        "H_cycles": H_CYCLES,
        "L_cycles": L_CYCLES,
        "halt_max_steps": 8,
        "halt_exploration_prob": 0.1,
        "expansion": 2.0,
        "pos_encodings": "rope",
        "puzzle_emb_ndim": HIDDEN,
        "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
    }
    base.update(arch)
    return {"arch": base, "data_path": DATA_PATH[family], "global_batch_size": 768, "lr": 1e-4}


def write_reference(
    directory: Path,
    state: dict[str, torch.Tensor],
    all_config: dict[str, object],
    compiled: bool = True,
    name: str = "checkpoint",
) -> Path:
    """torch.save of an OrderedDict with `_metadata`, keys prefixed as a compiled (or plain) run saves them."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = ("_orig_mod." if compiled else "") + "model.inner."
    saved: OrderedDict[str, torch.Tensor] = OrderedDict((prefix + k, v) for k, v in state.items())
    saved._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    torch.save(saved, directory / name)
    (directory / "all_config.yaml").write_text(yaml.safe_dump(all_config))
    return directory / name


# ---------------------------------------------------------------------------------------------- the direct step
def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5)


def _rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, base 10000, on (B, L, heads, head_dim) at the given positions."""
    half = x.shape[-1] // 2
    freq = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angle = positions.double()[:, None] * freq[None]  # (L, half)
    cos = torch.cat((angle.cos(), angle.cos()), -1).float()[:, None]
    sin = torch.cat((angle.sin(), angle.sin()), -1).float()[:, None]
    rotated = torch.cat((-x[..., half:], x[..., :half]), -1)
    return x * cos + rotated * sin


def _level(w: dict[str, torch.Tensor], level: str, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One reference network (H_level or L_level): post-norm attention + SwiGLU blocks, no learned norm scale."""
    b, length, d = h.shape
    hd = d // HEADS
    for i in range(LAYERS):
        p = f"{level}.layers.{i}."
        q, k, v = (h @ w[p + "self_attn.qkv_proj.weight"].T).split(d, dim=-1)
        q, k = _rope(q.view(b, length, HEADS, hd), positions), _rope(k.view(b, length, HEADS, hd), positions)
        v = v.view(b, length, HEADS, hd)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, length, d)
        h = _rms(h + attended @ w[p + "self_attn.o_proj.weight"].T)
        gate, up = (h @ w[p + "mlp.gate_up_proj.weight"].T).chunk(2, dim=-1)
        h = _rms(h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T)
    return h


def reference_steps(
    w: dict[str, torch.Tensor], inputs: torch.Tensor, ids: torch.Tensor, steps: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per supervision step: (logits over the tokens, halting probability), from the facts alone."""
    w = {k: v.float() for k, v in w.items()}
    b, seq = inputs.shape
    x = torch.cat((w["puzzle_emb.weights"][ids][:, None], w["embed_tokens.embedding_weight"][inputs]), dim=1)
    x = x * math.sqrt(HIDDEN)  # the whole [slot | tokens] sequence is scaled
    positions = torch.arange(1 + seq)  # 0 for the puzzle slot, 1 + i for token i
    z_h = w["H_init"].expand(b, 1 + seq, HIDDEN).clone()
    z_l = w["L_init"].expand(b, 1 + seq, HIDDEN).clone()
    out = []
    for _ in range(steps):
        for _h in range(H_CYCLES):
            for _l in range(L_CYCLES):
                z_l = _level(w, "L_level", z_l + z_h + x, positions)
            z_h = _level(w, "H_level", z_h + z_l, positions)  # f_H gets no x
        logits = z_h[:, 1:] @ w["lm_head.weight"].T
        q = z_h[:, 0] @ w["q_head.weight"].T + w["q_head.bias"]
        out.append((logits, torch.sigmoid(q[:, 0] - q[:, 1])))  # halt when q_halt > q_continue
    return out


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-keys", "plain-keys"])
@pytest.mark.parametrize("name", ["checkpoint", "step_26040"])
def test_hrm_reference_checkpoint_converts_to_the_expected_config(tmp_path: Path, compiled: bool, name: str) -> None:
    src = write_reference(tmp_path / "ref", hrm_reference_state(11, 1), hrm_all_config("sudoku"), compiled, name)
    # The published repositories hold `checkpoint` in a directory: the directory is accepted as SRC too.
    config = convert(src.parent if name == "checkpoint" else src, tmp_path / "out")
    assert config == load_checkpoint(tmp_path / "out").config
    assert (config.arch, config.family, config.puzzle_emb_len, config.seq_len) == ("hrm", "sudoku", 1, 81)
    assert (config.hidden_size, config.num_heads, config.num_layers) == (HIDDEN, HEADS, LAYERS)
    assert (config.h_cycles, config.l_cycles, config.halt_max_steps) == (H_CYCLES, L_CYCLES, 8)
    assert (config.vocab_size, config.num_puzzle_ids, config.no_act_continue) == (11, 1, False)
    assert config.pos_encodings == "rope" and config.mixer == "attention"


def test_latest_step_file_is_taken_from_a_run_directory(tmp_path: Path) -> None:
    state, all_config = hrm_reference_state(11, 1), hrm_all_config("sudoku")
    write_reference(tmp_path / "run", state, all_config, name="step_9")
    write_reference(tmp_path / "run", hrm_reference_state(11, 1, seed=5), all_config, name="step_10")
    convert(tmp_path / "run", tmp_path / "out")
    converted = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(converted["lm_head.weight"], hrm_reference_state(11, 1, seed=5)["lm_head.weight"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("drop", r"missing tensor 'H_level\.layers\.1\.mlp\.down_proj\.weight' \(expected shape \[32, 256\]\)"),
        ("extra", r"unexpected tensor 'H_level\.layers\.2\.self_attn\.o_proj\.weight'"),
        ("shape", r"tensor 'L_level\.layers\.0\.self_attn\.qkv_proj\.weight' has shape \[95, 32\]"),
    ],
    ids=["missing", "extra", "misshaped"],
)
def test_missing_extra_or_misshaped_tensors_fail_naming_the_file(tmp_path: Path, edit: str, message: str) -> None:
    state = hrm_reference_state(11, 1)
    if edit == "drop":
        del state["H_level.layers.1.mlp.down_proj.weight"]
    elif edit == "extra":
        state["H_level.layers.2.self_attn.o_proj.weight"] = torch.zeros(HIDDEN, HIDDEN)
    else:
        state["L_level.layers.0.self_attn.qkv_proj.weight"] = torch.zeros(95, HIDDEN)
    src = write_reference(tmp_path / "ref", state, hrm_all_config("sudoku"), name="step_7")
    with pytest.raises(CheckpointError, match=re.escape(str(src)) + ": " + message):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_config_naming_the_other_model_is_refused(tmp_path: Path) -> None:
    config = hrm_all_config("sudoku", name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1")
    src = write_reference(tmp_path / "ref", hrm_reference_state(11, 1), config)
    with pytest.raises(
        CheckpointError, match=r"names 'recursive_reasoning\.trm@.*' \(trm\), but the file has an H_lev"
    ):
        convert(src, tmp_path / "out")


def test_hrm_steps_on_converted_weights_equal_the_direct_computation(tmp_path: Path) -> None:
    # Five puzzle rows, two used: the slot must hold row `id` itself (no offset). 81 tokens keep it fast; the
    # 900-token path runs in the server test below.
    state = hrm_reference_state(VOCAB["sudoku"], 5, seed=3)
    convert(write_reference(tmp_path / "ref", state, hrm_all_config("sudoku")), tmp_path / "out")
    model = load_checkpoint(tmp_path / "out").model
    inputs = torch.randint(0, VOCAB["sudoku"], (2, SEQ["sudoku"]), generator=torch.Generator().manual_seed(4))
    ids = torch.tensor([3, 1])
    expected = reference_steps(state, inputs, ids, steps=3)
    carry = model.initial_carry(2)
    with torch.no_grad():
        for step, (logits, halt_prob) in enumerate(expected, start=1):
            out = model.step(carry, inputs, puzzle_ids=ids)
            carry = out.carry
            ours = torch.sigmoid(model.halting_logit(out.q_halt, out.q_continue))
            agree = (out.logits.argmax(-1) == logits.argmax(-1)).float().mean().item()
            assert agree >= 0.99, (step, agree)
            torch.testing.assert_close(out.logits, logits, atol=1e-4, rtol=1e-4)
            assert (ours - halt_prob).abs().max().item() < 1e-5, (step, ours, halt_prob)
    # The steps moved the state: a converter that froze it (or a test that compared two blank steps) would not.
    assert not torch.allclose(expected[0][0], expected[-1][0], atol=1e-3)


def test_identifiers_are_copied_in_our_variant_names_and_must_match_the_table(tmp_path: Path) -> None:
    state = hrm_reference_state(12, 4)
    src = write_reference(tmp_path / "ref", state, hrm_all_config("arc"))
    names = ["<blank>", "007bbfb7", "007bbfb7_t3_0582917364", "00d62c1b_t0_0123456789"]
    (tmp_path / "identifiers.json").write_text(json.dumps(names))
    convert(src, tmp_path / "out", identifiers=tmp_path / "identifiers.json")
    written = json.loads((tmp_path / "out" / "identifiers.json").read_text())
    assert written == ["<blank>", "007bbfb7", "007bbfb7|||t3|||0582917364", "00d62c1b|||t0|||0123456789"]
    assert identifier_name("task|||t1|||0213456789") == "task|||t1|||0213456789"  # ours pass unchanged

    (tmp_path / "short.json").write_text(json.dumps(names[:3]))
    with pytest.raises(CheckpointError, match=r"short\.json: 3 names for a puzzle table of 4 rows"):
        convert(src, tmp_path / "out2", identifiers=tmp_path / "short.json")


def test_trm_reference_checkpoint_still_converts_to_the_same_tensors(tmp_path: Path) -> None:
    from tests.model.test_checkpoint import _reference_state

    config = tiny_config(num_puzzle_ids=3)
    model = TRM(config).eval()
    with torch.no_grad():
        model.puzzle_emb.normal_()
    run = tmp_path / "run"
    run.mkdir()
    torch.save(_reference_state(model, compiled=False), run / "step_5")
    arch = {
        "name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
        **{"H_cycles": 2, "L_cycles": 2, "L_layers": 2, "H_layers": 0, "hidden_size": 32, "num_heads": 4},
        **{"expansion": 2.0, "puzzle_emb_len": 4, "pos_encodings": "rope", "halt_max_steps": 4},
    }
    (run / "all_config.yaml").write_text(yaml.safe_dump({"arch": arch, "data_paths": ["data/arc1concept-aug-1000"]}))
    assert main([str(run / "step_5"), str(tmp_path / "out")]) == 0
    converted = load_file(str(tmp_path / "out" / "model.safetensors"))
    expected = model.state_dict()
    for key in ("y_init", "z_init"):  # H_init/L_init went through bf16 in the reference file
        expected[key] = expected[key].to(torch.bfloat16).float()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    loaded = load_checkpoint(tmp_path / "out").config
    assert (loaded.arch, loaded.family, loaded.puzzle_emb_len, loaded.seq_len) == ("trm", "arc", 4, 900)


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path.resolve())):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_a_large_puzzle_table_stays_memory_mapped_and_a_small_one_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.checkpoint as checkpoint

    convert(write_reference(tmp_path / "ref", hrm_reference_state(12, 300), hrm_all_config("arc")), tmp_path / "out")
    weights = tmp_path / "out" / "model.safetensors"

    def in_file(tensor: torch.Tensor) -> bool:
        return any(lo <= tensor.data_ptr() < hi for lo, hi in _mapped_ranges(weights))

    small = load_checkpoint(tmp_path / "out").model  # 300 x 32 fp32 = 38 kB: copied
    assert not in_file(small.puzzle_emb) and not in_file(small.lm_head.weight)
    monkeypatch.setattr(checkpoint, "MAPPED_TABLE_MIN_BYTES", 1024)
    large = load_checkpoint(tmp_path / "out").model
    assert in_file(large.puzzle_emb) and not in_file(large.lm_head.weight)
    assert torch.equal(large.puzzle_emb, small.puzzle_emb) and large.config.num_puzzle_ids == 300
    # Rewriting the checkpoint replaces the file; the mapped table keeps the old contents.
    before = large.puzzle_emb.clone()
    convert(write_reference(tmp_path / "ref2", hrm_reference_state(12, 300, 9), hrm_all_config("arc")), weights.parent)
    assert torch.equal(large.puzzle_emb, before)


def maze_30(seed: int) -> list[str]:
    """A random 30x30 maze in the Maze-Hard style (walls as scattered cells, no ring) with S joined to G."""
    rng = np.random.default_rng(seed)
    while True:
        grid = np.where(rng.random((30, 30)) < 0.3, WALL, OPEN).astype(np.uint8)
        grid[0, 0], grid[29, 29] = START, 4
        if shortest_path(grid) is not None:
            return tokens_to_chars(grid)


@pytest.mark.slow  # 5-15 s, nearly all of it the server process starting (imports) on a busy machine
def test_a_converted_hrm_maze_checkpoint_answers_a_30x30_maze_from_a_fresh_server(tmp_path: Path) -> None:
    import httpx

    from tests.server.conftest import start_server

    state = hrm_reference_state(6, 1, seed=1)
    convert(write_reference(tmp_path / "ref", state, hrm_all_config("maze")), tmp_path / "weights" / "hrm-maze")
    server = start_server(tmp_path / "weights", tmp_path, "--default-budget-steps", "0")
    try:
        models = httpx.get(f"{server.base}/models", timeout=10).json()["models"]
        assert [(m["name"], m["arch"], m["grid_size"]) for m in models] == [("hrm-maze", "hrm", 30)]
        maze = maze_30(0)
        body = {"puzzle": "maze", "grid": maze, "max_steps": 2, "return_steps": True}
        response = httpx.post(f"{server.base}/solve", json=body, timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"] == "hrm-maze" and len(answer["solution"]) == 30
        assert all(len(row) == 30 for row in answer["solution"])
        assert [s["step"] for s in answer["steps"]] == list(range(1, answer["steps_used"] + 1))
        assert 0.0 <= answer["halt_probability"] <= 1.0
    finally:
        server.stop()

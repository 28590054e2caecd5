"""The step scheduler driven tick by tick with a real TorchEngine on a tiny Sudoku model.

An untrained model's halting head says "continue" (q_halt ~ -5), so left alone every puzzle runs to max_steps.
Halting, failures and NaNs are steered through the engine's `hooks`, the test-only control point: a hook sees the
slots of a step and may return a changed StepResult.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
import torch

from inference.halting import HaltingPolicy, HaltMode, HaltReason, Rules
from model.puzzles import get_codec
from model.trm import Carry
from server.engine import StepResult, TorchEngine
from server.scheduler import Draining, Job, ModelScheduler, Outcome, QueueFull, Scheduler
from tests.server.conftest import SOLVED, sudoku_puzzle, tiny_model

CODEC = get_codec("sudoku", 81)
SOLUTION = CODEC.encode(np.asarray(SOLVED))  # every test puzzle blanks cells of SOLVED: this solves them all


def make_engine(slots: int = 4, seed: int = 0) -> TorchEngine:
    model, config = tiny_model("sudoku", 81, seed=seed)
    return TorchEngine(model, config, slots, torch.device("cpu"))


def make_job(
    engine: TorchEngine,
    seed: int = 0,
    max_steps: int = 6,
    halt: HaltMode = "adaptive",
    threshold: float = 0.5,
    **kwargs: object,
) -> Job:
    tokens = CODEC.encode(CODEC.parse(sudoku_puzzle(seed=seed))).astype(np.int64)
    policy = HaltingPolicy(threshold, max_steps, halt)
    return Job(tokens=tokens, vector=engine.vector_for(0), policy=policy, **kwargs)  # type: ignore[arg-type]


class Steer:
    """Engine hook: makes chosen jobs halt (q_halt +20) or go non-finite at chosen steps, and logs every step."""

    def __init__(self, sched: ModelScheduler) -> None:
        self.sched = sched
        self.halt_at: dict[int, int] = {}  # job id -> step at which its halting head fires
        self.nan_at: dict[int, int] = {}  # job id -> step whose result is marked non-finite
        self.solve_at: dict[int, int] = {}  # job id -> step from which its answer is the puzzle's solution
        self.batches: list[list[int]] = []  # job ids of every step, in slot order
        self.rows: list[int] = []  # rows computed by every step (a static batch keeps its halted rows)

    def __call__(self, slots: Sequence[int], result: StepResult | None) -> StepResult | None:
        if result is None:
            return None
        jobs = [self.sched.slots[s] for s in slots]
        self.rows.append(len(jobs))
        self.batches.append([job.id for job in jobs if job is not None])
        q_halt, finite, tokens = result.q_halt.copy(), result.finite.copy(), result.tokens.copy()
        for row, job in enumerate(jobs):
            if job is None:  # a halted row that a static batch still computes
                continue
            step = job.steps_used + 1  # the scheduler counts the step after the engine returns
            if self.halt_at.get(job.id) == step:
                q_halt[row] = 20.0
            if self.nan_at.get(job.id) == step:
                finite[row] = False
            if step >= self.solve_at.get(job.id, math.inf):
                tokens[row] = SOLUTION
        return replace(result, q_halt=q_halt, finite=finite, tokens=tokens)


def scheduler(
    slots: int = 2, capacity: int = 8, policy: str = "continuous", rules: Rules | None = None
) -> tuple[ModelScheduler, Steer]:
    sched = ModelScheduler("sudoku-tiny", make_engine(slots), capacity, policy=policy, rules=rules)  # type: ignore[arg-type]
    steer = Steer(sched)
    sched.engine.hooks.append(steer)
    return sched, steer


def test_freed_slot_is_refilled_from_queue_on_next_tick_while_others_keep_running() -> None:
    sched, steer = scheduler(slots=2)
    a, b, c = (make_job(sched.engine, seed=i, max_steps=10) for i in range(3))
    steer.halt_at[a.id] = 2
    for job in (a, b, c):
        sched.submit(job)

    sched.tick()
    assert sched.slots == [a, b] and list(sched.queue) == [c]
    assert sched.tick() == [a]
    assert a.halted_by is HaltReason.Q_HEAD and a.steps_used == 2
    assert sched.slots == [None, b] and c.started_at is None

    assert sched.tick() == []
    assert sched.slots == [c, b] and not sched.queue
    assert (b.steps_used, c.steps_used) == (3, 1)
    assert steer.batches == [[a.id, b.id], [a.id, b.id], [c.id, b.id]]


def test_puzzle_halting_at_step_k_gets_exactly_k_step_states() -> None:
    sched, steer = scheduler(slots=2)
    early = make_job(sched.engine, seed=1, max_steps=8, record_steps=True)
    late = make_job(sched.engine, seed=2, max_steps=8, record_steps=True)
    steer.halt_at[early.id] = 3
    seen: list[int] = []
    early.on_step = lambda job, record: seen.append(record.step)
    sched.submit(early)
    sched.submit(late)
    while sched.has_work:
        sched.tick()

    assert early.steps_used == 3 and early.halted_by is HaltReason.Q_HEAD
    assert [r.step for r in early.steps] == [1, 2, 3] == seen
    assert early.steps[-1].halt_probability == pytest.approx(1.0)
    assert early.halt_probability == pytest.approx(1.0)
    assert all(r.halt_probability < 0.5 for r in early.steps[:-1])
    np.testing.assert_array_equal(early.answer, early.steps[-1].tokens)
    assert late.steps_used == 8 and late.halted_by is HaltReason.MAX_STEPS
    assert [r.step for r in late.steps] == list(range(1, 9))


def test_an_adaptive_puzzle_halts_at_its_first_verified_answer_and_q_head_mode_runs_on() -> None:
    sched, steer = scheduler(slots=3, rules=CODEC)
    adaptive = make_job(sched.engine, seed=1, max_steps=6, record_steps=True)
    research = make_job(sched.engine, seed=2, max_steps=6, halt="q_head")
    unsolved = make_job(sched.engine, seed=3, max_steps=6)
    steer.solve_at[adaptive.id] = steer.solve_at[research.id] = 3
    for job in (adaptive, research, unsolved):
        sched.submit(job)
    finished: dict[int, list[Job]] = {}
    tick = 0
    while sched.has_work:
        tick += 1
        finished[tick] = sched.tick()

    assert finished[3] == [adaptive]  # stopped at the step its answer first passed the rule check
    assert adaptive.halted_by is HaltReason.VERIFIED and adaptive.verified is True and adaptive.steps_used == 3
    np.testing.assert_array_equal(adaptive.answer, SOLUTION)
    assert [r.step for r in adaptive.steps] == [1, 2, 3]
    # The Q head alone (the paper's inference) never asks the rule check: it runs until its head or max_steps.
    assert research.halted_by is HaltReason.MAX_STEPS and research.steps_used == 6 and research.verified is None
    assert unsolved.halted_by is HaltReason.MAX_STEPS and unsolved.verified is False
    given = unsolved.tokens >= 2  # an answer never alters a given, whatever the untrained model predicts there
    assert unsolved.answer is not None and np.array_equal(unsolved.answer[given], unsolved.tokens[given])


def test_a_q_head_halt_still_ends_an_unverified_puzzle_and_no_check_means_no_verdict() -> None:
    sched, steer = scheduler(slots=2, rules=CODEC)
    wrong = make_job(sched.engine, seed=1, max_steps=6)
    steer.halt_at[wrong.id] = 2
    sched.submit(wrong)
    while sched.has_work:
        sched.tick()
    assert wrong.halted_by is HaltReason.Q_HEAD and wrong.verified is False and wrong.steps_used == 2

    plain, steer = scheduler(slots=2)  # a family without a rule check (ARC): nothing is verified
    job = make_job(plain.engine, seed=1, max_steps=4)
    steer.solve_at[job.id] = 1
    plain.submit(job)
    while plain.has_work:
        plain.tick()
    assert job.halted_by is HaltReason.MAX_STEPS and job.verified is None


def test_a_failing_rule_check_does_not_fail_the_step() -> None:
    class Broken:
        settle = CODEC.settle

        def check_tokens(self, inputs: np.ndarray, answers: np.ndarray) -> np.ndarray:
            raise RuntimeError("checker bug")

    sched, steer = scheduler(slots=2, rules=Broken())
    job = make_job(sched.engine, seed=1, max_steps=3)
    steer.solve_at[job.id] = 1
    sched.submit(job)
    while sched.has_work:
        sched.tick()
    assert job.outcome is Outcome.ANSWERED and job.halted_by is HaltReason.MAX_STEPS and job.verified is None


def test_steps_are_not_recorded_unless_asked() -> None:
    sched, _ = scheduler(slots=1)
    job = make_job(sched.engine, max_steps=3)
    sched.submit(job)
    while sched.has_work:
        sched.tick()
    assert job.steps_used == 3 and job.steps == [] and job.answer is not None


def test_halt_never_runs_max_steps_and_matches_calling_the_model_directly() -> None:
    sched, _ = scheduler(slots=2)
    sched.engine.hooks.append(  # the halting head fires at every step; only "adaptive" listens
        lambda slots, result: None if result is None else replace(result, q_halt=np.full(len(slots), 20.0))
    )
    never = make_job(sched.engine, seed=3, max_steps=7, halt="never", record_steps=True)
    other = make_job(sched.engine, seed=4, max_steps=7, halt="never")
    adaptive = make_job(sched.engine, seed=3, max_steps=7)
    for job in (adaptive, never, other):
        sched.submit(job)
    while sched.has_work:
        sched.tick()

    assert adaptive.steps_used == 1 and adaptive.halted_by is HaltReason.Q_HEAD
    assert never.steps_used == 7 and never.halted_by is HaltReason.MAX_STEPS and never.outcome is Outcome.ANSWERED
    assert [r.step for r in never.steps] == list(range(1, 8))

    model = sched.engine.model
    inputs = torch.as_tensor(never.tokens)[None]
    vector = torch.as_tensor(never.vector)[None]
    carry: Carry = model.initial_carry(1)  # type: ignore[operator]
    with torch.inference_mode():
        for step in range(7):
            out = model.step(carry, inputs, puzzle_vectors=vector)  # type: ignore[operator]
            carry = out.carry
            np.testing.assert_array_equal(never.steps[step].tokens, out.logits.argmax(-1)[0].numpy())
    np.testing.assert_array_equal(never.answer, out.logits.argmax(-1)[0].numpy())
    # Slot 1 held `never` to the end (`other` took slot 0 after `adaptive`): its carry is the direct one.
    torch.testing.assert_close(sched.engine.y[1], carry.y[0])
    torch.testing.assert_close(sched.engine.z[1], carry.z[0])


def test_bf16_engine_keeps_an_fp32_carry_and_steps_as_bf16_training_does() -> None:
    model, config = tiny_model("sudoku", 81, seed=2)
    engine = TorchEngine(model, config, 2, torch.device("cpu"), torch.bfloat16)
    job = make_job(engine, seed=5)
    engine.load(1, job.tokens, job.vector)
    inputs = torch.as_tensor(job.tokens)[None]
    vector = torch.as_tensor(job.vector)[None]
    carry: Carry = model.initial_carry(1)  # type: ignore[operator]
    for _ in range(4):
        result = engine.step([1])
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.step(carry, inputs, puzzle_vectors=vector)  # type: ignore[operator]
        carry = out.carry
        assert engine.y.dtype == engine.z.dtype == torch.float32
        torch.testing.assert_close(engine.y[1], carry.y[0], rtol=0, atol=0)
        torch.testing.assert_close(engine.z[1], carry.z[0], rtol=0, atol=0)
        np.testing.assert_array_equal(result.tokens[0], out.logits.argmax(-1)[0].numpy())
    assert engine.provider == "cpu/bfloat16"


def test_full_queue_raises_and_accepts_again_after_ticks_drain_it() -> None:
    sched, _ = scheduler(slots=1, capacity=2)
    jobs = [make_job(sched.engine, seed=i, max_steps=2) for i in range(5)]
    sched.submit(jobs[0])
    sched.submit(jobs[1])
    with pytest.raises(QueueFull, match="capacity"):
        sched.submit(jobs[2])

    sched.tick()  # jobs[0] moves into the slot: one place frees up in the queue
    sched.submit(jobs[2])
    with pytest.raises(QueueFull):
        sched.submit(jobs[3])

    while sched.has_work:
        sched.tick()
    assert all(j.done and j.outcome is Outcome.ANSWERED for j in jobs[:3])
    sched.submit(jobs[3])
    sched.submit(jobs[4])
    assert len(sched.queue) == 2


def test_scheduler_submit_passes_queue_full_through_and_refuses_while_draining() -> None:
    sched, _ = scheduler(slots=1, capacity=1)
    top = Scheduler({"m": sched})
    top.submit("m", make_job(sched.engine))
    with pytest.raises(QueueFull):
        top.submit("m", make_job(sched.engine))
    top.draining = True
    with pytest.raises(Draining):
        top.submit("m", make_job(sched.engine))


def test_queued_job_past_deadline_finishes_with_deadline_without_running() -> None:
    sched, steer = scheduler(slots=2)
    done: list[Job] = []
    late = make_job(sched.engine, deadline=time.monotonic() - 1, on_done=done.append)
    ok = make_job(sched.engine, seed=1, max_steps=2)
    sched.submit(late)
    sched.submit(ok)

    finished = sched.tick()
    assert finished == [late] and done == [late]
    assert late.halted_by is HaltReason.DEADLINE and late.outcome is Outcome.DEADLINE
    assert late.steps_used == 0 and late.started_at is None and late.answer is None
    assert steer.batches == [[ok.id]]  # the expired job never took a slot


def test_running_job_past_deadline_finishes_after_its_current_step() -> None:
    sched, _ = scheduler(slots=2)
    job = make_job(sched.engine, max_steps=10)
    other = make_job(sched.engine, seed=1, max_steps=10)
    sched.submit(job)
    sched.submit(other)
    sched.tick()
    job.deadline = time.monotonic() - 0.001

    assert sched.tick() == [job]
    assert job.halted_by is HaltReason.DEADLINE and job.outcome is Outcome.DEADLINE
    assert job.steps_used == 2 and job.answer is not None  # the partial answer is kept
    assert sched.slots == [None, other] and other.outcome is None


def test_cancelled_running_job_frees_its_slot_for_the_queue_in_the_same_tick() -> None:
    sched, steer = scheduler(slots=1)
    top = Scheduler({"m": sched})
    running = make_job(sched.engine, max_steps=10)
    queued = make_job(sched.engine, seed=1, max_steps=10)
    top.submit("m", running)
    top.submit("m", queued)
    top.tick()
    assert sched.slots == [running]

    top.cancel(running)
    finished = top.tick()
    assert finished == [running]
    assert running.outcome is Outcome.CANCELLED and running.halted_by is None and running.steps_used == 1
    assert sched.slots == [queued] and queued.steps_used == 1
    assert steer.batches == [[running.id], [queued.id]]


def test_cancelled_queued_job_is_dropped_before_it_takes_a_slot() -> None:
    sched, steer = scheduler(slots=1)
    first = make_job(sched.engine, max_steps=2)
    dropped = make_job(sched.engine, seed=1, max_steps=2)
    sched.submit(first)
    sched.submit(dropped)
    dropped.cancelled = True
    finished = sched.tick()
    assert finished == [dropped] and dropped.outcome is Outcome.CANCELLED and dropped.started_at is None
    while sched.has_work:
        sched.tick()
    assert {i for batch in steer.batches for i in batch} == {first.id}


def test_two_models_are_ticked_round_robin_while_both_have_work() -> None:
    a, _ = scheduler(slots=2)
    b, _ = scheduler(slots=2)
    order: list[str] = []
    a.engine.hooks.append(lambda slots, result: order.append("a") if result is not None else None)
    b.engine.hooks.append(lambda slots, result: order.append("b") if result is not None else None)
    top = Scheduler({"a": a, "b": b})
    top.submit("a", make_job(a.engine, max_steps=2))
    top.submit("b", make_job(b.engine, max_steps=5))

    while top.busy:
        top.tick()
    assert order == ["a", "b", "a", "b", "b", "b", "b"]

    order.clear()
    top.submit("a", make_job(a.engine, max_steps=3))
    top.submit("b", make_job(b.engine, max_steps=3))
    for _ in range(6):
        top.tick()
    assert order in (["a", "b"] * 3, ["b", "a"] * 3)
    assert top.tick() == [] and not top.busy


def test_failing_step_fails_only_that_batch_and_next_tick_succeeds() -> None:
    sched, _ = scheduler(slots=2)
    fired = []

    def boom(slots: Sequence[int], result: StepResult | None) -> StepResult | None:
        if result is None and not fired:
            fired.append(list(slots))
            raise RuntimeError("injected fault")
        return None

    sched.engine.hooks.insert(0, boom)
    done: list[Job] = []
    a, b, c = (make_job(sched.engine, seed=i, max_steps=2, on_done=done.append) for i in range(3))
    for job in (a, b, c):
        sched.submit(job)

    finished = sched.tick()
    assert finished == [a, b] and done == [a, b]
    for job in (a, b):
        assert job.outcome is Outcome.FAILED and job.failure == "model step failed: RuntimeError: injected fault"
        assert job.halted_by is None and job.steps_used == 0
    assert sched.slots == [None, None] and list(sched.queue) == [c]

    sched.tick()
    assert sched.slots[0] is c and c.steps_used == 1 and c.outcome is None
    while sched.has_work:
        sched.tick()
    assert c.halted_by is HaltReason.MAX_STEPS and c.outcome is Outcome.ANSWERED and done == [a, b, c]


def test_non_finite_row_fails_only_that_puzzle() -> None:
    sched, steer = scheduler(slots=3)
    jobs = [make_job(sched.engine, seed=i, max_steps=4) for i in range(3)]
    steer.nan_at[jobs[1].id] = 2
    for job in jobs:
        sched.submit(job)
    sched.tick()
    assert sched.tick() == [jobs[1]]
    assert jobs[1].failure == "non-finite values (NaN/Inf) in step 2" and jobs[1].halted_by is None
    while sched.has_work:
        sched.tick()
    for job in (jobs[0], jobs[2]):
        assert job.outcome is Outcome.ANSWERED and job.steps_used == 4 and job.halted_by is HaltReason.MAX_STEPS


def test_real_nan_in_one_slots_carry_stays_in_that_slot() -> None:
    sched, _ = scheduler(slots=2)
    sick = make_job(sched.engine, max_steps=3)
    healthy = make_job(sched.engine, seed=1, max_steps=3)
    sched.submit(sick)
    sched.submit(healthy)
    sched.tick()
    sched.engine.z[0] = math.nan  # slot 0 holds `sick`

    assert sched.tick() == [sick]
    assert sick.outcome is Outcome.FAILED and "non-finite" in (sick.failure or "")
    while sched.has_work:
        sched.tick()
    assert healthy.outcome is Outcome.ANSWERED and healthy.steps_used == 3


def test_static_policy_starts_no_puzzle_until_the_whole_batch_finished() -> None:
    sched, steer = scheduler(slots=2, policy="static")
    a, b, c = (make_job(sched.engine, seed=i, max_steps=3) for i in range(3))
    steer.halt_at[a.id] = 1
    for job in (a, b, c):
        sched.submit(job)

    sched.tick()
    assert a.done and sched.slots == [None, b]
    sched.tick()
    sched.tick()
    assert b.done and c.started_at is None  # slot 0 stayed empty while b ran
    sched.tick()
    assert sched.slots[0] is c
    assert steer.batches == [[a.id, b.id], [b.id], [b.id], [c.id]]
    assert steer.rows == [2, 2, 2, 1]  # a's row is computed until b, the batch's last puzzle, halts


def test_continuous_policy_computes_only_occupied_rows() -> None:
    sched, steer = scheduler(slots=2)
    a, b = (make_job(sched.engine, seed=i, max_steps=3) for i in range(2))
    steer.halt_at[a.id] = 1
    for job in (a, b):
        sched.submit(job)
    while sched.has_work:
        sched.tick()
    assert steer.rows == [2, 1, 1]


def test_sequential_policy_runs_one_puzzle_at_a_time() -> None:
    sched, steer = scheduler(slots=4, policy="sequential")
    assert len(sched.slots) == 1
    jobs = [make_job(sched.engine, seed=i, max_steps=2) for i in range(3)]
    for job in jobs:
        sched.submit(job)
    while sched.has_work:
        sched.tick()
    assert steer.batches == [[j.id] for j in jobs for _ in range(2)]


def test_worker_thread_answers_submitted_jobs_and_drain_waits_for_them() -> None:
    sched, _ = scheduler(slots=2)
    top = Scheduler({"m": sched})
    finished = threading.Event()
    jobs = [make_job(sched.engine, seed=i, max_steps=3) for i in range(3)]
    remaining = [len(jobs)]

    def on_done(_: Job) -> None:
        remaining[0] -= 1
        if remaining[0] == 0:
            finished.set()

    top.start()
    try:
        for job in jobs:
            job.on_done = on_done
            top.submit("m", job)
        assert top.drain(timeout=20)
        assert finished.wait(5)
        assert all(j.outcome is Outcome.ANSWERED and j.steps_used == 3 for j in jobs)
        with pytest.raises(Draining):
            top.submit("m", make_job(sched.engine))
    finally:
        top.stop()


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (Outcome.ANSWERED, None),
        (Outcome.SUPERSEDED, None),  # another view was verified first: not a failure
        (Outcome.DEADLINE, None),  # counted as a 504 by the request metrics, not as a failed step
        (Outcome.CANCELLED, "cancelled"),
        (Outcome.SHUTDOWN, "shutdown"),
        (Outcome.FAILED, "step_error"),
    ],
)
def test_metrics_count_only_real_failures_by_outcome(outcome: Outcome, kind: str | None) -> None:
    from server.metrics import Metrics

    metrics = Metrics()
    job = Job(tokens=np.zeros(81, np.int64), vector=np.zeros(4, np.float32), policy=HaltingPolicy(0.5, 2))
    job.outcome = outcome
    metrics.finished("m", job)
    counted = {
        s.labels["kind"]: s.value
        for m in metrics.registry.collect()
        if m.name == "trm_puzzle_failures"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counted == ({} if kind is None else {kind: 1.0})

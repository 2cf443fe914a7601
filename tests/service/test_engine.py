"""The batch engine in process: failures at each stage, the heartbeat, queue cancellation,
and batching that does not change greedy outputs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from llmserve.engine import BaseEngine, BatchEngine, EngineStopped, NaiveEngine, QueueFull
from llmserve.engine import continuous as continuous_module
from llmserve.engine.batch import Batch
from llmserve.metrics import Metrics
from llmserve.sequence import SamplingParams, Sequence

# Deadline for one request; a passing run does not wait for it.
TIMEOUT = 60


@pytest.fixture
def loaded(loaded_model):
    return loaded_model


@pytest.fixture
def make_engine(loaded) -> Iterator:
    engines: list[BatchEngine] = []

    def make(**kwargs) -> BatchEngine:
        options = {"max_batch_size": 8, "max_queue": 16, "metrics": Metrics(nvml=False)}
        options.update(kwargs)
        engine = BatchEngine(loaded, **options)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


@dataclass
class Outcome:
    kind: str  # "finish" or "error"
    finish_reason: str | None
    error: str
    tokens: list[int]


async def outcome(seq: Sequence) -> Outcome:
    while True:
        event = await asyncio.wait_for(seq.queue.get(), TIMEOUT)
        if event.kind != "delta":
            return Outcome(event.kind, event.finish_reason, event.error or "", seq.output_ids[:])


async def until(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.002)


def ids(engine: BaseEngine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def start(engine: BaseEngine, text: str, max_tokens: int, rid: str) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    seq = engine.new_sequence(ids(engine, text), params, rid)
    engine.submit(seq)
    return seq


async def succeeds(engine: BaseEngine, rid: str = "after") -> None:
    """A fresh request runs to its end, and the failure count is back to 0."""
    result = await outcome(start(engine, "and now something else", 4, rid))
    assert (result.kind, result.finish_reason, len(result.tokens)) == ("finish", "length", 4)
    assert engine.heartbeat.consecutive_failures == 0
    assert engine.health().ok


# -- a fault at each stage ---------------------------------------------------------------------
# A long request "a" is running when "b" joins; the fault fires at the first run of the
# stage that touches "b". "b" is short, so the first compaction that touches it is the
# one that drops it after it finished; the row still running there ("a") fails.
STAGE_CASES = [
    ("prefill", False, True),
    ("sampling", False, True),
    ("merge", False, True),
    ("decode", True, True),
    ("compact", True, False),
]


@pytest.mark.parametrize(("stage", "a_fails", "b_fails"), STAGE_CASES)
def test_fault_at_each_stage_fails_only_the_requests_it_touches(
    make_engine, stage, a_fails, b_fails
):
    engine = make_engine()

    async def main() -> None:
        a = start(engine, "The river runs through the valley", 300, "req-a")
        await until(lambda: len(a.output_ids) >= 2, "a to run")
        engine.faults.arm(stage, request_id="req-b")
        b = start(engine, "Mountains", 8, "req-b")
        ra, rb = await asyncio.gather(outcome(a), outcome(b))
        assert (ra.kind == "error", rb.kind == "error") == (a_fails, b_fails)
        for rid, result in (("req-a", ra), ("req-b", rb)):
            if result.kind == "error":
                assert rid in result.error and "injected fault" in result.error
                assert stage in result.error
            else:
                assert result.finish_reason == "length"
                assert len(result.tokens) == (300 if rid == "req-a" else 8)
        await succeeds(engine)

    asyncio.run(main())
    assert engine.metrics.engine_failures.labels(stage)._value.get() == 1


def test_client_error_has_request_id_not_exception_text(make_engine, monkeypatch):
    def broken_prefill(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert, secret-detail-0451")

    engine = make_engine()
    real_prefill = continuous_module.prefill
    monkeypatch.setattr(continuous_module, "prefill", broken_prefill)

    async def main() -> None:
        result = await outcome(start(engine, "hello there", 4, "req-secret"))
        assert result.kind == "error"
        assert "req-secret" in result.error and "internal engine error" in result.error
        assert "secret-detail" not in result.error and "CUDA" not in result.error
        monkeypatch.setattr(continuous_module, "prefill", real_prefill)
        await succeeds(engine)

    asyncio.run(main())


def test_failure_outside_every_stage_guard_does_not_end_the_loop(make_engine, monkeypatch):
    """A bug in the step itself (here: advancing the batch) fails the batch, not the engine."""
    engine = make_engine()
    real_advanced = Batch.advanced
    calls = {"n": 0}

    def advanced_once_broken(self, mask, tokens):
        calls["n"] += 1
        if calls["n"] == 3:
            raise IndexError("bookkeeping bug")
        return real_advanced(self, mask, tokens)

    monkeypatch.setattr(Batch, "advanced", advanced_once_broken)

    async def main() -> None:
        result = await outcome(start(engine, "a bug is coming", 10, "req-bug"))
        assert result.kind == "error" and "req-bug" in result.error
        assert engine._thread is not None and engine._thread.is_alive()
        await succeeds(engine)

    asyncio.run(main())


def test_output_failure_fails_only_that_row(make_engine, monkeypatch):
    engine = make_engine()
    real_append = Sequence.append_token

    def append_token(self, token_id):
        if self.request_id == "req-bad" and len(self.output_ids) == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte")
        return real_append(self, token_id)

    monkeypatch.setattr(Sequence, "append_token", append_token)

    async def main() -> None:
        good = start(engine, "a good request", 12, "req-good")
        bad = start(engine, "a bad request", 12, "req-bad")
        rg, rb = await asyncio.gather(outcome(good), outcome(bad))
        assert rg.kind == "finish" and len(rg.tokens) == 12
        assert rb.kind == "error" and "req-bad" in rb.error and "output" in rb.error

    asyncio.run(main())


# -- heartbeat and readiness ---------------------------------------------------------------------
def test_stalled_engine_reports_it_and_recovers(make_engine):
    engine = make_engine(stall_timeout=0.5)

    async def main() -> None:
        assert engine.health().ok
        engine.faults.arm("decode", stall_s=TIMEOUT)
        seq = start(engine, "stuck for a while", 4, "req-stuck")
        await until(lambda: not engine.health().ok, "the engine to report a stall")
        health = engine.health()
        assert health.reason == "engine_stalled" and health.pending == 1
        assert health.heartbeat_age_s > 0.5
        engine.faults.release()
        result = await outcome(seq)
        assert result.kind == "finish"
        await until(lambda: engine.health().ok, "the stall to clear")

    asyncio.run(main())


def test_idle_engine_is_not_stalled(make_engine):
    engine = make_engine(stall_timeout=0.2)
    time.sleep(0.5)
    assert engine.health().ok


def test_repeated_failures_report_failing_until_a_probe_succeeds(make_engine):
    engine = make_engine(max_failures=2, probe_interval=0.2)
    metrics = engine.metrics
    assert metrics is not None

    async def main() -> None:
        engine.faults.arm("prefill", count=2)
        for i in range(2):
            result = await outcome(start(engine, "fail me", 4, f"req-{i}"))
            assert result.kind == "error"
        health = engine.health()
        assert (health.ok, health.reason, health.consecutive_failures) == (
            False,
            "engine_failing",
            2,
        )
        successes = metrics.request_success.labels("length")._value.get()
        # No traffic comes while failing: the engine probes itself and recovers.
        await until(lambda: engine.health().ok, "a probe to clear the failures")
        assert metrics.request_success.labels("length")._value.get() == successes
        await succeeds(engine)

    asyncio.run(main())


def test_dead_engine_refuses_work_and_says_so(loaded, monkeypatch):
    engine = BatchEngine(loaded, metrics=Metrics(nvml=False))

    def crash() -> None:
        raise SystemError("the loop itself broke")

    monkeypatch.setattr(engine, "_loop", crash)
    engine.start()
    engine._thread.join(TIMEOUT)
    assert engine.health().reason == "engine_dead"

    async def main() -> None:
        with pytest.raises(EngineStopped):
            start(engine, "anyone there?", 2, "req-late")

    asyncio.run(main())


# -- cancellation in the queue -------------------------------------------------------------------
def test_cancelled_queued_request_leaves_the_queue_at_once(make_engine):
    engine = make_engine(max_batch_size=1, max_queue=1)
    metrics = engine.metrics
    assert metrics is not None

    async def main() -> None:
        engine.faults.arm("decode", stall_s=TIMEOUT)  # the engine is busy for as long as needed
        running = start(engine, "running", 4, "req-running")
        await until(lambda: engine.num_running == 1, "the first request to run")
        queued = start(engine, "queued", 4, "req-queued")
        assert engine.num_waiting == 1 and metrics.waiting._value.get() == 1
        with pytest.raises(QueueFull):
            start(engine, "one too many", 4, "req-over")
        engine.cancel(queued)
        # At once, with the engine thread still stuck: no step of the engine is needed.
        assert engine.num_waiting == 0 and metrics.waiting._value.get() == 0
        assert (await outcome(queued)).finish_reason == "abort"
        assert metrics.request_failed.labels("cancelled")._value.get() == 1
        later = start(engine, "took its place", 4, "req-later")  # the bound has room again
        engine.faults.release()
        first, second = await asyncio.gather(outcome(running), outcome(later))
        assert (first.finish_reason, second.finish_reason) == ("length", "length")

    asyncio.run(main())


# -- batching does not change greedy outputs ------------------------------------------------------
STAGGERED = [
    # (prompt, max_tokens): different lengths (padding) and different ends (rows leave).
    ("The river runs through the old valley and past the mill", 40),
    ("Hi", 6),
    ("Once upon a time", 30),
    ("Mountains", 14),
    ("A much longer prompt that arrives late, with many more words than the others had", 20),
    ("x", 25),
]


def test_greedy_outputs_are_the_same_alone_and_in_a_changing_batch(make_engine):
    engine = make_engine()
    metrics = engine.metrics
    assert metrics is not None

    async def alone() -> list[list[int]]:
        results = []
        for i, (text, n) in enumerate(STAGGERED):
            results.append((await outcome(start(engine, text, n, f"alone-{i}"))).tokens)
        return results

    async def staggered() -> list[list[int]]:
        tasks = []
        for i, (text, n) in enumerate(STAGGERED):
            seq = start(engine, text, n, f"joined-{i}")
            tasks.append(asyncio.ensure_future(outcome(seq)))
            # The next one joins once this one has run a few steps in the batch.
            await until(lambda seq=seq: len(seq.output_ids) >= 3, "a few steps")
        return [r.tokens for r in await asyncio.gather(*tasks)]

    expected = asyncio.run(alone())
    rows_before = metrics.batch_size._sum.get()
    steps_before = sum(b.get() for b in metrics.batch_size._buckets)
    got = asyncio.run(staggered())
    assert got == expected
    rows = metrics.batch_size._sum.get() - rows_before
    steps = sum(b.get() for b in metrics.batch_size._buckets) - steps_before
    assert rows > steps, "the requests never shared a decode step"
    assert [len(t) for t in got] == [n for _, n in STAGGERED]


@pytest.mark.parametrize("stage", ["prefill", "decode"])
def test_naive_engine_fails_one_request_and_goes_on(loaded, stage):
    engine = NaiveEngine(loaded, metrics=Metrics(nvml=False))
    engine.start()
    try:

        async def main() -> None:
            engine.faults.arm(stage)
            result = await outcome(start(engine, "the baseline", 6, "req-naive"))
            assert result.kind == "error" and "req-naive" in result.error
            assert engine.heartbeat.consecutive_failures == 1
            await succeeds(engine)

        asyncio.run(main())
    finally:
        engine.stop()


def test_both_engines_honour_penalties_and_bias_alike(loaded, make_engine):
    """The same greedy request with penalties and a bias: the batch engine and the naive
    one (through generate()'s logits processors) give the same tokens, other than without."""
    naive = NaiveEngine(loaded, metrics=Metrics(nvml=False))
    naive.start()
    batch = make_engine()
    settings = {
        "presence_penalty": 0.5,
        "frequency_penalty": 0.3,
        "repetition_penalty": 1.3,
        "logit_bias": {300: 2.0},
    }

    async def run(engine: BaseEngine, **extra: object) -> list[int]:
        params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, **extra)
        seq = engine.new_sequence(ids(engine, "the river runs"), params, "penalised")
        engine.submit(seq)
        return (await outcome(seq)).tokens

    try:
        penalised = asyncio.run(run(batch, **settings))
        assert asyncio.run(run(naive, **settings)) == penalised
        assert asyncio.run(run(batch)) != penalised
    finally:
        naive.stop()


# -- the memory budget -------------------------------------------------------------------------
BUDGETED = [("The river runs through the old valley", 40), ("Hi", 30), ("Once upon a time", 35)]


def run_together(engine: BatchEngine, cases: list[tuple[str, int]], tag: str) -> list[Outcome]:
    async def main() -> list[Outcome]:
        seqs = [start(engine, text, n, f"{tag}-{i}") for i, (text, n) in enumerate(cases)]
        return list(await asyncio.gather(*(outcome(s) for s in seqs)))

    return asyncio.run(main())


def run_alone(engine: BatchEngine, cases: list[tuple[str, int]]) -> list[list[int]]:
    async def main() -> list[list[int]]:
        return [
            (await outcome(start(engine, t, n, f"alone-{i}"))).tokens
            for i, (t, n) in enumerate(cases)
        ]

    return asyncio.run(main())


def preemptions(engine: BaseEngine, reason: str) -> float:
    assert engine.metrics is not None
    return engine.metrics.preemptions.labels(reason)._value.get()


def test_budget_takes_newest_rows_out_and_they_resume_unchanged(make_engine):
    expected = run_alone(make_engine(), BUDGETED)
    # Two rows fit while short; as they grow the newest must leave, and come back later.
    engine = make_engine(kv_budget_tokens=60)
    got = run_together(engine, BUDGETED, "budget")
    assert [(o.kind, o.finish_reason) for o in got] == [("finish", "length")] * 3, got
    assert [o.tokens for o in got] == expected
    assert preemptions(engine, "budget") >= 1
    assert engine.heartbeat.consecutive_failures == 0


def test_out_of_memory_puts_rows_back_and_lowers_the_budget(make_engine, monkeypatch):
    expected = run_alone(make_engine(), BUDGETED)
    engine = make_engine()
    real_decode = continuous_module.decode
    calls = {"n": 0}

    def decode_out_of_memory_once(model, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return real_decode(model, batch)

    monkeypatch.setattr(continuous_module, "decode", decode_out_of_memory_once)
    got = run_together(engine, BUDGETED, "oom")
    assert [o.kind for o in got] == ["finish"] * 3, got
    assert [o.tokens for o in got] == expected
    assert preemptions(engine, "out_of_memory") == 3
    assert engine.kv_budget_tokens > 0
    assert engine.metrics is not None
    assert engine.metrics.kv_budget._value.get() == engine.kv_budget_tokens


def test_out_of_memory_every_time_fails_the_request_after_its_retries(make_engine, monkeypatch):
    engine = make_engine()

    def always_out_of_memory(model, batch):
        raise torch.OutOfMemoryError("injected: CUDA out of memory")

    monkeypatch.setattr(continuous_module, "decode", always_out_of_memory)
    result = run_together(engine, [("Hi", 5)], "spent")[0]
    assert result.kind == "error" and "out of accelerator memory" in result.error
    assert preemptions(engine, "out_of_memory") == continuous_module.MAX_OOM_RETRIES
    monkeypatch.undo()
    asyncio.run(succeeds(engine))

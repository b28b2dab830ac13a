"""The engine: EDF queue, batcher, worker thread, deadlines, replacement, admission, stepped streams.

Executors here are small recording models (the engine, not the model, is under test). A
gate lets a test hold the worker inside a call, so what queues up meanwhile is
deterministic; assertions are about which requests ran together and what each was
answered, never about wall-clock durations.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from stream.engine import Engine, Result
from stream.errors import ProtocolError
from stream.hosts import RunBatch, WorkItem
from stream.latency import CostKey, LatencyEstimate


class RecordingExecutor:
    """Doubles each input; records every batch. ``hold()`` makes the next call wait for ``release()``."""

    def __init__(self, max_batch_size: int = 8, seconds: float = 0.0):
        self.max_batch_size = max_batch_size
        self.seconds = seconds
        self.batches: list[list[WorkItem]] = []
        self._gate = threading.Event()
        self._gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def hold(self) -> None:
        self._gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self._gate.set()

    def run(self, batch: RunBatch):
        items = batch.items
        self.batches.append(list(items))
        self.entered.set()
        self._gate.wait(10)
        if self.seconds:
            time.sleep(self.seconds)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        return [item.inputs * 2 for item in items]


async def started(executor, **options) -> Engine:
    engine = Engine("test", executor, **options)
    engine.start()
    return engine


async def wait_entered(executor: RecordingExecutor) -> None:
    await asyncio.get_running_loop().run_in_executor(None, executor.entered.wait, 10)


def inputs_of(batch: list[WorkItem]) -> list:
    return [item.inputs for item in batch]


async def test_idle_worker_runs_a_lone_request_at_once_as_a_batch_of_one():
    executor = RecordingExecutor()
    engine = await started(executor)
    result = await engine.submit(engine.open_session(), 21, budget_s=5)
    assert isinstance(result, Result) and result.output == 42 and result.batch_size == 1
    await engine.stop()


async def test_requests_arriving_during_a_call_are_batched_into_the_next_one():
    executor = RecordingExecutor()
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    futures = [engine.submit(engine.open_session(), i, budget_s=5) for i in range(1, 6)]
    executor.release()
    results = await asyncio.gather(first, *futures)
    assert [r.output for r in results] == [0, 2, 4, 6, 8, 10]
    assert sorted(inputs_of(executor.batches[1])) == [1, 2, 3, 4, 5]
    assert all(r.batch_size == 5 for r in results[1:])
    await engine.stop()


async def test_batches_never_exceed_the_executor_maximum():
    executor = RecordingExecutor(max_batch_size=3)
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    futures = [engine.submit(engine.open_session(), i, budget_s=5) for i in range(1, 8)]
    executor.release()
    await asyncio.gather(first, *futures)
    assert [len(b) for b in executor.batches] == [1, 3, 3, 1]
    await engine.stop()


async def test_earliest_deadline_runs_first():
    executor = RecordingExecutor(max_batch_size=1)
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    budgets = {1: 4.0, 2: 1.0, 3: 3.0, 4: 2.0}
    futures = [engine.submit(engine.open_session(), i, budget_s=b) for i, b in budgets.items()]
    executor.release()
    await asyncio.gather(first, *futures)
    assert [b[0].inputs for b in executor.batches[1:]] == [2, 4, 3, 1]
    await engine.stop()


async def test_request_that_cannot_make_its_budget_is_refused_at_submit():
    executor = RecordingExecutor()
    engine = await started(executor, latency_prior_s=0.5)
    with pytest.raises(ProtocolError) as info:
        await engine.submit(engine.open_session(), 1, budget_s=0.1)
    assert info.value.code == "deadline_exceeded"
    assert executor.batches == []
    await engine.stop()


async def test_requests_whose_deadline_passes_in_the_queue_are_answered_not_run():
    executor = RecordingExecutor()
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    doomed = engine.submit(engine.open_session(), 1, budget_s=0.02)
    await asyncio.sleep(0.1)  # its deadline passes while the worker is held
    executor.release()
    await first
    with pytest.raises(ProtocolError) as info:
        await doomed
    assert info.value.code == "deadline_exceeded"
    assert [inputs_of(b) for b in executor.batches] == [[0]]
    await engine.stop()


async def test_degradable_request_runs_degraded_instead_of_missing():
    executor = RecordingExecutor()
    engine = await started(executor)
    engine.latency.observe(CostKey("normal", 1), int(0.4e9))  # a normal call is known to take 400 ms
    engine.latency.observe(CostKey("degraded", 1), int(0.05e9))  # a degraded one 50 ms
    strict = engine.submit(engine.open_session(), 1, budget_s=0.2)
    lenient = engine.submit(engine.open_session(), 2, budget_s=0.2, allow_degrade=True)
    with pytest.raises(ProtocolError):
        await strict
    result = await lenient
    assert result.degraded and result.output == 4
    assert [item.degraded for item in executor.batches[-1]] == [True]
    await engine.stop()


async def test_newer_observation_replaces_the_queued_one_of_its_session():
    executor = RecordingExecutor()
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    session = engine.open_session()
    older = engine.submit(session, 1, budget_s=5)
    newer = engine.submit(session, 2, budget_s=5)
    executor.release()
    with pytest.raises(ProtocolError) as info:
        await older
    assert info.value.code == "superseded"
    assert (await newer).output == 4
    await first
    assert inputs_of(executor.batches[1]) == [2]
    await engine.stop()


async def test_steps_of_a_stream_are_not_replaced():
    executor = RecordingExecutor()
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    session = engine.open_session()
    steps = [engine.submit(session, i, budget_s=5, replace=False) for i in (1, 2, 3)]
    executor.release()
    await first
    assert [r.output for r in await asyncio.gather(*steps)] == [2, 4, 6]
    await engine.stop()


async def test_closing_a_session_drops_its_queued_work():
    executor = RecordingExecutor()
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    leaving = engine.open_session()
    dropped = engine.submit(leaving, 1, budget_s=5)
    staying = engine.submit(engine.open_session(), 2, budget_s=5)
    engine.close_session(leaving)
    executor.release()
    await first
    assert (await staying).output == 4
    assert dropped.cancelled()
    assert all(1 not in inputs_of(b) for b in executor.batches)
    assert engine.open_sessions == 2  # first's and staying's
    await engine.stop()


async def test_sessions_past_capacity_are_refused():
    engine = await started(RecordingExecutor(), capacity=2)
    a, _ = engine.open_session(), engine.open_session()
    with pytest.raises(ProtocolError) as info:
        engine.open_session()
    assert info.value.code == "at_capacity" and "capacity of 2" in info.value.message
    engine.close_session(a)
    engine.open_session()  # room again
    await engine.stop()


async def test_requests_past_the_queue_bound_are_shed():
    executor = RecordingExecutor()
    engine = await started(executor, max_queue=2)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    queued = [engine.submit(engine.open_session(), i, budget_s=5) for i in (1, 2)]
    shed = engine.submit(engine.open_session(), 3, budget_s=5)
    with pytest.raises(ProtocolError) as info:
        await shed
    assert info.value.code == "queue_full"
    executor.release()
    await asyncio.gather(first, *queued)
    await engine.stop()


async def test_a_failing_batch_is_answered_internal_and_the_engine_keeps_serving():
    executor = RecordingExecutor()
    engine = await started(executor)
    executor.fail_next = True
    with pytest.raises(ProtocolError) as info:
        await engine.submit(engine.open_session(), 1, budget_s=5)
    assert info.value.code == "internal"
    assert (await engine.submit(engine.open_session(), 2, budget_s=5)).output == 4
    await engine.stop()


async def test_batch_window_lets_an_idle_worker_wait_for_company():
    executor = RecordingExecutor()
    engine = await started(executor, batch_window_s=0.3)
    futures = [engine.submit(engine.open_session(), i, budget_s=5) for i in range(3)]
    await asyncio.gather(*futures)
    assert [sorted(inputs_of(b)) for b in executor.batches] == [[0, 1, 2]]
    await engine.stop()


async def test_batch_window_never_holds_a_request_past_its_deadline_risk():
    executor = RecordingExecutor()
    engine = await started(executor, batch_window_s=30.0, margin_s=0.01)
    engine.latency.observe(CostKey("normal", 1), int(0.05e9))
    result = await asyncio.wait_for(engine.submit(engine.open_session(), 1, budget_s=0.3), 10)
    assert result.output == 2 and result.batch_size == 1
    await engine.stop()


async def test_stop_answers_queued_requests_shutting_down():
    executor = RecordingExecutor()
    engine = await started(executor)
    executor.hold()
    first = engine.submit(engine.open_session(), 0, budget_s=5)
    await wait_entered(executor)
    queued = engine.submit(engine.open_session(), 1, budget_s=5)
    stopping = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.05)
    executor.release()
    await stopping
    assert (await first).output == 0
    with pytest.raises(ProtocolError) as info:
        await queued
    assert info.value.code == "shutting_down"


class SlotExecutor:
    """A stepped-stream model: a counter per slot, advanced for the active slots of each batch."""

    def __init__(self, slots: int = 4):
        self.max_batch_size = slots
        self.slots = slots
        self.counters = [0] * slots
        self.opened: list[int] = []
        self.closed: list[int] = []
        self.batches: list[RunBatch] = []
        self.threads: set[str] = set()
        self._gate = threading.Event()
        self._gate.set()
        self.entered = threading.Event()

    def open_slot(self, slot: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.opened.append(slot)
        self.counters[slot] = 0

    def close_slot(self, slot: int) -> None:
        self.closed.append(slot)

    def run(self, batch: RunBatch):
        self.threads.add(threading.current_thread().name)
        self.batches.append(batch)
        self.entered.set()
        self._gate.wait(10)
        for slot, on in enumerate(batch.active):  # one batched step over all slots, masked
            if on:
                self.counters[slot] += 1
        return [self.counters[item.slot] for item in batch.items]


async def test_stepped_sessions_get_a_slot_each_opened_on_the_worker_before_their_first_step():
    executor = SlotExecutor()
    engine = await started(executor)
    a, b = engine.open_session(stepped=True), engine.open_session(stepped=True)
    assert (a.slot, b.slot) == (0, 1)
    assert (await engine.submit(a, None, budget_s=5)).output == 1
    assert executor.opened == [0, 1] and executor.threads == {"engine-test"}
    await engine.stop()


async def test_two_steps_of_one_stream_never_share_a_batch_but_steps_of_two_streams_do():
    executor = SlotExecutor()
    engine = await started(executor)
    a, b, c = (engine.open_session(stepped=True) for _ in range(3))
    executor._gate.clear()
    first = engine.submit(c, None, budget_s=5)
    await asyncio.get_running_loop().run_in_executor(None, executor.entered.wait, 10)
    steps_a = [engine.submit(a, None, budget_s=5) for _ in range(3)]
    step_b = engine.submit(b, None, budget_s=5)
    executor._gate.set()
    outputs_a = [r.output for r in await asyncio.gather(*steps_a)]
    await asyncio.gather(first, step_b)
    assert outputs_a == [1, 2, 3]  # in order, one step per call
    slots_per_batch = [[item.slot for item in batch.items] for batch in executor.batches]
    assert slots_per_batch == [[c.slot], [a.slot, b.slot], [a.slot], [a.slot]]
    assert executor.batches[1].active == [True, True, False, False]  # c's slot idle: masked out
    await engine.stop()


async def test_a_stepped_session_past_the_slot_count_is_refused_at_capacity():
    engine = await started(SlotExecutor(slots=2))
    engine.open_session(stepped=True), engine.open_session(stepped=True)
    with pytest.raises(ProtocolError) as info:
        engine.open_session(stepped=True)
    assert info.value.code == "at_capacity" and info.value.close_code == 1013
    assert "no free slot" in info.value.message
    await engine.stop()


async def test_closing_a_stepped_session_frees_its_slot_for_the_next_one():
    executor = SlotExecutor(slots=1)
    engine = await started(executor)
    first = engine.open_session(stepped=True)
    await engine.submit(first, None, budget_s=5)
    engine.close_session(first)
    second = engine.open_session(stepped=True)
    assert second.slot == first.slot
    assert (await engine.submit(second, None, budget_s=5)).output == 1  # the slot was reset
    assert executor.closed == [first.slot] and executor.opened == [0, 0]
    await engine.stop()


def test_latency_estimate_borrows_from_the_nearest_larger_size_of_the_same_kind():
    estimate = LatencyEstimate(prior_ns=7)
    assert estimate.predict(CostKey("decode", 4)) == 7
    estimate.observe(CostKey("decode", 8), 1000)
    estimate.observe(CostKey("decode", 2), 900)
    assert estimate.predict(CostKey("decode", 4)) == 1000  # nearest larger seen size
    assert estimate.predict(CostKey("decode", 16)) == 1000  # nothing larger: largest seen
    assert estimate.predict(CostKey("prefill", 4)) == 7  # another kind is not confused with it


def test_latency_estimate_tracks_a_changing_model():
    estimate = LatencyEstimate()
    for _ in range(50):
        estimate.observe(CostKey("normal", 1), 100)
    for _ in range(50):
        estimate.observe(CostKey("normal", 1), 200)
    assert 195 <= estimate.predict(CostKey("normal", 1)) <= 215


def test_latency_estimate_never_predicts_faster_than_linear_growth_from_a_smaller_size():
    estimate = LatencyEstimate()
    estimate.observe(CostKey("rtc", 10), 400_000_000)  # one very slow call (a cold start)
    for _ in range(30):
        estimate.observe(CostKey("rtc", 5), 5_000_000)  # the cheaper calls that then run
    assert estimate.predict(CostKey("rtc", 10)) == 10_000_000


async def test_a_soft_latency_target_holds_a_request_so_later_ones_join_its_batch():
    executor = RecordingExecutor()
    engine = await started(executor)
    first = engine.submit(engine.open_session(), 1, budget_s=30, target_s=10)
    await asyncio.sleep(0.05)  # an idle worker would have run `first` alone by now without a target
    second = engine.submit(engine.open_session(), 2, budget_s=30, target_s=0)
    await asyncio.gather(first, second)
    assert [inputs_of(b) for b in executor.batches] == [[1, 2]]
    await engine.stop()


async def test_without_a_target_an_idle_worker_does_not_wait_for_companions():
    executor = RecordingExecutor()
    engine = await started(executor)
    first = engine.submit(engine.open_session(), 1, budget_s=30)
    await asyncio.sleep(0.05)
    second = engine.submit(engine.open_session(), 2, budget_s=30)
    await asyncio.gather(first, second)
    assert [inputs_of(b) for b in executor.batches] == [[1], [2]]
    await engine.stop()

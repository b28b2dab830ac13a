"""The batcher's dispatch rule, with a fake clock and no worker thread: full batch, hold
window, soft target, deadline risk, lanes, one step per stream, replacement."""

from __future__ import annotations

from stream.batcher import Batcher, Dispatch, Lane, PushResult, Request, WaitUntil
from stream.latency import CostKey, LatencyEstimate

MS = 1_000_000


def batcher(max_batch: int = 4, call_ms: float = 10.0, margin_ms: float = 1.0, max_queue: int = 64) -> Batcher:
    latency = LatencyEstimate(prior_ns=int(call_ms * MS))
    return Batcher(max_batch, latency, margin_ns=int(margin_ms * MS), max_queue=max_queue)


def request(owner, arrival_ms: float = 0.0, budget_ms: float = 100.0, **fields) -> Request:
    arrival = int(arrival_ms * MS)
    return Request(owner, fields.pop("inputs", owner), arrival, arrival + int(budget_ms * MS), **fields)


def push(b: Batcher, r: Request, now_ms: float = 0.0) -> None:
    result, _ = b.push(r, int(now_ms * MS))
    assert result is PushResult.QUEUED


def owners(step: Dispatch) -> list:
    return [r.owner for r in step.batch]


def test_an_idle_batcher_dispatches_a_lone_request_at_once():
    b = batcher()
    push(b, request("a"))
    step = b.next(0)
    assert isinstance(step, Dispatch) and owners(step) == ["a"]


def test_nothing_queued_means_wait_for_a_push():
    assert b_next_is_wait(batcher().next(0)) is None


def b_next_is_wait(step) -> int | None:
    assert isinstance(step, WaitUntil)
    return step.ns


def test_a_full_batch_dispatches_even_while_every_request_may_still_be_held():
    b = batcher(max_batch=3)
    for owner in "abc":
        push(b, request(owner, hold_until_ns=50 * MS))
    assert owners(b.next(0)) == ["a", "b", "c"]


def test_a_held_request_waits_until_its_hold_ends():
    b = batcher()
    push(b, request("a", hold_until_ns=5 * MS))
    assert b_next_is_wait(b.next(0)) == 5 * MS
    assert owners(b.next(5 * MS)) == ["a"]


def test_a_soft_target_holds_only_while_the_batch_that_forms_still_replies_in_time():
    b = batcher(call_ms=10, margin_ms=1)
    push(b, request("a", budget_ms=100, hold_until_ns=100 * MS, reply_by_ns=30 * MS))
    # reply by 30 ms, a call takes 10 ms, 1 ms margin: the batch must start by 19 ms
    assert b_next_is_wait(b.next(0)) == 19 * MS
    push(b, request("b", arrival_ms=10, budget_ms=100, hold_until_ns=110 * MS, reply_by_ns=60 * MS), now_ms=10)
    assert owners(b.next(19 * MS)) == ["a", "b"]


def test_deadline_risk_ends_a_hold_window():
    b = batcher(call_ms=10, margin_ms=1)
    push(b, request("a", budget_ms=20, hold_until_ns=10_000 * MS))
    assert b_next_is_wait(b.next(0)) == 9 * MS  # 20 - 10 - 1
    assert owners(b.next(9 * MS)) == ["a"]


def test_the_earliest_deadline_goes_first():
    b = batcher(max_batch=1)
    for owner, budget in (("slow", 90), ("urgent", 20), ("middle", 50)):
        push(b, request(owner, budget_ms=budget))
    order = [owners(b.next(0))[0] for _ in range(3)]
    assert order == ["urgent", "middle", "slow"]


def test_a_request_late_even_alone_is_refused_at_push():
    b = batcher(call_ms=50)
    result, _ = b.push(request("a", budget_ms=20), 0)
    assert result is PushResult.LATE


def test_a_request_that_became_late_in_the_queue_is_expired_not_run():
    b = batcher(call_ms=10)
    push(b, request("a", budget_ms=30))
    b.busy_until_ns = 0
    step = b.next(25 * MS)  # 25 + 10 > 30
    assert step.batch == [] and [r.owner for r in step.expired] == ["a"]


def test_a_degradable_request_runs_degraded_when_only_the_degraded_call_makes_it():
    latency = LatencyEstimate()
    latency.observe(CostKey("normal", 1), 40 * MS)
    latency.observe(CostKey("degraded", 1), 10 * MS)
    b = Batcher(4, latency, margin_ns=MS)
    push(b, request("a", budget_ms=30, allow_degrade=True))
    step = b.next(0)
    assert owners(step) == ["a"] and step.batch[0].degraded and step.predicted_ns == 10 * MS


def test_a_newer_replaceable_request_of_an_owner_supersedes_its_queued_one():
    b = batcher()
    push(b, request("a", inputs=1))
    result, superseded = b.push(request("a", inputs=2), 0)
    assert result is PushResult.QUEUED and superseded.inputs == 1
    assert [r.inputs for r in b.next(0).batch] == [2]


def test_past_the_queue_bound_a_request_is_shed():
    b = batcher(max_queue=2)
    push(b, request("a"))
    push(b, request("b"))
    assert b.push(request("c"), 0)[0] is PushResult.QUEUE_FULL


def test_one_step_per_stream_per_batch_and_in_push_order():
    b = batcher(max_batch=8)
    for i in range(3):
        push(b, request("s", inputs=i, stream=0, replaceable=False, lane=Lane.STEP))
    push(b, request("t", inputs="t0", stream=1, replaceable=False, lane=Lane.STEP))
    batches = []
    while isinstance(step := b.next(0), Dispatch):
        batches.append([r.inputs for r in step.batch])
        b.finished()
    assert batches == [[0, "t0"], [1], [2]]


def test_dropping_an_owner_takes_its_queued_and_waiting_steps():
    b = batcher()
    for i in range(3):
        push(b, request("s", inputs=i, stream=0, replaceable=False, lane=Lane.STEP))
    push(b, request("t"))
    assert sorted(r.inputs for r in b.drop("s")) == [0, 1, 2]
    assert owners(b.next(0)) == ["t"] and b.depth == 0


def test_promoting_an_owner_moves_its_queued_and_waiting_steps_up_in_stream_order():
    b = batcher(max_batch=1)
    for i in range(2):
        push(b, request("s", inputs=f"slice{i}", stream=0, replaceable=False, lane=Lane.PREFILL))
    push(b, request("other", inputs="other", stream=1, replaceable=False, lane=Lane.PREFILL))
    push(b, request("d", inputs="decode", stream=2, replaceable=False, lane=Lane.STEP))
    assert b.promote("s", Lane.STEP) == 2
    order = []
    while isinstance(step := b.next(0), Dispatch):
        order.append((step.lane, step.batch[0].inputs))
        b.finished()
    mine = [(lane, inputs) for lane, inputs in order if inputs.startswith("slice")]
    assert mine == [(Lane.STEP, "slice0"), (Lane.STEP, "slice1")]  # on the step lane, in order
    assert (Lane.PREFILL, "other") in order and b.depth == 0


def test_promoting_leaves_higher_lanes_and_other_owners_alone():
    b = batcher()
    push(b, request("s", inputs="step", stream=0, replaceable=False, lane=Lane.STEP))
    push(b, request("t", inputs="prefill", stream=1, replaceable=False, lane=Lane.PREFILL))
    assert b.promote("s", Lane.ONESHOT) == 0 and b.promote("nobody", Lane.STEP) == 0
    assert b.next(0).lane is Lane.STEP
    b.finished()
    assert b.next(0).lane is Lane.PREFILL


def test_a_higher_lane_goes_first_when_both_are_ready():
    b = batcher()
    push(b, request("p", lane=Lane.PREFILL))
    push(b, request("d", lane=Lane.STEP))
    push(b, request("o", lane=Lane.ONESHOT))
    assert owners(b.next(0)) == ["d"]


def test_a_prefill_slice_never_delays_a_waiting_decode_step_by_more_than_one_slice():
    # Decode steps of one stream arrive one at a time (the next after the previous is
    # answered, as a decoder works) while a long prompt of another session is prefilled
    # slice by slice. Between two decode steps at most one prefill slice runs.
    b = batcher(max_batch=4)
    for slice_ in range(6):
        push(b, request("prompt", inputs=f"slice{slice_}", stream=1, replaceable=False, lane=Lane.PREFILL))
    lanes = []
    for _ in range(6):
        push(b, request("chat", inputs="decode", stream=0, replaceable=False, lane=Lane.STEP))
        step = b.next(0)
        lanes.append(step.lane)
        b.finished()
        if step.lane is Lane.PREFILL:  # the decode step still waits: it goes next
            step = b.next(0)
            lanes.append(step.lane)
            assert step.lane is Lane.STEP
            b.finished()
    decode_positions = [i for i, lane in enumerate(lanes) if lane is Lane.STEP]
    gaps = [later - earlier - 1 for earlier, later in zip(decode_positions, decode_positions[1:])]
    assert max(gaps) <= 1 and Lane.PREFILL in lanes  # prefill progresses, decode waits one slice at most


def test_a_lane_passed_over_once_goes_next():
    b = batcher(max_batch=1)
    for i in range(3):
        push(b, request(f"d{i}", lane=Lane.STEP))
    push(b, request("p", lane=Lane.PREFILL))
    lanes = []
    while isinstance(step := b.next(0), Dispatch):
        lanes.append(step.lane)
        b.finished()
    assert lanes == [Lane.STEP, Lane.PREFILL, Lane.STEP, Lane.STEP]


def test_each_lane_predicts_with_the_cost_its_batch_names():
    latency = LatencyEstimate(prior_ns=MS)
    latency.observe(CostKey("decode", 1), 2 * MS)
    latency.observe(CostKey("prefill", 512), 40 * MS)

    def cost_of(batch):
        if batch[0].lane is Lane.PREFILL:
            return CostKey("prefill", sum(len(r.inputs) for r in batch))
        return CostKey("decode", len(batch))

    b = Batcher(4, latency, cost_of=cost_of, margin_ns=0)
    push(b, request("p", budget_ms=100, inputs="x" * 512, lane=Lane.PREFILL, hold_until_ns=10**12))
    push(b, request("d", budget_ms=100, lane=Lane.STEP, hold_until_ns=10**12))
    # the deadline risk of each lane comes from its own estimate: 100 - 40 and 100 - 2 ms
    assert b_next_is_wait(b.next(0)) == 60 * MS
    assert b.next(60 * MS).lane is Lane.PREFILL

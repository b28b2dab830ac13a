"""The chunk merge (chunking.merge): one implementation for the client, the server and the strategies."""

import subprocess
import sys

import numpy as np
import pytest

from chunking.merge import ChunkPlan, merge_chunk, shift_chunk


def chunk(values, a=2):
    return np.repeat(np.asarray(values, dtype=np.float32)[:, None], a, axis=1)


def planned(plan, ticks):
    return [None if (a := plan.action_at(t)) is None else float(a[0]) for t in ticks]


def test_importing_the_merge_does_not_import_torch():
    code = "import sys, chunking.merge, clients.action_buffer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shift_drops_executed_actions_per_item_and_fills_the_tail():
    batch = np.arange(5, dtype=np.float32).reshape(1, 5, 1).repeat(2, axis=0)
    last = shift_chunk(batch, np.array([0, 2]), fill="last")[..., 0]
    zero = shift_chunk(batch, np.array([0, 2]), fill="zero")[..., 0]
    assert last.tolist() == [[0, 1, 2, 3, 4], [2, 3, 4, 4, 4]]
    assert zero.tolist() == [[0, 1, 2, 3, 4], [2, 3, 4, 0, 0]]


def test_shift_to_a_longer_window_holds_the_last_action():
    assert shift_chunk(chunk([0, 1, 2]), 1, length=4)[:, 0].tolist() == [1, 2, 2, 2]


def test_shifting_into_the_past_is_refused():
    with pytest.raises(ValueError):
        shift_chunk(chunk([0, 1, 2]), -1)


def test_an_arriving_chunk_takes_over_at_the_index_of_the_tick_it_arrives_at():
    first = merge_chunk(None, chunk([0, 1, 2, 3, 4, 5]), start_tick=8, now=8).plan
    merged = merge_chunk(first, chunk([10, 11, 12, 13, 14, 15]), start_tick=10, now=13)
    assert merged.took and merged.skipped == 3
    assert planned(merged.plan, [13, 14, 15, 16]) == [13, 14, 15, None]


def test_a_merge_never_replays_ticks_that_already_passed():
    plan = merge_chunk(None, chunk([0, 1, 2, 3]), start_tick=10, now=12).plan
    assert planned(plan, [11, 12]) == [None, 2]


def test_a_newer_chunk_replaces_the_rest_of_the_older_plan():
    plan = merge_chunk(None, chunk([0, 1, 2, 3, 4, 5]), start_tick=0, now=0).plan
    plan = merge_chunk(plan, chunk([10, 11]), start_tick=2, now=2).plan
    assert planned(plan, [2, 3, 4]) == [10, 11, None]  # the old plan's tick 4 is not resumed


def test_a_chunk_older_than_the_plan_is_stale_and_not_merged():
    plan = merge_chunk(None, chunk([0, 1, 2, 3, 4, 5]), start_tick=12, now=12).plan
    merged = merge_chunk(plan, chunk([9, 9, 9, 9, 9, 9]), start_tick=6, now=14)
    assert not merged.took
    assert planned(merged.plan, [14]) == [2]  # the current plan goes on at its index 14 - 12


def test_a_newer_chunk_with_nothing_left_for_now_empties_the_plan():
    plan = merge_chunk(None, chunk([0, 1, 2, 3, 4, 5, 6, 7]), start_tick=0, now=0).plan
    merged = merge_chunk(plan, chunk([10, 11]), start_tick=2, now=5)
    assert merged.took and merged.skipped == 2
    assert planned(merged.plan, [5, 6]) == [None, None]  # the robot holds; the older plan is not resumed


def test_a_chunk_arriving_early_waits_for_its_start_tick():
    plan = merge_chunk(None, chunk([0, 1, 2, 3]), start_tick=0, now=0).plan
    plan = merge_chunk(plan, chunk([7, 8]), start_tick=3, now=1).plan
    assert planned(plan, [1, 2, 3, 4]) == [None, None, 7, 8]


def test_ticks_held_without_a_plan_consume_no_actions():
    # the plan ran out at tick 4 (the robot held from then on); the chunk requested at tick 2
    # arrives at tick 7: only ticks 2 and 3 ran from the old plan, so index 2 runs at tick 7
    plan = merge_chunk(None, chunk([0, 1, 2, 3]), start_tick=0, now=0).plan
    merged = merge_chunk(plan, chunk([10, 11, 12, 13, 14]), start_tick=2, now=7, ran_until=4)
    assert merged.skipped == 2
    assert planned(merged.plan, [7, 8, 9, 10]) == [12, 13, 14, None]
    assert merged.plan.first_tick - merged.skipped == 5  # where the chunk's index 0 fell


def test_a_batch_of_lockstep_chunks_merges_and_shifts_together():
    batch = np.stack([chunk([0, 1, 2, 3]), chunk([5, 6, 7, 8])])  # [2, 4, 2]
    plan = merge_chunk(None, batch, start_tick=4, now=5).plan
    assert plan.action_at(5)[:, 0].tolist() == [1, 6]
    assert plan.shifted_to(6, 3)[:, :, 0].tolist() == [[2, 3, 3], [7, 8, 8]]
    assert plan.remaining(6) == 2

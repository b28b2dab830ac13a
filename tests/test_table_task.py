"""The goal-conditioned table task (issue 11): dynamics, goals, expert, goal switches, serving."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks.goal_switch import goal_switch_cell, goal_switch_summary
from chunking.dynamics import one_tick_model
from chunking.dynamics.table import HALF_X, TAU, V_MAX
from clients.sim import make_task
from clients.sim.table import GOAL_KINDS, GOAL_RADIUS, REGION_CENTRES, STEP, goal_target
from tiny_policies import expert_flow_policy

DT = 0.02
OBJECTS = [{"color": "red", "shape": "cube", "x": 0.3, "y": 0.2},
           {"color": "blue", "shape": "ball", "x": -0.4, "y": -0.1},
           {"color": "red", "shape": "ring", "x": -0.1, "y": 0.25}]


def state_at(p, v=(0.0, 0.0), target=(0.0, 0.0), kind="reach") -> torch.Tensor:
    onehot = [1.0 if k == kind else 0.0 for k in GOAL_KINDS]
    return torch.tensor([[*p, *v, *target, *onehot]], dtype=torch.float32)


def test_velocity_follows_the_command_with_a_first_order_lag_and_the_goal_token_is_untouched():
    step = one_tick_model("table")
    state = state_at((0.0, 0.0), target=(0.3, 0.1), kind="region")
    nxt = step(state, torch.tensor([[1.0, -0.5]]), DT)
    alpha = DT / TAU
    torch.testing.assert_close(nxt[0, 2:4], torch.tensor([V_MAX * alpha, -0.5 * V_MAX * alpha]))
    torch.testing.assert_close(nxt[0, 0:2], nxt[0, 2:4] * DT)
    assert torch.equal(nxt[0, 4:], state[0, 4:])


def test_the_table_edge_stops_the_gripper():
    step = one_tick_model("table")
    nxt = step(state_at((HALF_X - 0.001, 0.0), v=(0.5, 0.2)), torch.tensor([[1.0, 0.0]]), DT)
    assert nxt[0, 0].item() == pytest.approx(HALF_X)
    assert nxt[0, 2].item() == 0.0 and nxt[0, 3].item() != 0.0


def test_goals_ground_in_the_tables_state():
    assert goal_target({"action": "reach", "color": "blue", "shape": "ball"}, (0, 0), (0, 0), OBJECTS) == ((-0.4, -0.1), "reach")
    # the colour alone: the nearest red object
    assert goal_target({"action": "reach", "color": "red", "shape": None}, (0.0, 0.3), (0, 0), OBJECTS)[0] == (-0.1, 0.25)
    assert goal_target({"action": "reach", "color": "green", "shape": "cube"}, (0, 0), (0, 0), OBJECTS) is None
    (x, y), kind = goal_target({"action": "move", "dx": -2, "dy": 1}, (0.1, 0.0), (0, 0), OBJECTS)
    assert kind == "move" and (x, y) == pytest.approx((0.1 - 2 * STEP, STEP))
    assert goal_target({"action": "move", "dx": 20, "dy": 0}, (0.1, 0.0), (0, 0), OBJECTS)[0][0] < HALF_X
    assert goal_target({"action": "region", "region": "top_left"}, (0, 0), (0, 0), OBJECTS) == (REGION_CENTRES["top_left"], "region")
    (x, y), kind = goal_target({"action": "stop"}, (0.0, 0.0), (0.4, 0.0), OBJECTS)
    assert kind == "stop" and 0.0 < x < 0.05 and y == 0.0
    assert goal_target({"action": "faster"}, (0, 0), (0, 0), OBJECTS) is None


@pytest.mark.parametrize("goal", [{"action": "reach", "color": "red", "shape": "cube"},
                                  {"action": "move", "dx": -3, "dy": -2},
                                  {"action": "region", "region": "bottom_right"},
                                  {"action": "stop"}])
def test_the_expert_reaches_every_kind_of_goal(goal):
    task = make_task("table", action_noise_std=0.0, goal_changes=0)
    task.reset(1, torch.Generator().manual_seed(0))
    for _ in range(10):  # get going toward the episode's first goal
        task.step(task.expert_action())
    objects = [{"color": "red", "shape": "cube", "x": -0.35, "y": 0.2}]
    p, v = task.observe()[0, 0:2].tolist(), task.observe()[0, 2:4].tolist()
    (x, y), kind = goal_target(goal, p, v, objects)
    task.set_goal(torch.tensor([[x, y]]), torch.tensor([GOAL_KINDS.index(kind)]))
    while not bool(task.done()[0]):
        task.step(task.expert_action())
    assert bool(task.solved()[0])
    assert (task.observe()[0, 0:2] - torch.tensor([x, y])).norm().item() < GOAL_RADIUS


def test_goals_change_mid_episode_while_the_gripper_moves_and_the_expert_turns_toward_the_new_one():
    task = make_task("table", action_noise_std=0.0)
    task.reset(64, torch.Generator().manual_seed(1))
    speeds_at_change = []
    goal = task.observe()[:, 4:]
    while not bool(task.done().all()):
        before = task.observe()
        state = task.step(task.expert_action())
        changed = (state[:, 4:] != goal).any(dim=1)
        speeds_at_change += before[changed, 2:4].norm(dim=1).tolist()
        goal = state[:, 4:]
    assert bool((task.goal_changes == 2).all()) and bool(task.solved().all())
    assert np.median(speeds_at_change) > 0.2  # most changes come while the gripper is on its way
    samples = torch.tensor(task.reaction_samples)
    assert samples.numel() >= 100 and samples.max().item() <= 10  # 200 ms at 50 Hz


def test_goal_switch_measurement_sync_waits_longest_and_future_state_smooths_the_switch_seam():
    policy = expert_flow_policy("table")
    rows = {}
    for strategy, s in (("sync", 50), ("naive", 5), ("rtc", 5), ("rtc_future", 5)):
        rows[strategy] = goal_switch_cell(policy, make_task("table"), strategy, 5, s, episodes=12, seed=0, beta=1.0)
    for row in rows.values():
        assert row["goal_changes"] > 0 and row["responded"] > 0 and row["solve_rate"] > 0.8
    assert rows["sync"]["reaction_ms"] > 2 * rows["rtc"]["reaction_ms"]
    assert rows["rtc"]["within_one_chunk"] == 1.0
    assert rows["rtc_future"]["switch_seam_jerk"] < rows["naive"]["switch_seam_jerk"]
    summary = goal_switch_summary([{"measurement": "goal_switch", "task": "table", "policy": "flow", "latency": "vla",
                                    "latency_ms": 100.0, "d": 5, "strategy": name, "s": r_s,
                                    **({"sync_mode": "whole_chunk"} if name == "sync" else {}), **rows[name]}
                                   for name, r_s in (("sync", 50), ("naive", 5), ("rtc", 5), ("rtc_future", 5))])
    vla = summary["table flow"]["vla"]
    assert vla["sync_whole_chunk_over_rtc"] == pytest.approx(rows["sync"]["reaction_ms"] / rows["rtc"]["reaction_ms"])


def test_synchronous_execution_may_run_the_whole_chunk_but_asynchronous_may_not():
    from chunking.strategies import ChunkedController, StrategyConfig

    policy = expert_flow_policy("table")
    ChunkedController(policy, StrategyConfig("sync"), d=5, s=50)
    with pytest.raises(ValueError):
        ChunkedController(policy, StrategyConfig("naive"), d=5, s=50)


def shipped(family: str) -> bool:
    from policies.base import checkpoint_paths

    return all(p.exists() for p in checkpoint_paths("table", family))  # type: ignore[arg-type]


@pytest.mark.skipif(not shipped("flow"), reason="models/checkpoints/table_flow.* not trained yet")
def test_the_shipped_table_checkpoint_loads_and_is_served_with_real_time_chunking():
    from websockets.sync.client import connect

    from clients.server_process import ServerProcess
    from stream.wire import packb, unpackb

    task = make_task("table")
    state = task.reset(1, torch.Generator().manual_seed(0))[0].numpy()
    with ServerProcess(["--model", "table"]) as server, connect(server.url("/v1/policy")) as ws:
        ws.send(packb({"type": "hello", "strategy": "rtc", "control_hz": 50, "future_state": True}))
        ready = unpackb(ws.recv(timeout=60))
        assert ready["type"] == "ready"
        assert ready["model"]["horizon"] == 50 and ready["model"]["state_dim"] == 10
        chunks = []
        for tick in (0, 3):
            ws.send(packb({"type": "observation", "request_id": tick, "tick": tick, "state": state}))
            reply = unpackb(ws.recv(timeout=30))
            assert reply["type"] == "chunk"
            chunks.append(np.asarray(reply["actions"]))
    assert chunks[0].shape == (50, 2) and np.isfinite(chunks[1]).all()
    # the first action heads for the goal: toward the target from the gripper's place
    to_goal = state[4:6] - state[0:2]
    assert float(np.dot(chunks[0][:5].mean(axis=0), to_goal)) > 0
    json.dumps(ready)  # the metadata a browser gets is plain JSON
    assert math.isfinite(float(chunks[0][0, 0]))

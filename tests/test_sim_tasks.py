"""Specification of the simulated tasks in ``clients.sim``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clients.sim import TASKS, make_task
from clients.sim.expert_chunks import run_chunked
from clients.sim.gym_env import SingleEpisodeEnv

TASK_NAMES = sorted(TASKS)
DELAY_TASKS = [n for n in TASK_NAMES if TASKS[n].delay_hurts_solve_rate]


def test_registry_holds_at_least_four_tasks_one_with_target_changes_and_one_multimodal():
    assert len(TASKS) >= 4
    assert any(cls.has_target_changes for cls in TASKS.values())
    assert any(cls.multimodal for cls in TASKS.values())


def test_make_task_rejects_an_unknown_name():
    with pytest.raises(KeyError):
        make_task("no-such-task")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_documents_state_action_rate_and_success(name):
    doc = (TASKS[name].__module__ and __import__(TASKS[name].__module__, fromlist=["x"]).__doc__).lower()
    for word in ("state", "action", "control rate", "success"):
        assert word in doc


@pytest.mark.parametrize("name", TASK_NAMES)
def test_expert_solves_the_task_without_noise(name):
    solved = run_chunked(make_task(name, action_noise_std=0.0), "closed", 0, 1, episodes=200, seed=1)
    assert solved.float().mean().item() >= 0.95


@pytest.mark.parametrize("name", TASK_NAMES)
def test_heavy_action_noise_lowers_the_experts_solve_rate(name):
    clean = run_chunked(make_task(name, action_noise_std=0.0), "closed", 0, 1, episodes=200, seed=1)
    noisy = run_chunked(make_task(name, action_noise_std=1.0), "closed", 0, 1, episodes=200, seed=1)
    assert noisy.float().mean().item() < clean.float().mean().item() - 0.1


@pytest.mark.parametrize("name", DELAY_TASKS)
def test_naive_delay_of_four_ticks_hurts_the_chunked_expert(name):
    sync = run_chunked(make_task(name), "sync", 0, 1, episodes=200, seed=2)
    naive = run_chunked(make_task(name), "naive", 4, 4, episodes=200, seed=2)
    assert naive.float().mean().item() < sync.float().mean().item() - 0.2


@pytest.mark.parametrize("name", DELAY_TASKS)
def test_future_state_rollout_recovers_most_of_the_delay_loss(name):
    sync = run_chunked(make_task(name), "sync", 0, 1, episodes=200, seed=2).float().mean().item()
    naive = run_chunked(make_task(name), "naive", 4, 4, episodes=200, seed=2).float().mean().item()
    future = run_chunked(make_task(name), "future", 4, 4, episodes=200, seed=2).float().mean().item()
    assert sync - future <= 0.5 * (sync - naive)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_shapes_and_dtypes_follow_the_batch_contract(name):
    task = make_task(name)
    b, s, a = 5, task.state_dim, task.action_dim
    state = task.reset(b, torch.Generator().manual_seed(0))
    assert state.shape == (b, s) and state.dtype == torch.float32
    assert task.expert_action().shape == (b, a)
    assert task.expert_chunk().shape == (b, task.horizon, a)
    assert task.hold_action().shape == (b, a)
    assert task.step(task.expert_action()).shape == (b, s)
    for flags in (task.solved(), task.failed(), task.done()):
        assert flags.shape == (b,) and flags.dtype == torch.bool
    assert task.reaction_ticks().shape == (b,) and task.reaction_ticks().dtype == torch.float32
    with pytest.raises(ValueError):
        task.step(torch.zeros(b + 1, a))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_gives_the_same_episodes_and_another_seed_does_not(name):
    def run(seed: int) -> torch.Tensor:
        task = make_task(name)
        task.reset(8, torch.Generator().manual_seed(seed))
        for _ in range(30):
            task.step(task.expert_action())
        return task.observe()

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_predict_state_matches_noise_free_stepping_where_nothing_unforeseen_happened(name):
    task = make_task(name, action_noise_std=0.0, disturbances=False)
    b, k = 64, 6
    gen = torch.Generator().manual_seed(3)
    task.reset(b, gen)
    for _ in range(10):
        task.step(task.expert_action())
    start = task.observe()
    pending = task.expert_chunk()[:, :k] + 0.3 * torch.randn(b, k, task.action_dim, generator=gen)
    steps = torch.randint(0, k + 1, (b,), generator=gen)
    events0 = task.events.clone()
    visited = [start]
    quiet = ~task.done()
    for j in range(k):
        task.step(pending[:, j])
        visited.append(task.observe())
        quiet &= ~task.done() | (steps <= j)
    quiet &= task.events == events0
    assert int(quiet.sum()) >= b // 2
    predicted = task.predict_state(start, pending, steps)
    actual = torch.stack(visited)[steps, torch.arange(b)]
    torch.testing.assert_close(predicted[quiet], actual[quiet], rtol=1e-5, atol=1e-5)


def test_predict_state_with_zero_pending_steps_returns_the_state():
    task = make_task("balance")
    state = task.reset(4)
    assert torch.equal(task.predict_state(state, torch.ones(4, 3, 1), 0), state)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_finished_episodes_stay_frozen(name):
    task = make_task(name)
    task.reset(16, torch.Generator().manual_seed(0))
    while not bool(task.done().any()):
        task.step(task.expert_action())
    done = task.done()
    before = task.observe()
    task.step(torch.ones(16, task.action_dim))
    assert torch.equal(task.observe()[done], before[done])


@pytest.mark.parametrize("name", [n for n in TASK_NAMES if not TASKS[n].has_target_changes])
def test_reaction_ticks_are_nan_without_target_changes(name):
    task = make_task(name)
    task.reset(4)
    for _ in range(20):
        task.step(task.expert_action())
    assert bool(torch.isnan(task.reaction_ticks()).all())


def test_expert_reacts_to_a_target_change_within_a_few_ticks():
    task = next(cls for cls in TASKS.values() if cls.has_target_changes)()
    task.reset(100, torch.Generator().manual_seed(0))
    while not bool(task.done().all()):
        task.step(task.expert_action())
    ticks = task.reaction_ticks()
    assert bool(torch.isfinite(ticks).all())
    assert 0 < ticks.mean().item() <= 4


def test_reaction_is_slower_when_execution_is_delayed():
    cls = next(cls for cls in TASKS.values() if cls.has_target_changes)

    def mean_reaction(strategy: str, d: int) -> float:
        task = cls()
        run_chunked(task, strategy, d, max(1, d), episodes=100, seed=0)
        return torch.nanmean(task.reaction_ticks()).item()

    assert mean_reaction("naive", 4) > mean_reaction("sync", 0) + 2


def test_multimodal_expert_passes_on_both_sides():
    task = next(cls for cls in TASKS.values() if cls.multimodal)()
    task.reset(400, torch.Generator().manual_seed(0))
    mode = task._expert_mode()
    assert 0.3 < (mode > 0).float().mean().item() < 0.7


def test_gym_wrapper_runs_an_expert_episode_to_success():
    env = SingleEpisodeEnv("whack")
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_shape and obs.dtype == np.float32
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(info["expert_action"])
        total += reward
    assert terminated and info["solved"] and total == 1.0
    assert info["reaction_ticks"] is not None and not math.isnan(info["reaction_ticks"])


def test_gym_wrapper_refuses_steps_after_the_episode_ended():
    env = SingleEpisodeEnv("slalom")
    _, info = env.reset(seed=1)
    done = False
    while not done:
        _, _, terminated, truncated, info = env.step(info["expert_action"])
        done = terminated or truncated
    with pytest.raises(RuntimeError):
        env.step(np.zeros(env.action_shape, dtype=np.float32))


def test_gym_wrapper_reset_with_the_same_seed_repeats_the_episode():
    env = SingleEpisodeEnv("catch")
    first, _ = env.reset(seed=5)
    env.reset(seed=6)
    again, _ = env.reset(seed=5)
    np.testing.assert_array_equal(first, again)

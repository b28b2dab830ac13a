"""Specification of demonstration collection and behaviour-cloning training."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest
import torch

from clients.sim import make_task
from clients.sim.demonstrations import collect_demonstrations
from policies.base import PolicyConfig, checkpoint_paths
from policies.checkpoint import load_policy
from clients.train import add_arguments, main
from policies.training import fit_statistics, train_policy


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demos(one_torch_thread):
    return collect_demonstrations(make_task("slalom"), episodes=20, seed=0)


def config_for(demos, family: str) -> PolicyConfig:
    return PolicyConfig(
        task="slalom", family=family, horizon=16, action_dim=1, state_dim=4, control_hz=50.0,
        num_steps=5, hidden=64, **fit_statistics(demos.states, demos.chunks),
    )


def test_demonstrations_pair_each_state_with_an_expert_chunk(demos):
    task = make_task("slalom")
    assert demos.states.shape[1] == task.state_dim
    assert demos.chunks.shape[1:] == (task.horizon, task.action_dim)
    assert len(demos) > 20 * 30
    assert bool((demos.chunks.abs() <= 1.0).all())
    assert bool((demos.offsets == 0).all())


def test_future_offset_training_draws_offsets_up_to_the_maximum():
    d = collect_demonstrations(make_task("balance"), episodes=10, future_offset_max=3, seed=0)
    assert int(d.offsets.min()) == 0 and int(d.offsets.max()) == 3
    assert 1.0 < d.offsets.float().mean().item() < 2.0


def test_future_offset_conditions_on_the_state_rolled_forward_through_the_commanded_actions():
    # Without noise and disturbances the rolled-forward state is the state actually reached,
    # so every conditioning state must appear among the plain (offset 0) states.
    task = make_task("balance", action_noise_std=0.0, disturbances=False)
    shifted = collect_demonstrations(task, episodes=5, future_offset_max=4, seed=1)
    plain = collect_demonstrations(make_task("balance", action_noise_std=0.0, disturbances=False), 5, 0, seed=1)
    dist = torch.cdist(shifted.states, plain.states).min(dim=1).values
    assert dist.max().item() < 1e-3  # cdist via matmul is only this exact in float32


def test_statistics_floor_the_std_of_constant_dimensions():
    stats = fit_statistics(torch.ones(10, 3), torch.zeros(10, 4, 2))
    assert min(stats["state_std"]) >= 1e-3 and min(stats["action_std"]) >= 1e-3


@pytest.mark.parametrize("family", ["flow", "diffusion"])
def test_a_short_training_run_lowers_the_loss(demos, family):
    _, losses = train_policy(config_for(demos, family), demos.states, demos.chunks, steps=150, batch_size=64, progress=False)
    assert sum(losses[-20:]) / 20 < 0.7 * sum(losses[:20]) / 20


def test_training_is_deterministic_under_a_seed(demos):
    _, a = train_policy(config_for(demos, "flow"), demos.states, demos.chunks, steps=20, batch_size=32, seed=3, progress=False)
    _, b = train_policy(config_for(demos, "flow"), demos.states, demos.chunks, steps=20, batch_size=32, seed=3, progress=False)
    assert a == b


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """``headway train policy`` run once: balance, 300 steps of a small net (about a second)."""
    out = tmp_path_factory.mktemp("trained")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--task", "balance", "--episodes", "10", "--steps", "300", "--hidden", "32", "--batch-size", "32",
        "--out", str(out), "--eval-episodes", "20", "--no-progress", "--threads", "1",
    ])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    return json.loads(printed.getvalue().strip().splitlines()[-1]), out


def test_train_command_writes_checkpoint_config_and_loss_curve(trained):
    report, out = trained
    task = make_task("balance")
    weights, config = checkpoint_paths("balance", "flow", out)
    assert weights.exists() and config.exists()
    png = out / "balance_flow_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(config.read_text())
    assert (saved["horizon"], saved["action_dim"], saved["state_dim"]) == (task.horizon, task.action_dim, task.state_dim)
    assert saved["control_hz"] == task.control_hz and len(saved["state_mean"]) == task.state_dim
    assert report["final_loss"] < report["first_loss"]
    assert load_policy("balance", "flow", out).config.task == "balance"


def test_train_command_reports_the_closed_loop_solve_rate_of_the_policy_it_trained(trained):
    report, _ = trained
    # 300 steps learn balance: this run solves all 20 episodes (untrained, the net solves none);
    # the expert that made the demonstrations solves them all.
    assert report["sync_s1_solve_rate"] >= 0.8
    assert report["expert_solve_rate"] >= 0.9

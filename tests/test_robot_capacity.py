"""``headway bench capacity`` (benchmarks.robot_capacity): a short ramp against a real server on loopback."""

import argparse

import numpy as np
import pytest

from benchmarks import robot_capacity
from clients.server_process import ServerProcess

ROBOTS = [2, 3]
DURATION_S, WARMUP_S, HZ = 1.0, 0.4, 50.0


@pytest.fixture(scope="module")
def report():
    parser = argparse.ArgumentParser()
    robot_capacity.add_arguments(parser)
    args = parser.parse_args(["--robots", *map(str, ROBOTS), "--duration", str(DURATION_S),
                              "--warmup-s", str(WARMUP_S), "--keep-going", "--rt-priority", "0"])
    with ServerProcess(["--model", "standin", "--standin-ms", "2"]) as server:
        return robot_capacity.run_ramp(server.url("/v1/policy"), args)


def test_every_step_of_the_ramp_is_reported(report):
    assert [step["robots"] for step in report["steps"]] == ROBOTS


def test_the_most_robots_without_underruns_is_taken_from_the_steps(report):
    supplied = [step["robots"] for step in report["steps"] if step["underruns"] == 0]
    assert report["max_robots_zero_underruns"] == max(supplied, default=0)


def test_every_request_is_answered_or_still_in_flight(report):
    for step in report["steps"]:
        answered = step["replies"] + step["failures"] + step["timeouts"]
        assert 0 <= step["requests"] - answered <= step["robots"]
        assert step["replies"] > 0


def test_ticks_after_warm_up_follow_each_robots_schedule(report):
    per_robot = (DURATION_S - WARMUP_S) * HZ  # robot i's ticks are staggered by i / (n hz)
    for step in report["steps"]:
        assert step["robots"] * (per_robot - 1) <= step["ticks"] <= step["robots"] * per_robot


def test_a_batch_holds_between_one_and_all_of_the_robots(report):
    for step in report["steps"]:
        sizes = {int(size): n for size, n in step["batch_sizes"].items()}
        assert all(1 <= size <= step["robots"] for size in sizes)
        assert step["batch_max"] == max(sizes)


def test_a_replayed_robot_reports_its_recorded_states_in_order_and_cycles():
    states = np.arange(6, dtype=np.float32).reshape(3, 2)
    robot = robot_capacity.ReplayRobot(states, offset=2)
    seen = [robot.observe()["state"][0] for _ in range(4)]
    assert seen == [4.0, 0.0, 2.0, 4.0]

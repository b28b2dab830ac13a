"""headway bench robot's sweep: the in-process row each served cell is compared with, and the plot."""

from __future__ import annotations

from benchmarks.robot import in_process_reference, plot_sweep

IN_PROCESS = [
    {"task": "balance", "policy": "flow", "strategy": "rtc", "d": d, "s": max(1, d), "solve_rate": rate, "ci95": 0.02}
    for d, rate in ((0, 1.0), (1, 0.86), (2, 0.0))
]


def served(strategy="rtc", family="flow", d_p50=1.0, rate=0.84):
    return {"task": "balance", "family": family, "strategy": strategy, "solve_rate": rate, "ci95": 0.1,
            "d_p50": d_p50, "s_p50": 1.0}


def test_a_served_cell_is_compared_with_the_in_process_row_at_the_delay_it_measured():
    assert in_process_reference(IN_PROCESS, "balance", "flow", "rtc", 1.4)["d"] == 1
    assert in_process_reference(IN_PROCESS, "balance", "flow", "rtc", 1.6)["d"] == 2


def test_there_is_no_reference_where_the_in_process_sweep_has_no_row():
    assert in_process_reference(IN_PROCESS, "balance", "diffusion", "rtc", 1.0) is None
    assert in_process_reference(IN_PROCESS, "balance", "flow", "rtc", 7.0) is None
    assert in_process_reference(IN_PROCESS, "balance", "flow", "rtc", None) is None


def test_the_plot_has_a_panel_per_task_and_family_even_without_in_process_curves(tmp_path):
    path = tmp_path / "robot_sweep.png"
    plot_sweep([served(), served("naive"), served(family="diffusion")], path)
    assert path.stat().st_size > 10_000

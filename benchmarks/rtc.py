"""``headway bench rtc``: execution strategies × inference delays on the simulated tasks.

For every task, every strategy (``sync naive ensemble bid hard_mask rtc rtc_future rti``)
and every delay d ∈ {0, 1, 2, 3, 4} ticks, run a batch of episodes of the shipped
checkpoint in lockstep (``chunking.strategies.ChunkedController``) and print ONE JSON array
on stdout, a row per (task, strategy, d); the same array goes to ``DIR/rtc_sweep.json``
and the plot (solve rate against d, a line per strategy, a panel per task) to
``DIR/rtc_sweep.png``. A tqdm progress bar goes to stderr.

Protocol (the RTC paper's Kinetix evaluation, in control ticks):

* The delay is simulated: a chunk requested at tick t is computed from the observation at
  t and handed over at t + d; meanwhile the old chunk keeps executing (``sync``: the robot
  executes the task's hold action, zero acceleration, while the world goes on — a robot
  cannot pause the world — then starts the chunk at index 0).
* ``s = max(1, d)``: the smallest execution horizon the paper's constraint
  ``d <= s <= H - d`` admits (the most closed-loop choice; the tasks helper's expert
  check uses the same). Every row states its s.
* The first chunk of each episode is computed before the clock starts.
* Episodes, initial states, action noise and disturbances come from the same seed for
  every (strategy, d) of a task: common random numbers, so differences between rows are
  due to the strategies, not to the draw.

Row keys:

* ``task``, ``strategy``, ``policy`` (``flow``/``diffusion``), ``d``, ``s``, ``episodes``.
* ``solve_rate`` (0..1) and ``ci95``: half-width of the 95% Wilson score interval (the
  larger side), so it stays honest near 0 and 1.
* ``seam_jerk``: mean over chunk switches of ``||a_k - 2 a_{k-1} + a_{k-2}||_2``, the second
  difference of the commanded (clipped, noise-free) action at the first tick ``k`` taken
  from a newly arrived chunk, in normalised action units; averaged over the episodes still
  running at k. ``mean_jerk`` is the same quantity averaged over all ticks (the smoothness
  inside chunks, for comparison).
* ``reaction_ms``: on tasks with sudden target changes, the mean time from a change to the
  robot's response (task-defined, ``VectorTask.reaction_ticks``) in ms at the task's
  control rate; ``null`` where the task has none.
* ``requests``: chunks requested per episode (the inference load of the strategy).
* ``beta`` (guided strategies only): the max guidance weight used, 1 by default. The
  Kinetix reference uses 5 for H = 8; with H = 16, s = max(1, d) (an overlap of up to 15
  actions) and these near-deterministic policies, beta = 5 drags the new chunk back toward
  the stale plan: it smooths seams a little more but loses solve rate on the tasks where
  staleness dominates (ablation on a held-out seed in docs/robotics.md).

Goal-conditioned tasks (``table``) add the goal-switch measurement (``benchmarks.goal_switch``:
a goal that changes mid-chunk, reaction time and seam smoothness per strategy at today's
inference time and an injected ``--goal-switch-ms``): its rows (``"measurement":
"goal_switch"``) follow the sweep's in the printed array and go to ``DIR/goal_switch.json``,
``DIR/goal_switch_acceptance.json`` and ``DIR/goal_switch.png``.

Rows are also appended to ``DIR/rtc_sweep.partial.jsonl`` as they finish; ``--resume``
reuses them, so an interrupted full sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from benchmarks.rtc_summary import wilson_half_width  # noqa: F401  (here for the other benches too)

STRATEGY_ORDER = ("sync", "naive", "ensemble", "bid", "hard_mask", "rtc", "rtc_future", "rti")
DELAYS = (0, 1, 2, 3, 4)

SUMMARY = "execution-strategy sweep over tasks and delays; prints JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fast subset: 100 episodes per cell, BID with 8 samples")
    parser.add_argument("--out", type=Path, default=Path("out/rtc"), help="directory for rtc_sweep.json and rtc_sweep.png")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to run (default: every task with a checkpoint)")
    parser.add_argument("--policy", choices=("flow", "diffusion"), default="flow", help="policy family")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per cell (default 1100, quick 100)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGY_ORDER), choices=STRATEGY_ORDER,
                        help="execution strategies to run (default: all)")
    parser.add_argument("--delays", nargs="+", type=int, default=list(DELAYS), help="inference delays d in ticks (default 0 1 2 3 4)")
    parser.add_argument("--beta", type=float, default=1.0,
                        help="max guidance weight of rtc, hard_mask and rtc_future (default 1; the Kinetix reference's 5 "
                             "is for H = 8: see docs/robotics.md for the ablation on these tasks)")
    parser.add_argument("--future-beta", type=float, default=None, help="max guidance weight of rtc_future (default: --beta)")
    parser.add_argument("--bid-samples", type=int, default=None, help="BID candidates per item (default 16, quick 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every cell's episodes (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--checkpoints", type=Path, default=None, help="checkpoint directory (default: the shipped ones)")
    parser.add_argument("--goal-switch-ms", type=float, default=100.0,
                        help="goal-conditioned tasks (table): the injected VLA-like inference time of the goal-switch "
                             "measurement, beside today's measured one (default %(default)s ms; benchmarks/goal_switch.py)")
    parser.add_argument("--goal-switch-episodes", type=int, default=None, help="episodes per goal-switch cell (default: --episodes)")
    parser.add_argument("--no-goal-switch", action="store_true", help="skip the goal-switch measurement")
    parser.add_argument("--resume", action="store_true",
                        help="reuse rows already in DIR/rtc_sweep.partial.jsonl (same policy and episodes) instead of rerunning them")


def execution_horizon(d: int, horizon: int) -> int:
    """``s = max(1, d)``, the smallest s with ``d <= s <= H - d``."""
    s = max(1, d)
    if s > horizon - d:
        raise ValueError(f"d={d} leaves no valid s for H={horizon}")
    return s


def run_cell(policy, task, strategy: str, d: int, s: int, episodes: int, seed: int, beta: float, bid_samples: int) -> dict:
    """Run ``episodes`` episodes of ``task`` under one strategy; returns the row's metrics."""
    import torch

    from chunking.realtime import RealtimeConfig
    from chunking.strategies import ChunkedController, StrategyConfig

    config = StrategyConfig(strategy, realtime=RealtimeConfig(beta=beta))
    config.bid.n_samples = bid_samples
    state = task.reset(episodes, torch.Generator().manual_seed(seed))
    ctrl = ChunkedController(
        policy, config, d, s,
        future_state_fn=task.predict_state,
        hold_action=lambda st, last: _hold(task, st),
        generator=torch.Generator().manual_seed(seed + 1),
    )
    action_dim = policy.config.action_dim
    live = torch.arange(episodes)  # task items the controller still drives
    prev1 = torch.zeros(episodes, action_dim)
    prev2 = torch.zeros(episodes, action_dim)
    seam_sum = seam_n = jerk_sum = jerk_n = 0.0
    tick = 0
    with torch.no_grad():
        while True:
            done = task.done()
            if bool(done.all()):
                break
            keep = ~done[live]
            if int(keep.sum()) < 0.75 * live.numel():  # drop finished episodes from the batch
                index = torch.nonzero(keep).squeeze(1)
                ctrl.select(index)
                live = live[index]
            action_live = ctrl.act(state[live]).clamp(-1.0, 1.0)
            action = torch.zeros(episodes, action_dim)
            action[live] = action_live
            running = ~done
            if tick >= 2:
                jerk = (action - 2 * prev1 + prev2).norm(dim=1)
                jerk_sum += float(jerk[running].sum())
                jerk_n += float(running.sum())
                if ctrl.switched:
                    seam_sum += float(jerk[running].sum())
                    seam_n += float(running.sum())
            prev2, prev1 = prev1, action
            state = task.step(action)
            tick += 1
    solved = task.solved()
    successes = int(solved.sum())
    reaction = None
    if getattr(task, "has_target_changes", False):
        ticks = task.reaction_ticks()
        finite = ticks[torch.isfinite(ticks)]
        if finite.numel():
            reaction = float(finite.mean()) * 1000.0 / task.control_hz
    return {
        "solve_rate": successes / episodes,
        "ci95": wilson_half_width(successes, episodes),
        "seam_jerk": seam_sum / seam_n if seam_n else None,
        "mean_jerk": jerk_sum / jerk_n if jerk_n else None,
        "reaction_ms": reaction,
        "requests": ctrl.requests,
    }


def _hold(task, state):
    """The task's hold action for the items the controller still drives (zero acceleration
    for every simulated task: ``VectorTask.hold_action`` is item-independent)."""
    import torch

    hold = task.hold_action()
    return hold[:1].expand(state.shape[0], -1) if hold.shape[0] else torch.zeros(state.shape[0], task.action_dim)


def plot(rows: list[dict], path: Path) -> None:
    """Solve rate against d, one line per strategy (95% interval bars), a panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cols = min(2, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, tasks):
        task_rows = [r for r in rows if r["task"] == name]
        for strategy in STRATEGY_ORDER:
            pts = sorted((r["d"], r["solve_rate"], r["ci95"]) for r in task_rows if r["strategy"] == strategy)
            if not pts:
                continue
            xs, ys, es = zip(*pts)
            style = "-" if strategy.startswith("rtc") else "--"
            ax.errorbar(xs, ys, yerr=es, label=strategy, linestyle=style, marker="o", capsize=2, linewidth=1.5)
        families = sorted({r["policy"] for r in task_rows})
        ax.set_title(f"{name} ({', '.join(families)} policy)")
        ax.set_xlabel("inference delay d [ticks], s = max(1, d)")
        ax.set_ylabel("solve rate")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(sorted({r["d"] for r in task_rows}))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from clients.sim import TASKS, make_task
    from policies.base import CHECKPOINT_DIR, checkpoint_paths
    from policies.checkpoint import load_policy

    torch.set_num_threads(max(1, args.threads))
    directory = args.checkpoints or CHECKPOINT_DIR
    episodes = args.episodes or (100 if args.quick else 1100)
    bid_samples = args.bid_samples or (8 if args.quick else 16)
    names = args.tasks or [n for n in sorted(TASKS) if checkpoint_paths(n, args.policy, directory)[0].exists()]
    if not names:
        print(f"headway bench rtc: no {args.policy} checkpoints in {directory}", file=sys.stderr)
        return 1
    cells = [(n, st, d) for n in names for st in args.strategies for d in args.delays]
    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "rtc_sweep.partial.jsonl"
    done: dict[tuple, dict] = {}
    if args.resume and partial.exists():
        for line in partial.read_text().splitlines():
            row = json.loads(line)
            if row["policy"] == args.policy and row["episodes"] == episodes:
                done[(row["task"], row["strategy"], row["d"])] = row
    elif partial.exists():
        partial.unlink()
    policies = {}
    start = time.monotonic()
    bar = tqdm(cells, desc="bench rtc", unit="cell", file=sys.stderr)
    for name, strategy, d in bar:
        if (name, strategy, d) in done:
            rows.append(done[(name, strategy, d)])
            continue
        if name not in policies:
            policies[name] = load_policy(name, args.policy, directory)
        policy = policies[name]
        task = make_task(name)
        s = execution_horizon(d, policy.config.horizon)
        bar.set_postfix_str(f"{name} {strategy} d={d}")
        beta = args.future_beta if strategy == "rtc_future" and args.future_beta is not None else args.beta
        metrics = run_cell(policy, task, strategy, d, s, episodes, args.seed, beta, bid_samples)
        row = {"task": name, "strategy": strategy, "policy": args.policy, "d": d, "s": s, **metrics, "episodes": episodes}
        if strategy in ("rtc", "rtc_future", "hard_mask"):
            row["beta"] = beta
        rows.append(row)
        with partial.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        bar.write(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), file=sys.stderr)
    bar.close()
    (args.out / "rtc_sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot(rows, args.out / "rtc_sweep.png")
    from benchmarks.rtc_summary import acceptance

    # whack is issue 3's target-change task; the goal-conditioned table has its own measurement
    target = "whack" if "whack" in names else next((n for n in names if getattr(TASKS[n], "has_target_changes", False)), names[0])
    checks = acceptance(rows, target_task=target)
    (args.out / "rtc_acceptance.json").write_text(json.dumps(checks, indent=1) + "\n")
    verdicts = {k: {f: v[f] for f in ("pass", "pass_d_ge_1", "per_task_pass", "task_average_pass") if f in v}
                for k, v in checks.items()}
    print("acceptance (issue 3): " + json.dumps(verdicts), file=sys.stderr)
    switch_names = [n for n in names if getattr(TASKS[n], "goal_conditioned", False)]
    if switch_names and not args.no_goal_switch:
        from benchmarks.goal_switch import goal_switch_rows, goal_switch_summary, plot_goal_switch

        switch_rows: list[dict] = []
        for name in switch_names:
            policy = policies.get(name) or load_policy(name, args.policy, directory)
            switch_rows += goal_switch_rows(policy, name, args.policy, args.goal_switch_episodes or episodes, args.seed,
                                            args.beta, args.goal_switch_ms, progress=lambda m: print(m, file=sys.stderr))
        (args.out / "goal_switch.json").write_text(json.dumps(switch_rows, indent=1) + "\n")
        summary = goal_switch_summary(switch_rows)
        (args.out / "goal_switch_acceptance.json").write_text(json.dumps(summary, indent=1) + "\n")
        plot_goal_switch(switch_rows, args.out / "goal_switch.png")
        print("goal switch (issue 11): " + json.dumps(summary), file=sys.stderr)
        rows = rows + switch_rows
    print(json.dumps(rows))
    print(f"bench rtc: {len(rows)} rows in {time.monotonic() - start:.0f} s -> {args.out}/rtc_sweep.json, rtc_sweep.png", file=sys.stderr)
    return 0

"""The goal-switch measurement of ``headway bench rtc`` (issue 11): a goal that changes mid-chunk.

On a goal-conditioned task (``table``: the goal token is part of the observation), every
episode's goal changes at random ticks while the gripper is on its way, so the chunk in
flight was planned for the old goal. Per execution strategy and inference delay this
measures:

* ``reaction_ms`` (mean, ``reaction_p50_ms``, ``reaction_p90_ms``, ``reaction_max_ms``): from
  the first tick whose observation carries the new goal until the gripper *heads for it*
  (speed above 0.05 m/s, velocity within 45 degrees of the direction to the new target;
  ``clients.sim.table``), over every change to a goal other than stop.
  ``within_one_chunk``: the share of those reactions that came within H ticks, the length
  of the chunk in flight (a robot that finished that chunk first would take up to H);
  ``responded`` of ``goal_changes`` says how many changes got a reaction at all.
* ``switch_seam_jerk``: ``||a_k - 2 a_{k-1} + a_{k-2}||`` of the commanded action at the seam
  where the new goal takes over (the first chunk requested at or after the change),
  averaged over the changes; ``seam_jerk``: the same at every seam (as the sweep's rows).
* ``solve_rate`` (the final goal reached and at rest) with its 95% Wilson interval.

Delays: "today" is the measured time of one real-time-chunking call of the policy at
batch 1 (``infer_ms``) rounded up to control ticks (at least one: a reply is merged at the
next tick); the VLA-like one is an injected ``--goal-switch-ms`` (100 ms = 5 ticks at 50 Hz)
of simulated inference time: the chunk is handed over that many ticks after its request,
and the robot keeps executing meanwhile (``sync``: waits, holding still).

Strategies: ``naive``, ``rtc``, ``rtc_future`` with s = max(1, d) (one inference in flight
at a time, the next request as soon as a chunk lands), ``sync`` twice: s = max(1, d) (the
sweep's most closed-loop synchronous robot) and s = H (``sync_mode`` ``whole_chunk``: the
whole chunk open loop, then wait for the next: how synchronous VLAs are usually run, e.g.
LeRobot's pi0 and SmolVLA defaults ``n_action_steps = chunk_size``, and VLASH's baseline).
"""

from __future__ import annotations

import math
import time

GOAL_SWITCH_STRATEGIES = ("sync", "naive", "rtc", "rtc_future")


def inference_ms(policy, task, beta: float = 1.0, reps: int = 15) -> float:
    """Median wall time of one real-time-chunking call (``rtc``) of ``policy`` at batch 1, ms."""
    import torch

    from chunking.realtime import RealtimeConfig, realtime_chunk

    state = task.reset(1, torch.Generator().manual_seed(0))
    h, a = policy.config.horizon, policy.config.action_dim
    prev = torch.zeros(1, h, a)
    has = torch.ones(1, dtype=torch.bool)
    d = torch.ones(1, dtype=torch.long)
    times = []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        realtime_chunk(policy, state, prev, has, d, d, RealtimeConfig(beta=beta), generator=torch.Generator().manual_seed(i))
        if i >= 2:  # the first calls warm caches and autograd up
            times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return times[len(times) // 2]


def goal_switch_cell(policy, task, strategy: str, d: int, s: int, episodes: int, seed: int, beta: float) -> dict:
    """Run ``episodes`` episodes of the goal-conditioned ``task`` under one strategy with
    delay ``d`` and execution horizon ``s``; returns the row's metrics (module docstring)."""
    import torch

    from benchmarks.rtc_summary import wilson_half_width
    from chunking.realtime import RealtimeConfig
    from chunking.strategies import ChunkedController, StrategyConfig

    config = StrategyConfig(strategy, realtime=RealtimeConfig(beta=beta))
    state = task.reset(episodes, torch.Generator().manual_seed(seed))
    ctrl = ChunkedController(policy, config, d, s, future_state_fn=task.predict_state,
                             # the task's stand-still action (item-independent), for the items still driven
                             hold_action=lambda st, last: task.hold_action()[:1].expand(st.shape[0], -1),
                             generator=torch.Generator().manual_seed(seed + 1))
    action_dim = policy.config.action_dim
    live = torch.arange(episodes)
    prev1 = torch.zeros(episodes, action_dim)
    prev2 = torch.zeros(episodes, action_dim)
    goal = state[:, 4:].clone()
    change_tick = torch.full((episodes,), -1, dtype=torch.long)
    awaiting_seam = torch.zeros(episodes, dtype=torch.bool)
    switch_jerks: list[float] = []
    seam_sum = seam_n = 0.0
    changes = 0
    tick = 0
    with torch.no_grad():
        while True:
            done = task.done()
            if bool(done.all()):
                break
            changed = ~done & (state[:, 4:] != goal).any(dim=1)
            if bool(changed.any()):
                changes += int((changed & (state[:, 6:10].argmax(1) != 3)).sum())
                change_tick = torch.where(changed, torch.full_like(change_tick, tick), change_tick)
                awaiting_seam |= changed
                goal = state[:, 4:].clone()
            keep = ~done[live]
            if int(keep.sum()) < 0.75 * live.numel():
                index = torch.nonzero(keep).squeeze(1)
                ctrl.select(index)
                live = live[index]
            action = torch.zeros(episodes, action_dim)
            action[live] = ctrl.act(state[live]).clamp(-1.0, 1.0)
            running = ~done
            if tick >= 2:
                jerk = (action - 2 * prev1 + prev2).norm(dim=1)
                if ctrl.switched:
                    seam_sum += float(jerk[running].sum())
                    seam_n += float(running.sum())
                    takes_over = running & awaiting_seam & (tick - d >= change_tick)
                    switch_jerks.extend(jerk[takes_over].tolist())
                    awaiting_seam &= ~takes_over
            prev2, prev1 = prev1, action
            state = task.step(action)
            tick += 1
    ms_per_tick = 1000.0 / task.control_hz
    samples = sorted(task.reaction_samples)
    successes = int(task.solved().sum())

    def pct(q: float) -> float | None:
        if not samples:
            return None
        return samples[min(len(samples) - 1, int(math.ceil(q * len(samples))) - 1)] * ms_per_tick

    return {
        "solve_rate": successes / episodes,
        "ci95": wilson_half_width(successes, episodes),
        "goal_changes": changes,
        "responded": len(samples),
        "reaction_ms": sum(samples) / len(samples) * ms_per_tick if samples else None,
        "reaction_p50_ms": pct(0.5),
        "reaction_p90_ms": pct(0.9),
        "reaction_max_ms": samples[-1] * ms_per_tick if samples else None,
        # A share of the reactions the task measured: over this loop's count of changes it
        # came out above 1 (1.004 in 300 table episodes), the two counts not quite agreeing.
        "within_one_chunk": (sum(1 for x in samples if x <= policy.config.horizon) / len(samples)) if samples else None,
        "switch_seam_jerk": sum(switch_jerks) / len(switch_jerks) if switch_jerks else None,
        "seam_jerk": seam_sum / seam_n if seam_n else None,
        "requests": ctrl.requests,
    }


def goal_switch_rows(policy, task_name: str, family: str, episodes: int, seed: int, beta: float,
                     vla_ms: float, progress=None) -> list[dict]:
    """Every (latency, strategy) row of the measurement for one task and policy family."""
    from clients.sim import make_task

    task = make_task(task_name)
    hz = task.control_hz
    h = policy.config.horizon
    infer = inference_ms(policy, task, beta)
    latencies = (("today", infer, max(1, math.ceil(infer * hz / 1000.0))),
                 ("vla", float(vla_ms), max(1, math.ceil(vla_ms * hz / 1000.0 - 1e-9))))
    rows = []
    for label, ms, d in latencies:
        s = max(1, d)
        cells = [("sync", s, "most_closed_loop"), ("sync", h, "whole_chunk"),
                 ("naive", s, None), ("rtc", s, None), ("rtc_future", s, None)]
        for strategy, s_cell, mode in cells:
            if progress is not None:
                progress(f"goal switch {task_name} {family} {label} {strategy} d={d} s={s_cell}")
            metrics = goal_switch_cell(policy, make_task(task_name), strategy, d, s_cell, episodes, seed, beta)
            row = {"measurement": "goal_switch", "task": task_name, "policy": family, "latency": label,
                   "latency_ms": round(ms, 2), "d": d, "strategy": strategy, "s": s_cell, **metrics,
                   "episodes": episodes}
            if mode:
                row["sync_mode"] = mode
            if strategy in ("rtc", "rtc_future"):
                row["beta"] = beta
            rows.append(row)
    return rows


def goal_switch_summary(rows: list[dict]) -> dict:
    """The acceptance of issue 11's goal switch, per (task, policy): at each latency, rtc's
    reaction within one chunk and its switch seam smoother than naive's; the ratios of
    synchronous reaction time to rtc's (and rtc_future's), for both synchronous modes."""
    out: dict = {}
    for key in dict.fromkeys((r["task"], r["policy"]) for r in rows):
        mine = [r for r in rows if (r["task"], r["policy"]) == key]
        per_latency = {}
        for label in dict.fromkeys(r["latency"] for r in mine):
            get = {(r["strategy"], r.get("sync_mode")): r for r in mine if r["latency"] == label}
            rtc, naive, fut = get.get(("rtc", None)), get.get(("naive", None)), get.get(("rtc_future", None))
            entry: dict = {}
            entry["latency_ms"] = next(r["latency_ms"] for r in mine if r["latency"] == label)
            entry["d"] = next(r["d"] for r in mine if r["latency"] == label)
            if rtc and naive:
                entry["rtc_within_one_chunk"] = rtc["within_one_chunk"]
                entry["rtc_switch_seam_jerk"] = rtc["switch_seam_jerk"]
                entry["naive_switch_seam_jerk"] = naive["switch_seam_jerk"]
                entry["rtc_seam_jerk"] = rtc["seam_jerk"]
                entry["naive_seam_jerk"] = naive["seam_jerk"]
                entry["rtc_switch_seam_smoother_than_naive"] = (
                    rtc["switch_seam_jerk"] is not None and naive["switch_seam_jerk"] is not None
                    and rtc["switch_seam_jerk"] < naive["switch_seam_jerk"])
            for mode in ("most_closed_loop", "whole_chunk"):
                sync = get.get(("sync", mode))
                if sync and rtc and sync["reaction_ms"] and rtc["reaction_ms"]:
                    entry[f"sync_{mode}_reaction_ms"] = sync["reaction_ms"]
                    entry[f"sync_{mode}_over_rtc"] = sync["reaction_ms"] / rtc["reaction_ms"]
                    if sync["reaction_p90_ms"] and rtc["reaction_p90_ms"]:
                        entry[f"sync_{mode}_over_rtc_p90"] = sync["reaction_p90_ms"] / rtc["reaction_p90_ms"]
                    if fut and fut["reaction_ms"]:
                        entry[f"sync_{mode}_over_rtc_future"] = sync["reaction_ms"] / fut["reaction_ms"]
            if rtc:
                entry["rtc_reaction_ms"] = rtc["reaction_ms"]
            if fut and naive:
                entry["rtc_future_reaction_ms"] = fut["reaction_ms"]
                entry["rtc_future_within_one_chunk"] = fut["within_one_chunk"]
                entry["rtc_future_switch_seam_jerk"] = fut["switch_seam_jerk"]
                entry["rtc_future_switch_seam_smoother_than_naive"] = (
                    fut["switch_seam_jerk"] is not None and naive["switch_seam_jerk"] is not None
                    and fut["switch_seam_jerk"] < naive["switch_seam_jerk"])
            per_latency[label] = entry
        out[f"{key[0]} {key[1]}"] = per_latency
    return out


def plot_goal_switch(rows: list[dict], path) -> None:
    """Reaction time (mean, p90 as a tick) and switch-seam jerk per strategy, a group per latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["task"], r["policy"]) for r in rows))
    fig, axes = plt.subplots(len(keys), 2, figsize=(12, 3.8 * len(keys)), squeeze=False)
    for (task, family), (ax_r, ax_j) in zip(keys, axes):
        mine = [r for r in rows if (r["task"], r["policy"]) == (task, family)]
        labels = list(dict.fromkeys(r["latency"] for r in mine))
        names = list(dict.fromkeys(_name(r) for r in mine))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            xs, ys, p90, jerk = [], [], [], []
            for j, label in enumerate(labels):
                r = next((r for r in mine if r["latency"] == label and _name(r) == name), None)
                if r is None:
                    continue
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(r["reaction_ms"] or 0.0)
                p90.append(r["reaction_p90_ms"] or 0.0)
                jerk.append(r["switch_seam_jerk"] or 0.0)
            ax_r.bar(xs, ys, width, label=name)
            ax_r.scatter(xs, p90, marker="_", color="k", s=80)
            ax_j.bar(xs, jerk, width, label=name)
        ticks = [f"{lab}: {next(r['latency_ms'] for r in mine if r['latency'] == lab):.0f} ms, "
                 f"d={next(r['d'] for r in mine if r['latency'] == lab)}" for lab in labels]
        for ax in (ax_r, ax_j):
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(ticks)
            ax.grid(alpha=0.3, axis="y")
        ax_r.set_ylabel("reaction to a new goal [ms] (bar mean, tick p90)")
        ax_r.set_title(f"{task}, {family}: goal changes mid-chunk")
        ax_j.set_ylabel("jerk at the seam where the new goal takes over")
        ax_j.set_title("switch seam (lower is smoother)")
        ax_r.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _name(row: dict) -> str:
    if row["strategy"] == "sync":
        return "sync (whole chunk)" if row.get("sync_mode") == "whole_chunk" else "sync (s = max(1, d))"
    return row["strategy"]

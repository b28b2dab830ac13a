"""Chunked execution in control ticks: how much do delay and open-loop chunks hurt a task?

By default the "policy" is the task's chunk-level expert (:meth:`VectorTask.expert_chunk`,
the expert rolled through the noise-free model), so no learning is needed; any
``chunk_fn(state [B, S]) -> [B, H, A]`` (e.g. a trained policy's ``sample``) can stand in.
The execution follows the RTC Kinetix evaluation loop:

* ``closed``: the expert acts every tick (the upper bound).
* ``sync``: infer a chunk from the current state, execute its first ``s`` actions; the
  world waits during inference (so ``d`` does not matter).
* ``naive``: asynchronous; a chunk is inferred from the state at the start of a cycle and
  arrives ``d`` ticks later. Meanwhile the robot executes the previous chunk's next ``d``
  actions, then actions ``d .. s-1`` of the new chunk (index 0 = the observation's tick).
* ``future``: like ``naive``, but the chunk is planned from the state rolled forward
  through the ``d`` pending actions (VLASH), so its index 0 is the tick it starts at.

A task "shows delay" when ``naive`` at d=4 solves far less than ``sync`` at d=0.
Run ``python -m clients.sim.expert_chunks`` for the table over all tasks.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

import torch

from . import TASKS, make_task
from .base import VectorTask


ChunkFn = Callable[[torch.Tensor], torch.Tensor]


def run_chunked(
    task: VectorTask,
    strategy: str,
    d: int,
    s: int,
    episodes: int,
    seed: int = 0,
    chunk_fn: ChunkFn | None = None,
) -> torch.Tensor:
    """Run ``episodes`` episodes; returns the ``[B]`` bool solved flags.

    ``chunk_fn`` maps states [B, S] to chunks [B, H, A] (default: the chunk-level expert).
    ``closed`` always uses the task's per-tick expert.
    """
    plan = task.expert_chunk if chunk_fn is None else chunk_fn
    h = task.horizon
    if strategy in ("naive", "future") and not (1 <= s and d <= s and s + d <= h):
        raise ValueError(f"need d <= s and s + d <= H, got d={d} s={s} H={h}")
    gen = torch.Generator().manual_seed(seed)
    task.reset(episodes, gen)
    if strategy == "closed":
        while not bool(task.done().all()):
            task.step(task.expert_action())
        return task.solved()
    if strategy == "sync":
        while not bool(task.done().all()):
            chunk = plan(task.observe())
            for j in range(s):
                task.step(chunk[:, j])
        return task.solved()
    if strategy not in ("naive", "future"):
        raise ValueError(f"unknown strategy {strategy!r}")
    pending = plan(task.observe())  # the first chunk is computed before the clock starts
    while not bool(task.done().all()):
        obs = task.observe()
        if strategy == "naive":
            new = plan(obs)
            offset = d  # the new chunk's index 0 is the observation tick
        else:
            new = plan(task.predict_state(obs, pending[:, :d]) if d else obs)
            offset = 0  # index 0 is the tick at which the new chunk starts
        for j in range(d):
            task.step(pending[:, j])
        for j in range(s - d):
            task.step(new[:, offset + j])
        pending = new[:, offset + s - d :]
    return task.solved()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--tasks", nargs="*", default=sorted(TASKS))
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--policy", choices=("expert", "flow", "diffusion"), default="expert",
                        help="chunk source: the chunk-level expert or a shipped checkpoint")
    parser.add_argument("--delays", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.tasks:
        task = make_task(name, action_noise_std=args.noise)
        chunk_fn = None
        if args.policy != "expert":
            from policies.checkpoint import load_policy

            policy = load_policy(name, args.policy)
            gen = torch.Generator().manual_seed(0)
            chunk_fn = lambda state, _p=policy: _p.sample(state, generator=gen)  # noqa: E731
        row = {"task": name, "policy": args.policy,
               "closed": run_chunked(task, "closed", 0, 1, args.episodes).float().mean().item()}
        for d in args.delays:
            s = max(1, d)
            for strategy in ("sync", "naive", "future"):
                solved = run_chunked(task, strategy, d, s, args.episodes, chunk_fn=chunk_fn)
                row[f"{strategy}_d{d}"] = solved.float().mean().item()
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()

"""``headway bench sampler``: the cost of one chunk: plain, RTC-guided and RTI warm-started.

For every shipped checkpoint (``models/checkpoints/<task>_<family>``) and batch sizes 1 and
16, time one chunk of

* ``plain_ms``: ``policy.sample`` from noise under ``torch.inference_mode`` (what a server
  runs without real-time chunking),
* ``rtc_ms``: ``chunking.realtime.realtime_chunk`` with a previous chunk for every item
  (d = 2, s = 2: one forward and one backward pass per denoising step),
* ``rti_ms``: ``chunking.rti.warm_start_chunk`` from the previous chunk (the last 40% of
  the denoising steps only),

each the median over ``--reps`` calls after ``--warmup`` untimed ones (the three timed in
turn, in a shuffled order, within every repetition, so that load from other processes and
cache effects fall on all alike), on
``--threads`` torch threads. Prints ONE JSON array on stdout, a row per (checkpoint, batch), with
``policy``, ``task``, ``batch``, ``num_steps``, ``rti_steps``, ``plain_ms``, ``rtc_ms``,
``rti_ms`` and the ratios ``rtc_over_plain`` (target <= 3) and ``rti_over_plain``
(target <= 0.5). Timings are wall-clock on a shared machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

SUMMARY = "time plain, RTC-guided and warm-started sampling; prints JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16], help="batch sizes to time (default 1 16)")
    parser.add_argument("--reps", type=int, default=50, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before measuring (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write DIR/sampler.json")
    parser.add_argument("--checkpoints", type=Path, default=None, help="checkpoint directory (default: the shipped ones)")


def _interleaved_median_ms(fns: list, reps: int, warmup: int) -> list[float]:
    """Median ms per function, timing them in turn within every repetition so that load
    from other processes on a shared machine falls on all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    rng = random.Random(0)
    for _ in range(reps):
        rng.shuffle(order)  # no function always runs right after another (cache effects)
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(ts) * 1000.0 for ts in times]


def main(args: argparse.Namespace) -> int:
    import torch

    from chunking.realtime import RealtimeConfig, realtime_chunk
    from chunking.rti import RTIConfig, rti_steps, warm_start_chunk
    from policies.base import CHECKPOINT_DIR
    from policies.checkpoint import load_policy

    torch.set_num_threads(max(1, args.threads))
    directory = args.checkpoints or CHECKPOINT_DIR
    found = sorted(directory.glob("*.safetensors"))
    if not found:
        print(f"headway bench sampler: no checkpoints in {directory}", file=sys.stderr)
        return 1
    rows = []
    for weights in found:
        task, _, family = weights.stem.rpartition("_")
        policy = load_policy(task, family, directory)  # type: ignore[arg-type]
        c = policy.config
        for batch in args.batches:
            gen = torch.Generator().manual_seed(0)
            state = torch.tensor(c.state_mean).expand(batch, -1) + torch.tensor(c.state_std) * torch.randn(batch, c.state_dim, generator=gen)
            with torch.inference_mode():
                prev = policy.sample(state, generator=gen).clone()
            prev = prev.clone()  # a normal tensor (not an inference tensor) for the guided call
            has = torch.ones(batch, dtype=torch.bool)

            def plain():
                with torch.inference_mode():
                    policy.sample(state, generator=gen)

            def rtc():
                realtime_chunk(policy, state, prev, has, 2, 2, RealtimeConfig(), generator=gen)

            def rti():
                with torch.inference_mode():
                    warm_start_chunk(policy, state, prev, has, RTIConfig(), generator=gen)

            plain_ms, rtc_ms, rti_ms = _interleaved_median_ms([plain, rtc, rti], args.reps, args.warmup)
            row = {
                "policy": family, "task": task, "batch": batch, "num_steps": c.num_steps,
                "rti_steps": rti_steps(RTIConfig(), c.num_steps),
                "plain_ms": round(plain_ms, 3), "rtc_ms": round(rtc_ms, 3), "rti_ms": round(rti_ms, 3),
                "rtc_over_plain": round(rtc_ms / plain_ms, 3), "rti_over_plain": round(rti_ms / plain_ms, 3),
                "threads": max(1, args.threads),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sampler.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows))
    return 0

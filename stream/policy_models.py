"""Serving the shipped action-chunk policies: ``headway serve --model whack`` (or ``whack:diffusion``).

The executor is the engine's batched model call for a trained policy. One call takes the
requests of many sessions; each item carries its own previous chunk, ``d``, ``s`` and
strategy, and the call groups items that share a sampling configuration (future state
on/off, degraded or not, guidance weight and schedule) into one batched
``chunking.realtime_chunk`` each. Items without a previous chunk (a session's first
request, openpi's ``/`` endpoint, naive and synchronous strategies) are sampled plainly.

Inputs an item may carry (``WorkItem.inputs``, already validated by the session):
``state`` [S] float32 (required); for real-time chunking ``prev_chunk`` [H, A] float32
shifted to the request tick, ``d`` and ``s`` ints, ``future_state`` bool, ``beta`` float,
``schedule`` str. Output: the chunk [H, A] float32, index 0 = the request tick.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from stream.batcher import Request
from stream.hosts import ExecutorSpec, RunBatch, WorkItem
from stream.latency import CostKey
from stream.registry import (KnownModel, LoadedModel, ModelFactory, ModelOptions, register_resolver,
                             robot_observation_spec)


class TrainedPolicyExecutor:
    """Batched sampling for one shipped checkpoint; runs on the engine's worker thread only."""

    def __init__(self, task: str, family: str, max_batch_size: int, threads: int = 1):
        import torch

        from chunking.dynamics import future_state_fn
        from policies.checkpoint import load_policy

        torch.set_num_threads(threads)
        self.torch = torch
        self.policy = load_policy(task, family)
        self.policy.eval()
        self.config = self.policy.config
        self.max_batch_size = max_batch_size
        # Future-state rollout (VLASH) through the noise-free one-tick dynamics of the task
        # the checkpoint was trained for.
        self.future_state_fn = future_state_fn(self.config.task, self.config.control_hz)
        self.degraded_steps = max(1, math.ceil(self.config.num_steps / 2))
        self.generator = torch.Generator().manual_seed(0)
        self.warm_up()

    def warm_up(self) -> None:
        """Run every kind of call once before serving: the first backward pass through the
        network costs ~100x a normal call, and a robot's first chunks must not pay for it
        (nor must the engine's latency estimate or the sessions' delay estimates)."""
        c = self.config
        state = np.zeros(c.state_dim, dtype=np.float32)
        prev = np.zeros((c.horizon, c.action_dim), dtype=np.float32)
        for batch in (1, 4):
            for degraded in (False, True):
                items = [WorkItem({"state": state}, degraded=degraded)] * batch
                items += [WorkItem({"state": state, "prev_chunk": prev, "d": 1, "s": 4, "future_state": future},
                                   degraded=degraded) for future in (False, True)] * batch
                self.run(RunBatch(1, items))

    def run(self, batch: RunBatch) -> list[np.ndarray]:
        items = batch.items
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            x = item.inputs
            realtime = x.get("prev_chunk") is not None
            key = (realtime, realtime and bool(x.get("future_state")), item.degraded,
                   float(x.get("beta", 1.0)), str(x.get("schedule", "exp")))
            groups[key].append(i)
        out: list[Any] = [None] * len(items)
        for (realtime, future, degraded, beta, schedule), index in groups.items():
            chunks = self._sample([items[i].inputs for i in index], realtime, future, degraded, beta, schedule)
            for i, chunk in zip(index, chunks):
                out[i] = chunk
        return out

    def _sample(self, inputs: list[dict], realtime: bool, future: bool, degraded: bool,
                beta: float, schedule: str) -> np.ndarray:
        torch = self.torch
        from chunking.realtime import RealtimeConfig, realtime_chunk

        state = torch.from_numpy(np.stack([x["state"] for x in inputs]).astype(np.float32))
        steps = self.degraded_steps if degraded else None
        if not realtime:
            with torch.inference_mode():
                chunk = self.policy.sample(state, num_steps=steps, generator=self.generator)
            return chunk.numpy().astype(np.float32)
        prev = torch.from_numpy(np.stack([x["prev_chunk"] for x in inputs]).astype(np.float32))
        d = torch.tensor([int(x["d"]) for x in inputs], dtype=torch.long)
        s = torch.tensor([int(x["s"]) for x in inputs], dtype=torch.long)
        has_prev = torch.ones(len(inputs), dtype=torch.bool)
        chunk = realtime_chunk(self.policy, state, prev, has_prev, d, s,
                               RealtimeConfig(beta=beta, schedule=schedule),  # type: ignore[arg-type]
                               future_state_fn=self.future_state_fn if future else None,
                               num_steps=steps, generator=self.generator)
        return chunk.detach().numpy().astype(np.float32)


def policy_cost(num_steps: int) -> "Callable[[Sequence[Request]], CostKey]":
    """A batch's cost: denoising steps summed over its items (a degraded item runs half of
    them), real-time chunking (a backward pass per step) apart from plain sampling."""
    degraded_steps = max(1, math.ceil(num_steps / 2))

    def cost_of(batch: Sequence[Request]) -> CostKey:
        realtime = any(r.inputs.get("prev_chunk") is not None for r in batch)
        steps = sum(degraded_steps if r.degraded else num_steps for r in batch)
        return CostKey("rtc" if realtime else "plain", steps)

    return cost_of


def _trained_policy_factory(task: str, family: str) -> ModelFactory:
    def factory(options: ModelOptions) -> LoadedModel:
        from policies.base import PolicyConfig, checkpoint_paths

        c = PolicyConfig.from_json(checkpoint_paths(task, family)[1].read_text())  # type: ignore[arg-type]
        name = task if family == "flow" else f"{task}:{family}"
        return LoadedModel(
            name=name,
            executor_spec=ExecutorSpec("stream.policy_models:TrainedPolicyExecutor",
                                       {"task": task, "family": family, "max_batch_size": options.max_batch_size}),
            max_batch_size=options.max_batch_size,
            metadata={"type": "metadata", "model": name, "task": task, "family": family,
                      "action_horizon": c.horizon, "action_dim": c.action_dim, "state_dim": c.state_dim,
                      "control_hz": c.control_hz, "num_steps": c.num_steps},
            observation_spec=robot_observation_spec(c.state_dim),
            reply_fields=lambda chunk: {"actions": chunk},
            latency_prior_s=0.01,
            cost_of=policy_cost(c.num_steps),
        )

    return factory


FAMILIES = {"flow": "flow matching", "diffusion": "diffusion (DDIM)"}


def _resolve(name: str) -> ModelFactory | None:
    from policies.base import checkpoint_paths

    task, _, family = name.partition(":")
    family = family or "flow"
    if family not in FAMILIES:
        return None
    weights, config = checkpoint_paths(task, family)  # type: ignore[arg-type]
    if not (weights.exists() and config.exists()):
        return None
    return _trained_policy_factory(task, family)


def _shipped() -> list[KnownModel]:
    """Every checkpoint :func:`_resolve` loads, one per task and family (``TASK`` = ``TASK:flow``)."""
    from policies.base import CHECKPOINT_DIR

    stems = (weights.stem.rpartition("_") for weights in CHECKPOINT_DIR.glob("*.safetensors"))
    shipped = sorted((task, list(FAMILIES).index(family), family) for task, _, family in stems if family in FAMILIES)
    known = []
    for task, _, family in shipped:
        name = task if family == "flow" else f"{task}:{family}"
        if _resolve(name) is not None:
            aliases = (f"{task}:flow",) if family == "flow" else ()
            known.append(KnownModel(name, f"trained {task} policy, {FAMILIES[family]}", aliases))
    return known


register_resolver(_resolve, _shipped)

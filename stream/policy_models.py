"""Serving chunk policies: the shipped checkpoints (``headway serve --model whack`` or
``whack:diffusion``) and any plug-in (``headway serve --policy MODULE:FACTORY``, docs/own-policy.md).

One executor, :class:`ChunkPolicyExecutor`, is the engine's batched model call for every
object implementing the chunk-policy plug-in interface (``policies.base``); a shipped
checkpoint is one such plug-in (:func:`shipped_policy`), a LeRobot policy another
(``policies.lerobot_adapter``). One call takes the requests of many sessions; each item
carries its own previous chunk, ``d``, ``s`` and strategy, and the call groups items that
share a sampling configuration (future state on/off, degraded or not, guidance weight and
schedule) into one batched ``chunking.realtime_chunk`` each. Items without a previous chunk
(a session's first request, openpi's ``/`` endpoint, naive and synchronous strategies) are
sampled plainly.

Inputs an item may carry (``WorkItem.inputs``, already validated by the session): the
policy's observation keys (``PolicySpec.inputs``); for real-time chunking ``prev_chunk``
[H, A] float32 shifted to the request tick, ``d`` and ``s`` ints, ``future_state`` bool,
``beta`` float, ``schedule`` str. Output: the chunk [H, A] float32, index 0 = the request tick.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import sys
from collections import defaultdict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from stream.batcher import Request, batch_size_cost
from stream.hosts import ExecutorSpec, RunBatch, WorkItem
from stream.latency import CostKey
from stream.protocol import ArrayField, ArrayMapField, ImageField, ObservationSpec, TextField
from stream.registry import (KnownModel, LoadedModel, ModelFactory, ModelOptions, register_resolver,
                             robot_observation_spec)

# Keys an observation cannot use: the envelopes of ``/`` and ``/v1/policy`` and the inputs the
# session adds for real-time chunking.
RESERVED_KEYS = frozenset({"type", "id", "request_id", "tick", "report", "reset", "prev_chunk", "prev_start_tick",
                           "d", "s", "future_state", "beta", "schedule"})
LEROBOT_PREFIX = "lerobot:"
LEROBOT_FACTORY = "policies.lerobot_adapter:lerobot_policy"

# Plug-ins built by the server to read their spec, kept for the in-process executor built from
# the same target and arguments in the same process, which takes it: a policy is loaded once,
# not twice. (An executor in a child process builds its own; the copy here then stays.)
_PREPARED: dict[str, Any] = {}


def _prepared_key(factory: str, kwargs: Mapping[str, Any]) -> str:
    return factory + json.dumps(kwargs, sort_keys=True, default=str)


def build_plugin(factory: str, kwargs: Mapping[str, Any] | None = None) -> Any:
    """``factory`` (``"module:callable"``) called with ``kwargs``, checked to implement the
    plug-in interface. The working directory is searched first for the module (as uvicorn
    finds an app), so ``headway serve --policy my_policy:make_policy`` finds ``my_policy.py``
    where the server starts. Raises ``ValueError`` saying what is missing."""
    module_name, _, name = factory.partition(":")
    if not module_name or not name:
        raise ValueError(f"--policy {factory!r}: expected MODULE:FACTORY (or lerobot:PATH)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    make = getattr(module, name, None)
    if not callable(make):
        raise ValueError(f"--policy {factory!r}: module {module_name} has no callable {name!r}")
    kwargs = dict(kwargs or {})
    try:
        signature = inspect.signature(make).replace(return_annotation=inspect.Signature.empty)
        signature.bind(**kwargs)
    except TypeError as exc:  # the arguments do not fit (an error inside the factory keeps its traceback)
        raise ValueError(f"{factory}{signature} cannot take {kwargs}: {exc} (--policy-arg K=V)") from None
    except ValueError:  # no signature to check (a builtin): let the call say
        pass
    plugin = make(**kwargs)
    check_plugin(plugin, factory)
    return plugin


def check_plugin(plugin: Any, where: str = "the policy") -> None:
    """Raise ``ValueError`` naming what ``plugin`` lacks of the interface of its family."""
    from policies.base import PolicySpec

    spec = getattr(plugin, "spec", None)
    if not isinstance(spec, PolicySpec):
        raise ValueError(f"{where}: the object has no 'spec' (a policies.base.PolicySpec)")
    wanted = {"flow": ("velocity",), "diffusion": ("denoise", "scheduler", "prediction_type"),
              "oneshot": ("sample_chunk",)}[spec.family]
    missing = [m for m in ("normalize_actions", "unnormalize_actions", "encode", *wanted) if not hasattr(plugin, m)]
    if missing:
        raise ValueError(f"{where}: a {spec.family} policy needs {', '.join(missing)} (docs/own-policy.md)")
    reserved = sorted(RESERVED_KEYS & set(spec.inputs))
    if reserved:
        raise ValueError(f"{where}: observation keys {', '.join(reserved)} are reserved by the protocols")


def shipped_policy(task: str, family: str) -> Any:
    """The shipped checkpoint of ``task`` and ``family`` as a plug-in, its future state rolled
    through the noise-free one-tick dynamics of the task it was trained for."""
    from chunking.dynamics import future_state_fn
    from policies.checkpoint import load_policy

    policy = load_policy(task, family)  # type: ignore[arg-type]
    policy.future_state = future_state_fn(policy.config.task, policy.config.control_hz)
    return policy


class ChunkPolicyExecutor:
    """Batched sampling for one plug-in (built from ``factory`` and ``kwargs``); runs on the
    engine's worker thread only."""

    def __init__(self, factory: str, kwargs: dict | None = None, max_batch_size: int = 64, threads: int = 1):
        import torch

        from policies.sampling import PluginSampler

        torch.set_num_threads(threads)
        self.torch = torch
        kwargs = kwargs or {}
        self.plugin = _PREPARED.pop(_prepared_key(factory, kwargs), None) or build_plugin(factory, kwargs)
        if isinstance(self.plugin, torch.nn.Module):
            self.plugin.eval()
        self.spec = self.plugin.spec
        self.sampler = PluginSampler(self.plugin)
        self.max_batch_size = max_batch_size
        self.future_state_fn = getattr(self.plugin, "future_state", None)
        self.degraded_steps = max(1, math.ceil(self.spec.num_steps / 2))
        self.generator = torch.Generator().manual_seed(0)
        self.warm_up()

    def warm_up(self) -> None:
        """Run every kind of call once before serving: the first backward pass through the
        network costs ~100x a normal call, and a robot's first chunks must not pay for it
        (nor must the engine's latency estimate or the sessions' delay estimates)."""
        from policies.sampling import blank_observation

        spec = self.spec
        observation = blank_observation(spec)
        prev = np.zeros((spec.horizon, spec.action_dim), dtype=np.float32)
        s = max(1, min(4, spec.horizon - 1))
        futures = (False, True) if self.future_state_fn is not None else (False,)
        for batch in (1, 4):
            for degraded in (False, True):
                items = [WorkItem(observation, degraded=degraded)] * batch
                items += [WorkItem({**observation, "prev_chunk": prev, "d": 1, "s": s, "future_state": future},
                                   degraded=degraded) for future in futures] * batch
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
        from policies.sampling import BoundPolicy, collate

        policy = BoundPolicy(self.sampler, collate(inputs, self.spec), len(inputs))
        steps = self.degraded_steps if degraded and self.spec.family != "oneshot" else None
        if not realtime:
            with torch.inference_mode():
                chunk = policy.sample(policy.state, num_steps=steps, generator=self.generator)
            return chunk.cpu().numpy().astype(np.float32)
        if future and self.future_state_fn is None:
            raise ValueError(f"this {self.spec.family} policy has no future-state rollout")
        prev = torch.from_numpy(np.stack([x["prev_chunk"] for x in inputs]).astype(np.float32))
        d = torch.tensor([int(x["d"]) for x in inputs], dtype=torch.long)
        s = torch.tensor([int(x["s"]) for x in inputs], dtype=torch.long)
        has_prev = torch.ones(len(inputs), dtype=torch.bool)
        chunk = realtime_chunk(policy, policy.state, prev, has_prev, d, s,
                               RealtimeConfig(beta=beta, schedule=schedule),  # type: ignore[arg-type]
                               future_state_fn=self.future_state_fn if future else None,
                               num_steps=steps, generator=self.generator)
        return chunk.detach().cpu().numpy().astype(np.float32)


def policy_cost(num_steps: int) -> "Callable[[Sequence[Request]], CostKey]":
    """A batch's cost: denoising steps summed over its items (a degraded item runs half of
    them), real-time chunking (a backward pass per step) apart from plain sampling."""
    degraded_steps = max(1, math.ceil(num_steps / 2))

    def cost_of(batch: Sequence[Request]) -> CostKey:
        realtime = any(r.inputs.get("prev_chunk") is not None for r in batch)
        steps = sum(degraded_steps if r.degraded else num_steps for r in batch)
        return CostKey("rtc" if realtime else "plain", steps)

    return cost_of


def _served(name: str, spec: Any, executor_spec: ExecutorSpec, options: ModelOptions,
            observation_spec: ObservationSpec, has_future_state: bool, **described: Any) -> LoadedModel:
    """The LoadedModel of a chunk policy with ``spec`` (a ``policies.base.PolicySpec``)."""
    metadata = {"type": "metadata", "model": name, **described, "family": spec.family,
                "action_horizon": spec.horizon, "action_dim": spec.action_dim, "state_dim": spec.state_dim,
                "control_hz": spec.control_hz, "num_steps": spec.num_steps, "future_state": has_future_state}
    return LoadedModel(
        name=name,
        executor_spec=executor_spec,
        max_batch_size=options.max_batch_size,
        metadata=metadata,
        observation_spec=observation_spec,
        reply_fields=lambda chunk: {"actions": chunk},
        latency_prior_s=0.01,
        cost_of=batch_size_cost if spec.family == "oneshot" else policy_cost(spec.num_steps),
    )


def _trained_policy_factory(task: str, family: str) -> ModelFactory:
    def factory(options: ModelOptions) -> LoadedModel:
        from policies.base import PolicyConfig, checkpoint_paths
        from policies.normalized import spec_of

        config = PolicyConfig.from_json(checkpoint_paths(task, family)[1].read_text())  # type: ignore[arg-type]
        name = task if family == "flow" else f"{task}:{family}"
        executor = ExecutorSpec("stream.policy_models:ChunkPolicyExecutor",
                                {"factory": "stream.policy_models:shipped_policy",
                                 "kwargs": {"task": task, "family": family}, "max_batch_size": options.max_batch_size})
        return _served(name, spec_of(config), executor, options, robot_observation_spec(config.state_dim),
                       has_future_state=True, task=task)

    return factory


def observation_spec_for(spec: Any) -> ObservationSpec:
    """The wire fields of a plug-in's declared inputs (``policies.base``): vectors take
    float32 or float64, images uint8 ``[H, W, 3]`` or ``[3, H, W]``."""
    from policies.base import ImageInput, ImageMapInput, TextInput, VectorInput

    fields: dict[str, Any] = {}
    for key, kind in spec.inputs.items():
        if isinstance(kind, VectorInput):
            fields[key] = ArrayField(("float32", "float64"), (kind.size,), cast="float32")
        elif isinstance(kind, ImageInput):
            fields[key] = ImageField(kind.height, kind.width)
        elif isinstance(kind, ImageMapInput):
            fields[key] = ArrayMapField(ImageField(kind.height, kind.width), max_items=len(kind.cameras),
                                        required=True, names=tuple(kind.cameras))
        elif isinstance(kind, TextInput):
            fields[key] = TextField(max_length=kind.max_length, required=kind.required)
        else:
            raise ValueError(f"input {key!r}: {type(kind).__name__} is not an observation input of policies.base")
    return ObservationSpec(fields)


def plugin_model(target: str, args: Mapping[str, Any], options: ModelOptions, *, alias: str | None = None,
                 obs_map: Mapping[str, str | None] | None = None) -> LoadedModel:
    """The LoadedModel of ``--policy target`` (``MODULE:FACTORY`` or ``lerobot:PATH``) with the
    factory's keyword arguments ``args`` and the client keys ``obs_map`` renames (see
    :meth:`stream.protocol.ObservationSpec.renamed`). Builds the plug-in here to read its spec
    (kept for the in-process executor). Raises ``ValueError`` for a bad target or map."""
    factory, kwargs = target, dict(args)
    if target.startswith(LEROBOT_PREFIX):
        factory = LEROBOT_FACTORY
        kwargs = {"path": target[len(LEROBOT_PREFIX):], "device": options.device, **kwargs}
    plugin = build_plugin(factory, kwargs)
    _PREPARED[_prepared_key(factory, kwargs)] = plugin
    spec = plugin.spec
    name = alias or spec.name or factory.partition(":")[0].rpartition(".")[2]
    observation_spec = observation_spec_for(spec)
    if obs_map:
        observation_spec = observation_spec.renamed(obs_map)
    clash = sorted(RESERVED_KEYS & set(observation_spec.fields))
    if clash:
        raise ValueError(f"--obs-map: client keys {', '.join(clash)} are reserved by the protocols")
    executor = ExecutorSpec("stream.policy_models:ChunkPolicyExecutor",
                            {"factory": factory, "kwargs": kwargs, "max_batch_size": options.max_batch_size})
    return _served(name, spec, executor, options, observation_spec,
                   has_future_state=getattr(plugin, "future_state", None) is not None)


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

"""Which models a server can load: one small table, name -> factory.

A factory takes :class:`ModelOptions` and returns a :class:`LoadedModel`: the executor
(the batched model call, run by the engine's worker thread), the metadata frame sent to
clients on connect, the observation spec every request is validated against, and a
function that turns one executor output into the reply's fields.

Adding a model (e.g. a trained policy per task) means registering a factory here with
:func:`register`, or a resolver with :func:`register_resolver` for a family of names
(``--model <task>``); the server and sessions do not change. Factories import their
heavy dependencies (torch) inside, so serving the stand-in stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from stream.batcher import CostOf, batch_size_cost
from stream.hosts import ExecutorSpec, RunBatch
from stream.protocol import ArrayField, ArrayMapField, ObservationSpec, TextField


@dataclass
class ModelOptions:
    """Options of ``headway serve`` that factories may read."""

    standin_ms: float = 20.0
    max_batch_size: int = 64
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """What the server needs of a model. The executor itself is built where it will run
    (the engine's worker thread, or another process) from ``executor_spec``."""

    name: str
    executor_spec: ExecutorSpec
    max_batch_size: int
    metadata: dict[str, Any]  # msgpack-able; sent as the first frame of a session
    observation_spec: ObservationSpec
    reply_fields: Callable[[Any], dict[str, Any]]  # executor output -> reply fields
    latency_prior_s: float = 0.0  # first guess of one call's latency, before any is measured
    cost_of: CostOf = batch_size_cost  # a batch's cost key for the latency estimate
    slots: int = 0  # state slots of a stepped model (0: one-shot requests only)


ModelFactory = Callable[[ModelOptions], LoadedModel]

_FACTORIES: dict[str, ModelFactory] = {}
_RESOLVERS: list[Callable[[str], ModelFactory | None]] = []
# Modules that register more models when imported; imported on the first unknown name so
# that serving the stand-in never imports torch.
PLUGIN_MODULES = ["stream.policy_models"]
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def register(name: str, factory: ModelFactory) -> None:
    _FACTORIES[name] = factory


def register_resolver(resolver: Callable[[str], ModelFactory | None]) -> None:
    """``resolver(name)`` returns a factory for names it knows (e.g. shipped checkpoints)."""
    _RESOLVERS.append(resolver)


def names() -> list[str]:
    return sorted(_FACTORIES)


def load(name: str, options: ModelOptions | None = None, *, alias: str | None = None) -> LoadedModel:
    """Build model ``name``; ``alias`` renames it (to serve two configurations of one model).

    Raises ``KeyError`` naming the known models when ``name`` is unknown.
    """
    options = options or ModelOptions()
    factory = _FACTORIES.get(name)
    if factory is None:
        _load_plugins()
        factory = _FACTORIES.get(name)
    if factory is None:
        for resolver in _RESOLVERS:
            factory = resolver(name)
            if factory is not None:
                break
    if factory is None:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(names())}")
    model = factory(options)
    if alias is not None:
        model.name = alias
        model.metadata = {**model.metadata, "model": alias}
    return model


# ---------------------------------------------------------------------------------------
# The stand-in policy

# A robot observation as openpi clients send it: a state vector, optional camera images
# (HxWx3 or 3xHxW uint8, up to 640 pixels a side), an optional language prompt.
ROBOT_IMAGES = ArrayMapField(ArrayField(("uint8",), (None, None, None), cast="uint8", finite=False, max_size=640),
                             max_items=4)


def robot_observation_spec(state_dim: int) -> ObservationSpec:
    return ObservationSpec({
        "state": ArrayField(("float32", "float64"), (state_dim,), cast="float32"),
        "images": ROBOT_IMAGES,
        "prompt": TextField(max_length=1024),
    })


class StandinExecutor:
    """Runs :class:`policies.standin.StandinPolicy` on batches of validated observations."""

    def __init__(self, latency_s: float, max_batch_size: int):
        from policies.standin import StandinPolicy

        self.policy = StandinPolicy(latency_s)
        self.max_batch_size = max_batch_size

    def run(self, batch: RunBatch) -> list[np.ndarray]:
        states = np.stack([item.inputs["state"] for item in batch.items])
        degraded = np.array([item.degraded for item in batch.items])
        chunks = self.policy.sample(states, degraded)
        return list(chunks)


def _standin(options: ModelOptions) -> LoadedModel:
    from policies.standin import A, H, S

    latency_s = options.standin_ms / 1000.0
    return LoadedModel(
        name="standin",
        executor_spec=ExecutorSpec("stream.registry:StandinExecutor",
                                   {"latency_s": latency_s, "max_batch_size": options.max_batch_size}),
        max_batch_size=options.max_batch_size,
        metadata={"type": "metadata", "model": "standin", "action_horizon": H, "action_dim": A, "state_dim": S,
                  "standin_ms": options.standin_ms},
        observation_spec=robot_observation_spec(S),
        reply_fields=lambda chunk: {"actions": chunk},
        latency_prior_s=latency_s,
    )


register("standin", _standin)

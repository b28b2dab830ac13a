"""Which models a server can load: one small table, name -> factory.

A factory takes :class:`ModelOptions` and returns a :class:`LoadedModel`: the executor
(the batched model call, run by the engine's worker thread), the metadata frame sent to
clients on connect, the observation spec every request is validated against, and a
function that turns one executor output into the reply's fields.

Adding a model (e.g. a trained policy per task) means registering a factory here with
:func:`register`, or a resolver with :func:`register_resolver` for a family of names
(``--model <task>``); the server and sessions do not change. A user's own policy needs no
registration: ``stream.policy_models.plugin_model`` serves any object implementing the
chunk-policy plug-in interface (``headway serve --policy MODULE:FACTORY``). Factories import their
heavy dependencies (torch) inside, so serving the stand-in stays light.

Every name ``load`` accepts is listed by :func:`known_models` (``headway serve --help`` and
the unknown-model error print that list): a factory is listed under its name, and a
resolver comes with a listing of the names it resolves.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from stream.batcher import CostOf, batch_size_cost
from stream.hosts import ExecutorSpec, RunBatch
from models.lm_text import ChatFormat
from stream.protocol import ArrayField, ArrayMapField, ObservationSpec, TextField


@dataclass
class ModelOptions:
    """Options of ``headway serve`` that factories may read."""

    standin_ms: float = 20.0
    max_batch_size: int = 64
    device: str = "cpu"
    chat_slots: int = 8  # chat models: sessions (KV-cache slots) per model
    chat_context: int | None = None  # chat models: tokens per slot (default: the model's context)
    prefill_slice: int = 32  # chat models: most tokens of one prefill request
    chat_dtype: str = "auto"  # chat models: float32, bfloat16, or auto (models.lm.serving_dtype)
    asr_slots: int = 32  # speech recognisers: streams (state slots) per model
    asr_buffer_s: float = 10.0  # speech recognisers: most audio a stream may have waiting
    tts_slots: int = 16  # speech synthesisers: streams (state slots) per model
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChatText:
    """The server's side of a chat model: what its sessions need to tokenise and lay out text."""

    tokenizer: Any  # a transformers tokenizer
    format: ChatFormat
    max_context: int  # tokens a slot holds
    prefill_slice: int = 32  # most tokens one prefill request carries
    max_tokens: int = 256  # default (and largest) reply length
    # A hello's structured context (a map, e.g. the demo table's state) -> the model's text;
    # None: the model takes a text context only. Raises ValueError for a map it cannot read.
    context_text: Callable[[Any], str] | None = None


@dataclass
class AsrAudio:
    """The server's side of a streaming speech recogniser (served at /v1/asr and
    /api/asr-streaming): the audio it steps on and how long a word takes to come out."""

    sample_rate: int  # the model's rate; sessions resample to it
    frame_samples: int  # one step's samples at that rate
    tau: int  # text delay in frames
    flush_frames: int  # frames of silence that bring out the last word
    max_buffer_s: float = 10.0  # audio a stream may have waiting before it is refused


@dataclass
class TtsVoice:
    """The server's side of a streaming speech synthesiser (served at /v1/tts and
    /api/tts_streaming): its voice, its rate and the words it can say."""

    voice: str
    sample_rate: int  # the model's own rate; audio is resampled to the rate a client asks
    words: tuple[str, ...]  # its vocabulary; other words are skipped
    lookahead: int = 2  # words it reads ahead of the one it speaks


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
    chat: ChatText | None = None  # a chat model (served at /v1/chat): its tokenizer and chat format
    asr: AsrAudio | None = None  # a streaming speech recogniser (served at /v1/asr and /api/asr-streaming)
    tts: TtsVoice | None = None  # a streaming speech synthesiser (served at /v1/tts and /api/tts_streaming)


ModelFactory = Callable[[ModelOptions], LoadedModel]


@dataclass(frozen=True)
class KnownModel:
    """One model ``load`` can build, as listed to users: its name, other names that load
    the same model, and one line saying what it is."""

    name: str
    summary: str
    aliases: tuple[str, ...] = ()


Resolver = Callable[[str], ModelFactory | None]
Listing = Callable[[], Iterable[KnownModel]]

_FACTORIES: dict[str, ModelFactory] = {}
_SUMMARIES: dict[str, str] = {}
_RESOLVERS: list[tuple[Resolver, Listing]] = []
# Modules that register more models when imported; imported on the first unknown name (or
# listing) so that serving the stand-in never imports torch.
PLUGIN_MODULES = ["stream.policy_models", "stream.chat_models", "stream.asr_models", "stream.tts_models"]
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


def register(name: str, factory: ModelFactory, summary: str = "") -> None:
    """``load(name)`` builds the model with ``factory``; ``summary`` is its line in listings."""
    _FACTORIES[name] = factory
    _SUMMARIES[name] = summary


def register_resolver(resolver: Resolver, listing: Listing) -> None:
    """``resolver(name)`` returns a factory for names it knows (e.g. shipped checkpoints);
    ``listing()`` names them all, so that users can be told what exists."""
    _RESOLVERS.append((resolver, listing))


def known_models() -> list[KnownModel]:
    """Every model ``load`` accepts: registered factories first, then each resolver's listing.

    Imports the plugin modules (a listing may read checkpoint files or import torch).
    """
    _load_plugins()
    known = [KnownModel(name, _SUMMARIES.get(name, "")) for name in sorted(_FACTORIES)]
    for _, listing in _RESOLVERS:
        known.extend(listing())
    return known


def describe_models() -> str:
    """The table of :func:`known_models`, one model a line, for ``--help``."""
    known = known_models()
    width = max(len(model.name) for model in known) + 2
    lines = []
    for model in known:
        also = f" (also: {', '.join(model.aliases)})" if model.aliases else ""
        lines.append(f"  {model.name:<{width}}{model.summary}{also}")
    return "\n".join(lines)


def unknown_model_message(name: str) -> str:
    """``unknown model 'x' (did you mean 'y'?); known: ...``, naming every accepted name."""
    known = known_models()
    accepted = [model.name for model in known] + [alias for model in known for alias in model.aliases]
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = ", ".join(model.name + "".join(f" (= {alias})" for alias in model.aliases) for model in known)
    return f"unknown model {name!r}{hint}; known: {listed}"


def load(name: str, options: ModelOptions | None = None, *, alias: str | None = None) -> LoadedModel:
    """Build model ``name``; ``alias`` renames it (to serve two configurations of one model).

    Raises ``KeyError`` with :func:`unknown_model_message` when ``name`` is unknown.
    """
    options = options or ModelOptions()
    factory = _FACTORIES.get(name)
    if factory is None:
        _load_plugins()
        factory = _FACTORIES.get(name)
    if factory is None:
        for resolver, _ in _RESOLVERS:
            factory = resolver(name)
            if factory is not None:
                break
    if factory is None:
        raise KeyError(unknown_model_message(name))
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
        return list(self.policy.sample(states, any(item.degraded for item in batch.items)))


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


register("standin", _standin,
         "untrained stand-in for capacity work: 50x14 actions from a 14-float state, --standin-ms a call")

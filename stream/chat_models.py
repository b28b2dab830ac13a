"""Serving causal LMs for ``/v1/chat``: ``headway serve --llm PATH`` (or ``--model llm:PATH``),
and the embedded model of the demo world, ``world-lm`` (models/checkpoints/world_lm, trained
by ``headway train lm``), which ``headway serve`` serves at ``/v1/chat`` when no ``--llm`` is
given. ``world-lm`` also reads a ``hello`` whose ``context`` is the table's map (its text is
:func:`models.world_grammar.context_text`, the layout it was trained on).

:class:`ChatExecutor` is the engine's executor for a stepped LM: one KV-cache slot per chat
session (:class:`models.lm.CausalLM`), and one packed forward per batch. Each item of a
batch (``WorkItem.inputs``, built by :class:`stream.chat_session.ChatProtocol`) is::

    {"position": int,        # the slot's cache is cut back to this length first
     "tokens": [int, ...],   # appended (a prefill slice, or a decode step's token); [] = the token sampled last
     "sample": None | {"temperature", "top_k", "top_p", "seed"}}   # sample the next token

and its output ``{"position": new cache length, "token": sampled id}`` (``token`` only when
asked), or ``{"error": why}`` for an item that does not fit its slot (the others still run).

:func:`chat_cost` names a batch's cost for the latency estimate: ``("decode", rows)`` for a
batch of decode steps, ``("prefill", tokens)`` for one with prefill slices, so the engine
never predicts a 32-token slice from a one-token step.

A decode step's ``tokens`` is ``[the token]`` when the session knows it, ``[]`` when the step
was queued before the previous one answered (then the slot's last sampled token is fed, and
it must have been sampled for this position).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from stream.batcher import Request
from stream.hosts import ExecutorSpec, RunBatch
from stream.latency import CostKey
from stream.protocol import ObservationSpec
from stream.registry import (ChatText, KnownModel, LoadedModel, ModelFactory, ModelOptions, register,
                             register_resolver)

PREFIX = "llm:"
SHIPPED_NAME = "world-lm"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models" / "checkpoints" / "world_lm"


def shipped_checkpoint_present() -> bool:
    """The embedded chat model is in the checkout (``headway train lm`` writes it)."""
    return (SHIPPED_DIR / "config.json").is_file()


class ChatExecutor:
    """Runs the prefill slices and decode steps of the chat sessions of one LM (worker thread only)."""

    def __init__(self, path: str, slots: int, threads: int | None = None, device: str = "cpu",
                 max_context: int | None = None, warm_up: bool = True, dtype: str = "auto"):
        import torch

        from models.lm import CausalLM, Row, Sampling, sample, serving_dtype

        if threads:
            torch.set_num_threads(threads)
        self._row, self._sampling, self._sample = Row, Sampling, sample
        self.lm = CausalLM(path, device=device, max_context=max_context, dtype=serving_dtype(dtype, device))
        self.slots = slots
        self.max_batch_size = slots  # at most one step per stream per batch
        self.last_sampled: dict[int, tuple[int, int]] = {}  # slot -> (position it goes to, token)
        if warm_up:
            self.warm_up()

    def warm_up(self) -> None:
        """Slices and steps of two scratch slots, alone and side by side, and a sampled token:
        the first session must not pay for the first calls (allocation, kernel selection)."""
        a, b = -1, -2
        ids = [i % self.lm.vocab_size for i in range(3, 40)]
        for slot in (a, b):
            self.lm.open_slot(slot)
        self.lm.forward([self._row(a, 0, ids[:32])])
        self.lm.forward([self._row(a, 32, ids[32:]), self._row(b, 0, ids[:8])])
        for step in range(3):
            logits = self.lm.forward([self._row(a, 37 + step, [5]), self._row(b, 8 + step, [6])])
            self._sample(logits[0], self._sampling(), 0)
            self._sample(logits[1], self._sampling(temperature=1.0, top_k=50, top_p=0.9), 0)
        for slot in (a, b):
            self.lm.close_slot(slot)

    def open_slot(self, slot: int) -> None:
        self.lm.open_slot(slot)
        self.last_sampled.pop(slot, None)

    def close_slot(self, slot: int) -> None:
        self.lm.close_slot(slot)
        self.last_sampled.pop(slot, None)

    def run(self, batch: RunBatch) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any] | None] = [None] * len(batch.items)
        rows, index = [], []
        for i, item in enumerate(batch.items):
            x = item.inputs
            position, tokens = int(x["position"]), [int(t) for t in x["tokens"]]
            if not tokens:  # a decode step: the token this slot sampled last, where it belongs
                at, token = self.last_sampled.get(item.slot, (None, None))
                if at != position:
                    outputs[i] = {"error": f"slot {item.slot} has no token sampled for position {position}"}
                    continue
                tokens = [token]
            held = self.lm.cache_length(item.slot) if item.slot in self.lm.caches else None
            if held is None or position > held:
                outputs[i] = {"error": f"slot {item.slot} holds {held} tokens; cannot continue at {position}"}
                continue
            if position + len(tokens) > self.lm.max_context:
                outputs[i] = {"error": f"slot {item.slot} would exceed the context of {self.lm.max_context}"}
                continue
            rows.append(self._row(item.slot, position, tokens))
            index.append(i)
        logits = self.lm.forward(rows)
        for i, row, row_logits in zip(index, rows, logits):
            end = row.position + len(row.tokens)
            out: dict[str, Any] = {"position": end}
            settings = batch.items[i].inputs.get("sample")
            if settings is not None:
                token = self._sample(row_logits, self._sampling(**settings), end)
                self.last_sampled[row.slot] = (end, token)
                out["token"] = token
            outputs[i] = out
        return outputs  # type: ignore[return-value]


def chat_cost(batch: Sequence[Request]) -> CostKey:
    """``("decode", rows)`` when every item appends one token (a decode step, or a one-token
    slice: the same work), else ``("prefill", tokens)``."""
    tokens = [max(1, len(r.inputs["tokens"])) for r in batch]
    if all(n == 1 for n in tokens):
        return CostKey("decode", len(batch))
    return CostKey("prefill", sum(tokens))


def llm_factory(path: str | Path, name: str | None = None,
                context_text: Callable[[Any], str] | None = None) -> ModelFactory:
    """A factory serving the ``transformers`` causal LM in the local directory ``path``;
    ``context_text`` turns a ``hello``'s structured ``context`` into the model's text."""
    path = Path(path).expanduser().resolve()

    def factory(options: ModelOptions) -> LoadedModel:
        from transformers import AutoConfig, AutoTokenizer

        from models.lm import serving_dtype
        from models.lm_text import ChatFormat

        dtype = str(serving_dtype(options.chat_dtype, options.device)).removeprefix("torch.")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        limit = getattr(config, "max_position_embeddings", None) or 4096
        max_context = min(limit, options.chat_context) if options.chat_context else limit
        chat_format = ChatFormat.for_tokenizer(tokenizer)
        model_name = name or path.name
        slots = options.chat_slots
        return LoadedModel(
            name=model_name,
            executor_spec=ExecutorSpec("stream.chat_models:ChatExecutor",
                                       {"path": str(path), "slots": slots, "device": options.device,
                                        "max_context": max_context, "dtype": dtype}),
            max_batch_size=slots,
            metadata={"type": "metadata", "model": model_name, "kind": "chat", "path": str(path),
                      "max_context": max_context, "format": chat_format.name, "dtype": dtype},
            observation_spec=ObservationSpec({}),
            reply_fields=lambda output: output,
            latency_prior_s=0.05,
            cost_of=chat_cost,
            slots=slots,
            chat=ChatText(tokenizer, chat_format, max_context, prefill_slice=options.prefill_slice,
                          context_text=context_text),
        )

    return factory


def _resolve(name: str) -> ModelFactory | None:
    if not name.startswith(PREFIX):
        return None
    path = Path(name[len(PREFIX):]).expanduser()
    if not (path / "config.json").is_file():
        raise KeyError(f"no transformers model in {str(path)!r} (it has no config.json); --llm takes a local "
                       "directory written by save_pretrained")
    return llm_factory(path)


def _listing() -> list[KnownModel]:
    return [KnownModel(PREFIX + "PATH", "a transformers causal LM from the local directory PATH, chat at /v1/chat "
                                        "(same as --llm PATH)")]


def _world_lm(options: ModelOptions) -> LoadedModel:
    if not shipped_checkpoint_present():
        raise KeyError(f"the embedded chat model is not in {SHIPPED_DIR}; train it with: headway train lm")
    from models.world_grammar import context_text

    if options.chat_dtype == "auto":
        # Served as trained and measured (headway train lm evaluates in float32): at 0.9M
        # parameters bfloat16 buys no speed, and it cost 2 points on the not-on-table commands.
        options = dataclasses.replace(options, chat_dtype="float32")
    return llm_factory(SHIPPED_DIR, SHIPPED_NAME, context_text)(options)


register_resolver(_resolve, _listing)
register(SHIPPED_NAME, _world_lm, "the embedded chat model of the demo world (headway train lm), chat at /v1/chat; "
                                  "served there by default when no --llm is given")

"""A Hugging Face causal LM served from a KV cache per slot, with packed batches of rows.

:class:`CausalLM` loads any ``transformers`` causal LM and its tokenizer from a local
directory (``local_files_only=True``: nothing is fetched at run time) and keeps each
stream's keys and values in a :class:`SlotCache` of its own. One :meth:`CausalLM.forward`
advances several slots at once: each :class:`Row` names a slot, the cache length it
continues from (``position``) and the token ids to append -- a prefill slice of many
tokens or a decode step of one. The rows are packed into one sequence (no padding), so the
model's linear layers and MLPs run once for every token of the batch; only attention is per
row, each row against its own slot's cache.

How: the model is loaded with the attention implementation ``"headway_slots"``
(registered here through ``transformers``' ``AttentionInterface``), and called with
``cache=None`` and explicit per-token ``position_ids``. The model computes queries, keys
and values (rotary embeddings applied at the given positions) and hands them to
:func:`slot_attention`, which writes each row's new keys and values into its slot's cache
and attends over the slot's cache up to and including them. Keys are cached after their
rotary embedding, as every ``transformers`` cache does, so a slot's cache is exactly what a
``DynamicCache`` would hold for the same tokens.

A row's ``position`` may be smaller than its slot's cache length: the cache is cut back to
it first (a rolled-back tail: discarded speculative tokens, a cancelled reply, a
re-tokenised piece). It may never be larger (the tokens in between would be missing).

Supported: decoder-only models whose attention goes through ``AttentionInterface`` (Llama,
Mistral, Qwen2/3, Gemma 1, Phi-3, SmolLM, ...), full or sliding-window attention. Refused
when they come up: attention logit soft-capping and attention sinks (``ValueError``), and
models with other state than keys and values (Mamba-style layers): they never call the
attention function for those layers and would lose their state.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

ATTENTION = "headway_slots"


@dataclass
class Row:
    """One slot's part of a batch: append ``tokens`` to ``slot``'s cache cut back to ``position``."""

    slot: int
    position: int
    tokens: list[int]


class SlotCache:
    """One stream's keys and values, per layer ``[kv_heads, capacity, head_dim]``, grown by
    doubling. ``length`` tokens are valid; what lies past it is stale and overwritten."""

    def __init__(self) -> None:
        self.length = 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def write(self, layer: int, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``keys``/``values`` ``[kv_heads, T, head_dim]`` at ``start .. start + T``."""
        end = start + keys.shape[1]
        held = self.keys.get(layer)
        if held is None or held.shape[1] < end:
            capacity = max(64, end, 2 * (held.shape[1] if held is not None else 0))
            grown_k = keys.new_empty((keys.shape[0], capacity, keys.shape[2]))
            grown_v = values.new_empty((values.shape[0], capacity, values.shape[2]))
            if held is not None:
                grown_k[:, :start] = held[:, :start]
                grown_v[:, :start] = self.values[layer][:, :start]
            self.keys[layer], self.values[layer] = grown_k, grown_v
        self.keys[layer][:, start:end] = keys
        self.values[layer][:, start:end] = values

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))


@dataclass
class _Packed:
    """The batch the model is running: row r's tokens are ``offsets[r] : offsets[r] + lengths[r]``
    of the packed sequence, appended to ``caches[r]`` at ``positions[r]``."""

    caches: list[SlotCache]
    decode_dtype: torch.dtype  # what a one-token row attends in (see CausalLM.decode_attention_dtype)
    positions: list[int]
    offsets: list[int]
    lengths: list[int]
    masks: dict[tuple[int, int, int | None], torch.Tensor] = field(default_factory=dict)

    def causal_mask(self, position: int, length: int, window: int | None, device) -> torch.Tensor:
        """``[length, position + length]``: query i (at position + i) sees keys j <= position + i
        (and, with a sliding window, j > position + i - window)."""
        key = (position, length, window)
        mask = self.masks.get(key)
        if mask is None:
            query_pos = torch.arange(position, position + length, device=device)[:, None]
            key_pos = torch.arange(position + length, device=device)[None, :]
            mask = key_pos <= query_pos
            if window is not None:
                mask &= key_pos > query_pos - window
            self.masks[key] = mask
        return mask


_RUNNING: contextvars.ContextVar[_Packed] = contextvars.ContextVar("headway_slots_batch")


def slot_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The ``"headway_slots"`` attention: ``query`` ``[1, heads, N, d]`` and ``key``/``value``
    ``[1, kv_heads, N, d]`` of the packed rows in; each row's keys and values are written to
    its slot's cache and its queries attend over that cache. Returns ``[1, N, heads, d]``.
    ``attention_mask`` is ignored: masks come from the rows' positions."""
    if kwargs.get("softcap") is not None:
        raise ValueError("attention logit soft-capping is not supported by the slot cache")
    if kwargs.get("s_aux") is not None:
        raise ValueError("attention sinks are not supported by the slot cache")
    packed = _RUNNING.get()
    layer = module.layer_idx
    window = kwargs.get("sliding_window")
    groups = query.shape[1] // key.shape[1]
    out = query.new_empty((query.shape[2], query.shape[1], query.shape[3]))  # [N, heads, d]
    for cache, position, offset, length in zip(packed.caches, packed.positions, packed.offsets, packed.lengths):
        span = slice(offset, offset + length)
        cache.write(layer, position, key[0, :, span], value[0, :, span])
        keys, values = cache.view(layer, position + length)
        q = query[:, :, span]
        if length == 1 and window is None:  # one query sees the whole cache: no mask
            dtype = packed.decode_dtype
            o = F.scaled_dot_product_attention(q.to(dtype), keys[None].to(dtype), values[None].to(dtype),
                                               scale=scaling, enable_gqa=groups > 1)
        else:
            if window is not None and position + length > window:  # keys before the window never count
                first = max(0, position - window + 1)
                keys, values = keys[:, first:], values[:, first:]
                mask = packed.causal_mask(position, length, window, query.device)[:, first:]
            else:
                mask = packed.causal_mask(position, length, window, query.device)
            o = F.scaled_dot_product_attention(q, keys[None], values[None], attn_mask=mask, scale=scaling,
                                               enable_gqa=groups > 1)
        out[span] = o[0].transpose(0, 1)
    return out[None], None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The mask hook of ``"headway_slots"``: masks come from the rows' positions instead."""
    return None


def register_attention() -> None:
    """Make ``attn_implementation="headway_slots"`` known to ``transformers`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, slot_attention)
    AttentionMaskInterface.register(ATTENTION, _no_mask)


class CausalLM:
    """A causal LM and its tokenizer loaded from ``path``, with one :class:`SlotCache` per slot.

    Not thread-safe: one thread (the engine's worker) calls it. ``max_context`` bounds
    ``position + len(tokens)`` of every row (default: the model's ``max_position_embeddings``).
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 max_context: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        register_attention()
        transformers_logging.disable_progress_bar()  # a server's log, not a terminal: no "Loading weights" bars
        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=dtype,
                                                          attn_implementation=ATTENTION).to(device).eval()
        self.device = torch.device(device)
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or 4096
        self.max_context = min(limit, max_context) if max_context else limit
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.caches: dict[int, SlotCache] = {}
        # A decode step's attention runs in float32 on a CPU even for a half-precision model:
        # there the CPU's bfloat16 SDPA kernel is slow for one query (440 us over 448 keys,
        # against 96 us in float32 with the conversions; docs/service.md), while the linear
        # layers are where bfloat16 pays. Prefill rows (many queries) stay in the model's dtype,
        # where the bfloat16 kernel is the faster one. On a GPU, the model's dtype throughout.
        self.decode_attention_dtype = torch.float32 if self.device.type == "cpu" else self.model.dtype

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def open_slot(self, slot: int) -> None:
        """Give ``slot`` an empty cache (a slot reopened for a new stream starts empty)."""
        self.caches[slot] = SlotCache()

    def close_slot(self, slot: int) -> None:
        self.caches.pop(slot, None)

    def cache_length(self, slot: int) -> int:
        return self.caches[slot].length

    def forward(self, rows: Sequence[Row], *, all_positions: bool = False) -> list[torch.Tensor]:
        """Append each row's tokens to its slot's cache; per row, the logits ``[vocab]`` after
        its last token (``all_positions``: ``[len(tokens), vocab]``, one per token)."""
        if not rows:
            return []
        caches, positions, offsets, lengths, ids, pos_ids, last = [], [], [], [], [], [], []
        offset = 0
        for row in rows:
            cache = self.caches.get(row.slot)
            if cache is None:
                raise KeyError(f"slot {row.slot} is not open")
            if any(c is cache for c in caches):
                raise ValueError(f"slot {row.slot} appears twice in one batch")
            if not row.tokens:
                raise ValueError(f"row for slot {row.slot} has no tokens")
            if not 0 <= row.position <= cache.length:
                raise ValueError(f"slot {row.slot} holds {cache.length} tokens; cannot continue at {row.position}")
            end = row.position + len(row.tokens)
            if end > self.max_context:
                raise ValueError(f"slot {row.slot} would hold {end} tokens, more than the context of {self.max_context}")
            caches.append(cache)
            positions.append(row.position)
            offsets.append(offset)
            lengths.append(len(row.tokens))
            ids.extend(row.tokens)
            pos_ids.extend(range(row.position, end))
            offset += len(row.tokens)
            last.append(offset - 1)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        position_ids = torch.tensor([pos_ids], dtype=torch.long, device=self.device)
        keep = torch.arange(offset, device=self.device) if all_positions else torch.tensor(last, device=self.device)
        token = _RUNNING.set(_Packed(caches, self.decode_attention_dtype, positions, offsets, lengths))
        try:
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                    logits_to_keep=keep).logits[0].float()
        finally:
            _RUNNING.reset(token)
        for cache, position, length in zip(caches, positions, lengths):
            cache.length = position + length
        if all_positions:
            return [logits[o:o + n] for o, n in zip(offsets, lengths)]
        return list(logits)


DTYPES = ("auto", "float32", "bfloat16")


def serving_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """The dtype to serve an LM in: ``float32``, ``bfloat16``, or ``auto`` -- bfloat16 where
    the hardware computes in it natively (a CUDA device that supports it, a CPU with
    AVX512-BF16 or AMX), else float32. Serving a float32 checkpoint in half precision is
    what LLM servers do (vLLM's ``dtype=auto``); on this repo's 2-core AVX512-BF16 machine
    it runs a ~100M Llama's forward 2-3x faster."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
        else torch.float32


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``temperature`` 0 is greedy (argmax); otherwise softmax
    sampling at that temperature over the ``top_k`` most likely tokens (0: all) whose
    cumulative probability reaches ``top_p``. The random draw for the token at cache
    position p is seeded by (``seed``, p), so the same conversation samples the same reply
    whatever ran before it on the slot."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def sample(logits: torch.Tensor, sampling: Sampling, position: int) -> int:
    """The next token after ``logits`` ``[vocab]``, drawn for cache position ``position``."""
    if sampling.temperature <= 0.0:
        return int(torch.argmax(logits))
    scores = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(scores, min(sampling.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, 0) - sorted_probs > sampling.top_p
        probs = probs.clone()
        probs[order[outside]] = 0.0
        probs /= probs.sum()
    generator = torch.Generator(device="cpu").manual_seed((sampling.seed * 1_000_003 + position) % 2**63)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))

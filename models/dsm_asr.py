"""A delayed-streams-modeling (DSM) speech recogniser: one decoder-only causal transformer
over the time-aligned audio and text streams (``models.dsm_streams``).

At frame ``t`` the model reads audio frame ``t`` (its log-mel features,
``models.audio_frames``) and the text token it wrote at ``t - 1``, and writes the text token
of frame ``t`` -- which speaks about audio frame ``t - τ`` -- and the activity of audio
frame ``t - τ`` (inside a word or not). One frame is one step, so every stream advances one
step at a time and many streams batch into one step (:meth:`DsmAsr.step`).

Attention is causal over a window of the last ``window`` frames with a learned bias per head
and distance (no absolute positions), so a stream can run for hours in a KV cache of fixed
size: :class:`AsrSlots` holds, per slot, ``window`` keys and values per layer, the sample tail
the next frame's features read, the last token written and the frame count.

Decoding is greedy under the DSM grammar (``dsm_streams.allowed_after``): a word token only
right after a boundary token. :meth:`DsmAsr.offline_decode` transcribes a whole file and gives
exactly what streaming the same audio through :meth:`DsmAsr.step` gives, whatever the frame
sizes the audio arrived in and whichever other streams shared its steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.audio_frames import FEATURES, FRAME_SAMPLES, N_MELS, SUBFRAMES, TAIL, LogMelFrames, tails_of, whole_frames
from models.dsm_streams import (BOUNDARY, DEFAULT_TAU, FIRST_WORD, PAD, WordDecoder, WordEnded, WordEvent,
                                WordTokenizer)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
CHECKPOINT_NAME = "dsm_asr"


@dataclass
class DsmAsrConfig:
    """The recogniser's shape and what it was trained on (saved beside the weights)."""

    words: list[str]  # the vocabulary: word i is token FIRST_WORD + i
    tau: int = DEFAULT_TAU  # text delay in frames
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ff: int = 512
    window: int = 64  # frames each step attends to: the KV cache length
    feature_mean: list[float] = field(default_factory=lambda: [0.0] * N_MELS)  # per mel band
    feature_std: list[float] = field(default_factory=lambda: [1.0] * N_MELS)
    extra: dict[str, Any] = field(default_factory=dict)  # training provenance

    @property
    def flush_frames(self) -> int:
        """Frames of silence after the audio that bring out its last word and the word's end."""
        return self.tau + 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "DsmAsrConfig":
        return cls(**json.loads(text))


class WindowedAttention(nn.Module):
    """Causal self-attention over the last ``window`` frames, with a learned bias per head and
    distance (0 = the frame itself)."""

    def __init__(self, d_model: int, heads: int, window: int):
        super().__init__()
        self.heads, self.head_dim, self.window = heads, d_model // heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        # starts as ALiBi (Press et al. 2022): head h discounts a frame d back by d / 2^(h+1)
        slopes = 2.0 ** -torch.arange(1, heads + 1, dtype=torch.float32)
        self.distance_bias = nn.Parameter(-slopes[:, None] * torch.arange(window, dtype=torch.float32))

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.heads, self.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole sequences ``[B, T, d]``."""
        b, t, d = x.shape
        q, k, v = (y.transpose(1, 2) for y in self._split(x))  # [B, H, T, dh]
        distance = torch.arange(t, device=x.device)[:, None] - torch.arange(t, device=x.device)[None, :]
        inside = (distance >= 0) & (distance < self.window)
        bias = self.distance_bias[:, distance.clamp(0, self.window - 1)]  # [H, T, T]
        bias = bias.masked_fill(~inside, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
             slot_index: torch.Tensor, positions: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One frame ``[n, d]`` of the streams in cache ``rows``; writes their key and value at
        ``slot_index`` (position modulo window) of ``keys``/``values`` ``[S, H, W, dh]``.
        ``positions`` ``[n, W]``: the frame held by each cache entry (-1: empty), already
        holding ``position`` ``[n]`` at ``slot_index``."""
        n, d = x.shape
        q, k, v = self._split(x)  # [n, H, dh]
        keys[rows, :, slot_index] = k
        values[rows, :, slot_index] = v
        cached_k, cached_v = keys[rows], values[rows]  # [n, H, W, dh]
        scores = torch.einsum("nhd,nhwd->nhw", q, cached_k) / math.sqrt(self.head_dim)
        distance = (position[:, None] - positions).clamp(0, self.window - 1)  # [n, W]
        scores = scores + self.distance_bias[:, distance].permute(1, 0, 2)
        scores = scores.masked_fill((positions < 0)[:, None, :], float("-inf"))
        y = torch.einsum("nhw,nhwd->nhd", scores.softmax(-1), cached_v)
        return self.out(y.reshape(n, d))


class Block(nn.Module):
    def __init__(self, c: DsmAsrConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.d_model)
        self.attention = WindowedAttention(c.d_model, c.heads, c.window)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.ff = nn.Sequential(nn.Linear(c.d_model, c.ff), nn.GELU(), nn.Linear(c.ff, c.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.ff(self.norm2(x))

    def step(self, x: torch.Tensor, *cache: Any) -> torch.Tensor:
        x = x + self.attention.step(self.norm1(x), *cache)
        return x + self.ff(self.norm2(x))


@dataclass
class WindowSlots:
    """The windowed KV caches of ``size`` streams (slots) of a stepped DSM model (the
    recogniser's, the synthesiser's); fixed size, whatever their length."""

    keys: torch.Tensor  # [layers, S, H, window, dh]
    values: torch.Tensor  # [layers, S, H, window, dh]
    positions: torch.Tensor  # [S, window] int64: the frame each cache entry holds, -1 empty
    frame: torch.Tensor  # [S] int64: frames processed

    @property
    def size(self) -> int:
        return self.frame.shape[0]

    def reset(self, slot: int) -> None:
        """Make ``slot`` a fresh stream."""
        self.keys[:, slot] = 0
        self.values[:, slot] = 0
        self.positions[slot] = -1
        self.frame[slot] = 0


@dataclass
class AsrSlots(WindowSlots):
    """:class:`WindowSlots` of one :class:`DsmAsr`, with what its steps carry over."""

    previous: torch.Tensor  # [S] int64: the text token written at the last frame
    tail: torch.Tensor  # [S, 240]: the last samples of the last frame

    def reset(self, slot: int) -> None:
        super().reset(slot)
        self.previous[slot] = PAD
        self.tail[slot] = 0


@dataclass
class StepOutput:
    """Per slot: the text token written this step (-1 for an idle slot), the probability
    that audio frame ``frame - τ`` is inside a word, and the frame index just processed
    (-1 for an idle slot)."""

    tokens: torch.Tensor  # [S] int64
    activity: torch.Tensor  # [S] float32
    frame: torch.Tensor  # [S] int64


class DsmAsr(nn.Module):
    def __init__(self, config: DsmAsrConfig):
        super().__init__()
        c = self.config = config
        self.tokenizer = WordTokenizer(c.words)
        vocab = self.tokenizer.size
        self.features = LogMelFrames()
        self.register_buffer("feature_mean", torch.tensor(c.feature_mean, dtype=torch.float32).repeat(SUBFRAMES))
        self.register_buffer("feature_std", torch.tensor(c.feature_std, dtype=torch.float32).repeat(SUBFRAMES))
        self.audio_in = nn.Sequential(nn.Linear(FEATURES, c.d_model), nn.GELU(), nn.Linear(c.d_model, c.d_model))
        self.text_in = nn.Embedding(vocab, c.d_model)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.text_head = nn.Linear(c.d_model, vocab)
        self.activity_head = nn.Linear(c.d_model, 1)
        allowed = torch.zeros(2, vocab, dtype=torch.bool)  # row 0: after a boundary; row 1: after anything else
        allowed[0, FIRST_WORD:] = True
        allowed[1, [BOUNDARY, PAD]] = True
        self.register_buffer("allowed", allowed, persistent=False)

    # -- whole sequences (training, and the reference for step) -----------------------------

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised features of consecutive frames ``[B, F, 1280]`` of streams that start at
        their first frame -> ``[B, F, 640]``."""
        b, f, _ = frames.shape
        raw = self.features(frames.reshape(b * f, FRAME_SAMPLES), tails_of(frames).reshape(b * f, TAIL))
        return self._normalise(raw).reshape(b, f, FEATURES)

    def _normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.feature_mean) / self.feature_std

    def forward(self, features: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced: features ``[B, T, 640]`` and the text token of the frame before each
        (``PAD`` before the first) ``[B, T]`` -> text logits ``[B, T, V]`` and activity logits
        ``[B, T]``."""
        x = self.audio_in(features) + self.text_in(previous)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.text_head(x), self.activity_head(x).squeeze(-1)

    # -- streaming ------------------------------------------------------------------------

    def new_slots(self, size: int) -> AsrSlots:
        """State for ``size`` fresh streams."""
        c = self.config
        shape = (c.layers, size, c.heads, c.window, c.d_model // c.heads)
        device = self.feature_mean.device
        return AsrSlots(keys=torch.zeros(shape, device=device), values=torch.zeros(shape, device=device),
                        positions=torch.full((size, c.window), -1, dtype=torch.long, device=device),
                        frame=torch.zeros(size, dtype=torch.long, device=device),
                        previous=torch.full((size,), PAD, dtype=torch.long, device=device),
                        tail=torch.zeros(size, TAIL, device=device))

    @torch.no_grad()
    def step(self, slots: AsrSlots, frames: torch.Tensor, active: torch.Tensor) -> StepOutput:
        """Advance the ``active`` slots (bool ``[S]``) by one frame each: ``frames`` ``[S, 1280]``
        (16 kHz; rows of idle slots are ignored). Idle slots' state is left untouched."""
        rows = active.nonzero().squeeze(1)
        if rows.numel() == 0:
            return self._step_rows(slots, rows, frames[:0, :0])
        raw = self.features(frames[rows], slots.tail[rows])
        slots.tail[rows] = frames[rows, -TAIL:]
        return self._step_rows(slots, rows, self._normalise(raw))

    @torch.no_grad()
    def step_features(self, slots: AsrSlots, features: torch.Tensor, active: torch.Tensor) -> StepOutput:
        """:meth:`step` from normalised features ``[S, 640]`` already computed (offline decoding)."""
        rows = active.nonzero().squeeze(1)
        return self._step_rows(slots, rows, features[rows])

    def _step_rows(self, slots: AsrSlots, rows: torch.Tensor, features: torch.Tensor) -> StepOutput:
        size = slots.size
        tokens = torch.full((size,), -1, dtype=torch.long, device=features.device)
        activity = torch.zeros(size, device=features.device)
        frame = torch.full((size,), -1, dtype=torch.long, device=features.device)
        if rows.numel() == 0:
            return StepOutput(tokens, activity, frame)
        position = slots.frame[rows]
        slot_index = position % self.config.window
        slots.positions[rows, slot_index] = position
        positions = slots.positions[rows]
        previous = slots.previous[rows]
        x = self.audio_in(features) + self.text_in(previous)
        for layer, block in enumerate(self.blocks):
            x = block.step(x, slots.keys[layer], slots.values[layer], rows, slot_index, positions, position)
        x = self.norm(x)
        logits = self.text_head(x)
        allowed = self.allowed[(previous != BOUNDARY).long()]
        written = logits.masked_fill(~allowed, float("-inf")).argmax(-1)
        slots.previous[rows] = written
        slots.frame[rows] = position + 1
        tokens[rows] = written
        activity[rows] = torch.sigmoid(self.activity_head(x).squeeze(-1))
        frame[rows] = position
        return StepOutput(tokens, activity, frame)

    # -- a whole file -----------------------------------------------------------------------

    @torch.no_grad()
    def offline_decode(self, audio: np.ndarray, *, flush: bool = True) -> list[WordEnded]:
        """The words of ``audio`` (float32 [T], 16 kHz, mono): its features computed in one
        pass, then decoded frame by frame. With ``flush``, ``config.flush_frames`` frames of
        silence follow the audio (as a streaming client's flush feeds them) and the last word
        is ended at the end of the stream."""
        events = self.offline_events(audio, flush=flush)
        return [event for event in events if isinstance(event, WordEnded)]

    @torch.no_grad()
    def offline_events(self, audio: np.ndarray, *, flush: bool = True) -> list[WordEvent]:
        """The word events of :meth:`offline_decode`, in the order streaming emits them."""
        frames = torch.from_numpy(whole_frames(audio, self.config.flush_frames if flush else 0))
        features = self.frame_features(frames[None])[0]
        slots = self.new_slots(1)
        one = torch.ones(1, dtype=torch.bool)
        decoder = WordDecoder(self.tokenizer, self.config.tau)
        events: list[WordEvent] = []
        for t in range(features.shape[0]):
            out = self.step_features(slots, features[t:t + 1], one)
            events.extend(decoder.feed(int(out.tokens[0]), float(out.activity[0])))
        if flush:
            events.extend(decoder.finish())
        return events


def save_dsm_asr(model: DsmAsr, directory: Path = CHECKPOINT_DIR, name: str = CHECKPOINT_NAME) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` (weights) and ``NAME.json`` (config) into ``directory``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights, config = directory / f"{name}.safetensors", directory / f"{name}.json"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    config.write_text(model.config.to_json())
    return weights, config


def load_dsm_asr(directory: Path = CHECKPOINT_DIR, name: str = CHECKPOINT_NAME) -> DsmAsr:
    """The recogniser saved by :func:`save_dsm_asr`, in eval mode on the CPU."""
    from safetensors.torch import load_file

    model = DsmAsr(DsmAsrConfig.from_json((directory / f"{name}.json").read_text()))
    model.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    return model.eval()

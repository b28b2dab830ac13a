"""Training the DSM synthesiser (``models.dsm_tts``) on one voice's utterances, as codec codes
(``models.tts_codec``) and timed words.

A training sequence is one to three utterances of the voice spoken one after another (their
codes concatenated, their word times moved along), so that the model also learns to run past
one sentence and past its attention window; the streams are ``align_tts_streams``'s, the
losses the cross-entropy of every code written (all codebooks alike) and of each boundary
decision, teacher-forced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from models.dsm_streams import BOUNDARY, FRAME_S, TimedWord
from models.dsm_tts import DsmTts, align_tts_streams


@dataclass
class CodedUtterance:
    """One utterance as codec codes ``[frames, codebooks]`` and its timed words."""

    codes: np.ndarray
    words: list[TimedWord]


def concatenate(parts: Sequence[CodedUtterance]) -> CodedUtterance:
    codes, words, offset = [], [], 0
    for p in parts:
        codes.append(p.codes)
        shift = offset * FRAME_S
        words.extend(TimedWord(w.text, w.start_s + shift, w.end_s + shift) for w in p.words)
        offset += p.codes.shape[0]
    return CodedUtterance(np.concatenate(codes), words)


@dataclass
class TtsBatch:
    text: torch.Tensor  # [B, T]
    ahead: torch.Tensor  # [B, T, L]
    audio: torch.Tensor  # [B, T, K] (-1: no code)
    boundary: torch.Tensor  # [B, T] target of the boundary head (-1: no decision)


def make_batch(model: DsmTts, utterances: Sequence[CodedUtterance], rng: np.random.Generator, batch_size: int,
               max_steps: int = 112) -> TtsBatch:
    c = model.config
    rows = []
    for _ in range(batch_size):
        count = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        parts = [utterances[int(rng.integers(len(utterances)))] for _ in range(count)]
        while True:
            streams = align_tts_streams(concatenate(parts).words, concatenate(parts).codes, model.tokenizer, c)
            if len(streams.text) <= max_steps or len(parts) == 1:
                break
            parts = parts[:-1]
        rows.append(streams)
    steps = max(len(r.text) for r in rows)
    text = np.full((batch_size, steps), 3, dtype=np.int64)
    ahead = np.full((batch_size, steps, c.lookahead), 3, dtype=np.int64)
    audio = np.full((batch_size, steps, c.codebooks), -1, dtype=np.int64)
    boundary = np.full((batch_size, steps), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(r.text)
        text[i, :n], ahead[i, :n], audio[i, :n] = r.text, r.ahead, r.audio
        decide = (r.text[: r.end] != BOUNDARY)  # steps whose next token the model decides
        boundary[i, : r.end] = np.where(decide, (r.text[1: r.end + 1] == BOUNDARY).astype(np.int64), -1)
    return TtsBatch(*(torch.from_numpy(a) for a in (text, ahead, audio, boundary)))


def batch_loss(model: DsmTts, batch: TtsBatch, boundary_weight: float = 1.0,
               input_noise: float = 0.0) -> tuple[torch.Tensor, dict]:
    boundary_logits, audio_logits = model(batch.text, batch.ahead, batch.audio, input_noise=input_noise)
    audio = F.cross_entropy(audio_logits.reshape(-1, audio_logits.shape[-1]), batch.audio.reshape(-1), ignore_index=-1)
    text = F.cross_entropy(boundary_logits.reshape(-1, 2), batch.boundary.reshape(-1), ignore_index=-1)
    first = F.cross_entropy(audio_logits[..., 0, :].reshape(-1, audio_logits.shape[-1]),
                            batch.audio[..., 0].reshape(-1), ignore_index=-1)
    return audio + boundary_weight * text, {"audio": audio.item(), "boundary": text.item(), "codebook0": first.item()}


def train_dsm_tts(model: DsmTts, utterances: Sequence[CodedUtterance], *, steps: int, batch_size: int = 24,
                  lr: float = 2e-3, warmup: int = 100, seed: int = 0, time_limit_s: float | None = None,
                  input_noise: float = 0.0,
                  on_step: Callable[[int, float, dict], None] | None = None) -> list[float]:
    """AdamW, linear warm-up, cosine decay over ``steps`` (or, with ``time_limit_s``, over the
    steps that fit: the schedule is stretched on wall time); returns every step's loss.
    ``input_noise``: :meth:`DsmTts.forward`'s."""
    import time

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "distance_bias" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "distance_bias" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98))
    start = time.perf_counter()

    def progress(step: int) -> float:
        p = step / max(1, steps)
        if time_limit_s:
            p = max(p, (time.perf_counter() - start) / time_limit_s)
        return min(1.0, p)

    losses = []
    for step in range(steps):
        done = progress(step)
        if done >= 1.0:
            break
        scale = (step + 1) / warmup if step < warmup else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        batch = make_batch(model, utterances, rng, batch_size)
        loss, parts = batch_loss(model, batch, input_noise=input_noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1], parts)
    model.eval()
    return losses

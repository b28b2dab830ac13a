"""Training and evaluating the DSM recogniser (``models.dsm_asr``) on timed utterances.

A training sequence is a stretch of a live stream: a few utterances one after another with
random silences between them (so the model learns to wait through pauses and to run past
its attention window), cut to a fixed number of frames, every word ending at least
``flush_frames`` before the end so that its tokens fit. The targets are the DSM text and
activity streams of those words (``models.dsm_streams.align_text_stream``); the text input is
the target shifted by one frame (teacher forcing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from models.audio_frames import FRAME_SAMPLES, N_MELS, SAMPLE_RATE, SUBFRAMES, LogMelFrames, tails_of, whole_frames
from models.dsm_asr import DsmAsr
from models.dsm_streams import FIRST_WORD, PAD, TimedWord, WordEnded, WordDecoder, WordEvent, align_text_stream, word_error_rate


@dataclass
class Clip:
    """One utterance: 16 kHz mono audio (float32, or int16 to halve the memory) and its
    timed words."""

    audio: np.ndarray
    words: list[TimedWord]

    def samples(self) -> np.ndarray:
        if self.audio.dtype == np.int16:
            return self.audio.astype(np.float32) / 32768
        return self.audio.astype(np.float32)


def feature_statistics(clips: Sequence[Clip], limit: int = 500, seed: int = 0) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each mel band's log power over (up to ``limit``) clips."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(clips), size=min(limit, len(clips)), replace=False)
    features = LogMelFrames()
    rows = []
    for i in chosen:
        frames = torch.from_numpy(whole_frames(clips[i].samples()))
        rows.append(features(frames, tails_of(frames)).reshape(-1, SUBFRAMES, N_MELS).reshape(-1, N_MELS))
    values = torch.cat(rows)
    return values.mean(0).tolist(), values.std(0).clamp_min(1e-3).tolist()


def make_sequence(clips: Sequence[Clip], rng: np.random.Generator, frames: int, reserve_frames: int,
                  silence_only: float = 0.03) -> tuple[np.ndarray, list[TimedWord]]:
    """``frames`` frames of a stream: random clips after random silences (0-1.5 s), each
    clip whole, the last one ending ``reserve_frames`` or more before the end; with
    probability ``silence_only`` nothing but a quiet noise floor."""
    total = frames * FRAME_SAMPLES
    usable = total - reserve_frames * FRAME_SAMPLES
    audio = np.zeros(total, dtype=np.float32)
    words: list[TimedWord] = []
    at = int(rng.uniform(0, 1.0) * SAMPLE_RATE)
    if rng.random() >= silence_only:
        for _ in range(64):
            clip = clips[int(rng.integers(len(clips)))]
            samples = clip.samples()
            if at + len(samples) > usable:
                break
            audio[at: at + len(samples)] = samples
            offset = at / SAMPLE_RATE
            words.extend(TimedWord(w.text, w.start_s + offset, w.end_s + offset) for w in clip.words)
            at += len(samples) + int(rng.uniform(0.0, 1.5) * SAMPLE_RATE)
    floor_db = rng.uniform(-90, -55)
    audio += (10 ** (floor_db / 20) * rng.standard_normal(total)).astype(np.float32)
    return audio, words


@dataclass
class TrainingBatch:
    frames: torch.Tensor  # [B, F, 1280]
    tokens: torch.Tensor  # [B, F] target text tokens
    activity: torch.Tensor  # [B, F] target activity


def make_batch(model: DsmAsr, clips: Sequence[Clip], rng: np.random.Generator, batch_size: int,
               frames: int) -> TrainingBatch:
    c = model.config
    audio, tokens, activity = [], [], []
    for _ in range(batch_size):
        # Words closer together than two frames push their tokens later (a boundary and a word
        # token each); such a stream may not fit its frames: draw another stretch then.
        for _attempt in range(20):
            samples, words = make_sequence(clips, rng, frames, c.flush_frames)
            try:
                stream = align_text_stream(words, frames, model.tokenizer, c.tau)
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"20 stretches of {frames} frames in a row had words that do not fit; use longer --frames")
        audio.append(samples.reshape(frames, FRAME_SAMPLES))
        tokens.append(stream.tokens)
        activity.append(stream.activity)
    return TrainingBatch(torch.from_numpy(np.stack(audio)), torch.from_numpy(np.stack(tokens)),
                         torch.from_numpy(np.stack(activity)))


@dataclass(frozen=True)
class Regularisation:
    """What keeps the recogniser from memorising the training sentences (its first full run,
    without these, had 2.7% WER on training utterances and 27% on held-out sentences in the
    same voices, often answering with a whole training sentence: the text stream had become a
    language model of the corpus).

    * ``text_noise``: the fraction of word tokens of the teacher-forced text input replaced by a
      random word, so that the next word must come from the audio, not from the words before.
    * Vocal-tract-length perturbation (VTLP, Jaitly & Hinton 2013), in the mel domain: each
      sequence's mel axis stretched by a factor drawn from ``1 ± vtl_warp`` (``new[m] =
      old[m / alpha]``, linear between bins), so that formants move as between speakers. The
      held-out voice is a speaker (female, HTS) that the few training voices do not cover.
    * SpecAugment (Park et al. 2019) on the normalised features: ``freq_masks`` bands of up to
      ``freq_width`` mel bins, and one time mask of up to ``time_width`` sub-frames (10 ms each)
      per ``time_every`` frames, set to the mean (0).
    * A random spectral envelope per sequence (``spectral_tilt``): a smooth curve across the mel
      bands, ``sum_k a_k cos(pi k (m + 1/2) / M)`` for k = 1..3 with ``a_k`` drawn from
      ``± spectral_tilt`` (normalised units; 0.3 is about 4 dB), added to every frame. VTLP moves
      formants; this changes the balance of low and high bands, as a voice's glottal source, a
      vocoder or a microphone does, which no training voice may have."""

    text_noise: float = 0.2
    vtl_warp: float = 0.1
    freq_masks: int = 2
    freq_width: int = 12
    time_width: int = 4
    time_every: int = 12
    spectral_tilt: float = 0.3

    def features(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, f, _ = features.shape
        x = features.reshape(b, f * SUBFRAMES, N_MELS).clone()
        if self.vtl_warp > 0:
            x = self._warp(x, generator)
        if self.spectral_tilt > 0:
            x = x + self._envelope(b, generator)[:, None, :]
        for i in range(b):
            for _ in range(self.freq_masks):
                width = int(torch.randint(0, self.freq_width + 1, (), generator=generator))
                start = int(torch.randint(0, N_MELS - width + 1, (), generator=generator))
                x[i, :, start: start + width] = 0.0
            for _ in range(f // self.time_every):
                width = int(torch.randint(0, self.time_width + 1, (), generator=generator))
                start = int(torch.randint(0, f * SUBFRAMES - width + 1, (), generator=generator))
                x[i, start: start + width] = 0.0
        return x.reshape(b, f, SUBFRAMES * N_MELS)

    def _warp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, t, m = x.shape
        alpha = 1 + (2 * torch.rand(b, generator=generator) - 1) * self.vtl_warp
        source = (torch.arange(m, dtype=x.dtype)[None, :] / alpha[:, None]).clamp(0, m - 1)  # [b, m]
        low = source.floor().long()
        high = (low + 1).clamp(max=m - 1)
        frac = (source - low)[:, None, :]
        take = lambda index: x.gather(2, index[:, None, :].expand(b, t, m))  # noqa: E731
        return take(low) * (1 - frac) + take(high) * frac

    def _envelope(self, b: int, generator: torch.Generator) -> torch.Tensor:
        k = torch.arange(1, 4, dtype=torch.float32)
        bands = (torch.arange(N_MELS, dtype=torch.float32) + 0.5) / N_MELS
        basis = torch.cos(math.pi * k[:, None] * bands[None, :])  # [3, M]
        gains = (2 * torch.rand(b, 3, generator=generator) - 1) * self.spectral_tilt
        return gains @ basis  # [b, M]

    def text(self, previous: torch.Tensor, vocabulary_size: int, generator: torch.Generator) -> torch.Tensor:
        words = previous >= FIRST_WORD
        flip = words & (torch.rand(previous.shape, generator=generator) < self.text_noise)
        random_words = torch.randint(FIRST_WORD, vocabulary_size, previous.shape, generator=generator)
        return torch.where(flip, random_words, previous)


def batch_loss(model: DsmAsr, batch: TrainingBatch, activity_weight: float = 0.5,
               regularisation: Regularisation | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the text stream plus ``activity_weight`` x the activity's binary
    cross-entropy, teacher-forced; with ``regularisation`` (training), its noise on the inputs
    (the targets stay clean)."""
    with torch.no_grad():
        features = model.frame_features(batch.frames)
    previous = torch.cat([torch.full_like(batch.tokens[:, :1], PAD), batch.tokens[:, :-1]], dim=1)
    if regularisation is not None:
        generator = generator or torch.Generator().manual_seed(0)
        features = regularisation.features(features, generator)
        previous = regularisation.text(previous, model.text_in.num_embeddings, generator)
    logits, activity = model(features, previous)
    text = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.tokens.reshape(-1))
    active = F.binary_cross_entropy_with_logits(activity, batch.activity)
    return text + activity_weight * active, {"text": text.item(), "activity": active.item()}


def train_dsm_asr(model: DsmAsr, clips: Sequence[Clip], *, steps: int, batch_size: int = 32, frames: int = 96,
                  lr: float = 1e-3, warmup: int = 200, seed: int = 0,
                  regularisation: Regularisation | None = Regularisation(),
                  on_step: Callable[[int, float, dict], None] | None = None) -> list[float]:
    """AdamW with a linear warm-up and a cosine decay, the inputs noised by ``regularisation``
    (none when ``None``); returns the loss of every step."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "distance_bias" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "distance_bias" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        batch = make_batch(model, clips, rng, batch_size, frames)
        loss, parts = batch_loss(model, batch, regularisation=regularisation, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1], parts)
    model.eval()
    return losses


@torch.no_grad()
def transcribe_batched(model: DsmAsr, audios: Sequence[np.ndarray], batch_size: int = 64) -> list[list[WordEnded]]:
    """The words of each audio, streamed through :meth:`DsmAsr.step` many at a time (each
    file in its own slot, shorter ones idle once done), then flushed: the same words as
    :meth:`DsmAsr.offline_decode` of each file."""
    results: list[list[WordEnded]] = []
    flush = model.config.flush_frames
    for first in range(0, len(audios), batch_size):
        group = [whole_frames(a, flush) for a in audios[first: first + batch_size]]
        slots = model.new_slots(len(group))
        decoders = [WordDecoder(model.tokenizer, model.config.tau) for _ in group]
        events: list[list[WordEvent]] = [[] for _ in group]
        longest = max(len(g) for g in group)
        frames = torch.zeros(len(group), FRAME_SAMPLES)
        for t in range(longest):
            active = torch.tensor([t < len(g) for g in group])
            for i, g in enumerate(group):
                if t < len(g):
                    frames[i] = torch.from_numpy(g[t])
            out = model.step(slots, frames, active)
            for i in active.nonzero().squeeze(1).tolist():
                events[i].extend(decoders[i].feed(int(out.tokens[i]), float(out.activity[i])))
        for i, decoder in enumerate(decoders):
            events[i].extend(decoder.finish())
            results.append([e for e in events[i] if isinstance(e, WordEnded)])
    return results


def evaluate_wer(model: DsmAsr, clips: Sequence[Clip], batch_size: int = 64) -> dict:
    """Word error rate of ``clips`` and the number of words and clips it counts."""
    hypotheses = transcribe_batched(model, [c.samples() for c in clips], batch_size)
    references = [[w.text for w in c.words] for c in clips]
    return {"wer": word_error_rate(references, [[w.text for w in h] for h in hypotheses]),
            "words": sum(len(r) for r in references), "clips": len(clips)}

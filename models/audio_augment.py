"""Augmentations of synthesized speech, each keeping the word timings exact.

Resampling to the model's rate and speed perturbation change the time axis by a known
factor (timings are rescaled by it); gain, noise, a room's reverberation and a telephone
band leave it alone (the reverberation tail is cut at the original length). All are seeded
through the ``numpy.random.Generator`` given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models.dsm_streams import TimedWord


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``audio`` at ``rate`` Hz resampled to ``target`` Hz (torchaudio's windowed sinc)."""
    import torchaudio.functional as AF

    if rate == target:
        return np.asarray(audio, dtype=np.float32)
    return AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), rate, target).numpy()


def change_speed(audio: np.ndarray, rate: int, target: int, speed: float,
                 words: Sequence[TimedWord]) -> tuple[np.ndarray, list[TimedWord], float]:
    """Play ``audio`` ``speed`` times faster (pitch moves with it) and resample it to
    ``target`` Hz: the audio, its words retimed, and the exact factor applied (the rate is
    rounded to a multiple of 100 Hz, so that resampling's kernel stays short)."""
    played_at = max(100, int(round(rate * speed / 100)) * 100)
    factor = played_at / rate
    out = resample(audio, played_at, target)
    return out, [TimedWord(w.text, w.start_s / factor, w.end_s / factor) for w in words], factor


def gain(audio: np.ndarray, db: float) -> np.ndarray:
    return (audio * 10 ** (db / 20)).astype(np.float32)


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    """Noise at ``snr_db`` below the speech's power (measured where it is loudest: the
    frames above a tenth of the peak RMS); ``colour`` white or pink."""
    noise = rng.standard_normal(len(audio)).astype(np.float32)
    if colour == "pink":  # 1/f power: scale the spectrum by 1/sqrt(f)
        spectrum = np.fft.rfft(noise)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spectrum / np.sqrt(f), n=len(audio)).astype(np.float32)
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1)) if len(frames) else np.zeros(1)
    speech = rms[rms > 0.1 * rms.max()] if rms.max() > 0 else rms
    power = float((speech ** 2).mean()) if len(speech) else 0.0
    noise_power = float((noise.astype(np.float64) ** 2).mean()) or 1.0
    scale = math.sqrt(power / noise_power / 10 ** (snr_db / 10))
    return (audio + scale * noise).astype(np.float32)


def room_impulse_response(rt60_s: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: the direct sound, then exponentially decaying noise reaching -60 dB
    after ``rt60_s`` (and a few early reflections)."""
    n = max(2, int(rt60_s * rate))
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 6.9078: -60 dB
    tail[: int(0.002 * rate)] = 0.0  # the reverberation follows the direct sound by ~2 ms
    h = 0.3 * tail / (np.abs(tail).max() + 1e-9)
    for _ in range(3):
        h[int(rng.uniform(0.003, 0.02) * rate)] += rng.uniform(0.2, 0.5)
    h[0] = 1.0
    return (h / np.sqrt((h ** 2).sum())).astype(np.float32)


def reverberate(audio: np.ndarray, rt60_s: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """``audio`` in a synthetic room, at its original loudness peak and length."""
    h = room_impulse_response(rt60_s, rate, rng)
    size = len(audio) + len(h) - 1
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(h, size), size)[: len(audio)]
    peak = np.abs(wet).max()
    return (wet * (np.abs(audio).max() / peak) if peak > 0 else wet).astype(np.float32)


def telephone(audio: np.ndarray, rate: int) -> np.ndarray:
    """A telephone line: 8 kHz (3.4 kHz band), high-passed at 300 Hz, mu-law coded, back at
    ``rate``."""
    import torchaudio.functional as AF

    x = torch.from_numpy(resample(audio, rate, 8000))
    x = AF.highpass_biquad(x, 8000, 300.0)
    x = AF.mu_law_decoding(AF.mu_law_encoding(x.clamp(-1, 1), 256), 256)
    return resample(x.numpy(), 8000, rate)


@dataclass(frozen=True)
class AugmentPlan:
    """What to do to one utterance (None: skip that step)."""

    speed: float | None = None
    gain_db: float | None = None
    noise_snr_db: float | None = None
    noise_colour: str = "white"
    room_rt60_s: float | None = None
    telephone: bool = False

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "AugmentPlan":
        """The corpus's mix: speed in half the utterances, noise in half, a room in 30%, a
        telephone line in 15%, a random level in all."""
        return cls(
            speed=float(rng.uniform(0.85, 1.15)) if rng.random() < 0.5 else None,
            gain_db=float(rng.uniform(-12, 0)),
            noise_snr_db=float(rng.uniform(8, 35)) if rng.random() < 0.5 else None,
            noise_colour="pink" if rng.random() < 0.5 else "white",
            room_rt60_s=float(rng.uniform(0.15, 0.7)) if rng.random() < 0.3 else None,
            telephone=bool(rng.random() < 0.15),
        )


def augment(audio: np.ndarray, rate: int, target: int, words: Sequence[TimedWord], plan: AugmentPlan,
            rng: np.random.Generator) -> tuple[np.ndarray, list[TimedWord], dict]:
    """Apply ``plan`` and resample to ``target`` Hz: the audio, the retimed words, and the
    record of what was applied (the exact speed factor)."""
    applied: dict = {"speed": None, "gain_db": plan.gain_db, "noise_snr_db": plan.noise_snr_db,
                     "noise_colour": plan.noise_colour if plan.noise_snr_db is not None else None,
                     "room_rt60_s": plan.room_rt60_s, "telephone": plan.telephone}
    if plan.speed is not None:
        audio, words, factor = change_speed(audio, rate, target, plan.speed, words)
        applied["speed"] = factor
    else:
        audio, words = resample(audio, rate, target), list(words)
    if plan.room_rt60_s is not None:
        audio = reverberate(audio, plan.room_rt60_s, target, rng)
    if plan.telephone:
        audio = telephone(audio, target)
    if plan.noise_snr_db is not None:
        audio = add_noise(audio, plan.noise_snr_db, rng, plan.noise_colour)
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > 0:
        audio = audio * (0.9 / peak)  # normalise, then the random level
    if plan.gain_db is not None:
        audio = gain(audio, plan.gain_db)
    return audio.astype(np.float32), list(words), applied

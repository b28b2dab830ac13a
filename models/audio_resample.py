"""Streaming resampling to the speech models' rate, with torchaudio: audio arriving in chunks of
any size gives the samples ``torchaudio.functional.resample`` gives the whole recording.

torchaudio's sinc resampler works in blocks: with ``g = gcd(orig, new)``, ``o = orig / g`` input
samples make ``n = new / g`` output samples, and block ``i`` reads the input samples
``[i*o - width, i*o + o + width)`` (zeros outside the recording). So a stream can emit block
``i`` as soon as sample ``i*o + o + width`` has arrived, by resampling a stretch of the input
that starts a whole number of blocks before it (its zero padding then falls on samples no
emitted block reads). The output lags the input by ``width`` samples of look-ahead (under 1.5 ms
at the rates served); :meth:`StreamingResampler.flush` ends the recording: it emits the rest as
if the recording stopped there.
"""

from __future__ import annotations

import math

import numpy as np
import torch

LOWPASS_FILTER_WIDTH = 6  # torchaudio's defaults
ROLLOFF = 0.99


def sinc_width(orig_rate: int, new_rate: int) -> int:
    """The input samples each side of a block that torchaudio's kernel reads (its ``width``)."""
    g = math.gcd(orig_rate, new_rate)
    o, n = orig_rate // g, new_rate // g
    return math.ceil(LOWPASS_FILTER_WIDTH * o / (min(o, n) * ROLLOFF))


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """The whole recording resampled (float32 [T] -> float32), as torchaudio does it."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if orig_rate == new_rate:
        return audio.copy()
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(audio), orig_rate, new_rate).numpy()


class StreamingResampler:
    """``push(chunk)`` -> the output samples now known; ``flush()`` -> the rest, the recording
    having ended. Holds at most ``width`` + one block + one chunk of input between calls."""

    def __init__(self, orig_rate: int, new_rate: int):
        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError("sample rates are positive")
        self.orig_rate, self.new_rate = orig_rate, new_rate
        g = math.gcd(orig_rate, new_rate)
        self._o, self._n = orig_rate // g, new_rate // g
        self.width = sinc_width(orig_rate, new_rate)
        # context before a block, rounded up to whole blocks so the stretch starts on a block
        self._context = -(-self.width // self._o) * self._o
        self._reset()

    def _reset(self) -> None:
        self._buffer = np.zeros(0, dtype=np.float32)
        self._start = 0  # input index of _buffer[0] (negative: leading zeros of the recording)
        self._received = 0  # input samples received
        self._block = 0  # next output block to emit
        if self.orig_rate != self.new_rate:
            self._buffer = np.zeros(self._context, dtype=np.float32)
            self._start = -self._context

    @property
    def pending(self) -> int:
        """Input samples received whose output has not been emitted yet."""
        return self._received - min(self._received, self._block * self._o)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self.orig_rate == self.new_rate:
            return chunk.copy()
        self._buffer = np.concatenate([self._buffer, chunk])
        self._received += len(chunk)
        # block i is known once the input reaches i*o + o + width
        ready = (self._received - self.width - self._o) // self._o + 1
        return self._emit(ready)

    def flush(self) -> np.ndarray:
        """The remaining output of the recording (zeros after its end, as torchaudio pads), and a
        fresh start: what is pushed next is a new recording."""
        if self.orig_rate == self.new_rate:
            return np.zeros(0, dtype=np.float32)
        total = math.ceil(self._n * self._received / self._o)  # torchaudio's output length
        blocks = -(-total // self._n)
        self._buffer = np.concatenate([self._buffer, np.zeros(self.width + self._o, dtype=np.float32)])
        out = self._emit(blocks)
        emitted_before = (self._block * self._n) - len(out)
        out = out[: max(0, total - emitted_before)]
        self._reset()
        return out

    def _emit(self, ready: int) -> np.ndarray:
        if ready <= self._block:
            return np.zeros(0, dtype=np.float32)
        import torchaudio.functional as AF

        first = self._block * self._o - self._context  # input index the stretch starts at
        end = ready * self._o + self.width  # the last block's last sample read (exclusive)
        stretch = self._buffer[first - self._start: end - self._start]
        out = AF.resample(torch.from_numpy(np.ascontiguousarray(stretch)), self.orig_rate, self.new_rate).numpy()
        skip = self._context // self._o * self._n
        out = out[skip: skip + (ready - self._block) * self._n]
        self._block = ready
        keep_from = self._block * self._o - self._context
        self._buffer = self._buffer[keep_from - self._start:]
        self._start = keep_from
        return out

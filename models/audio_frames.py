"""The audio stream of the speech models: 16 kHz mono cut into 80 ms frames, and the log-mel
features of each frame.

Why log-mel stacked per frame rather than discrete codes: no neural codec can be fetched
(Mimi's weights are not shipped here) and one trained on this small corpus would be a
project of its own; log-mel is cheap, deterministic and causal, and with 8 sub-frames of
10 ms per 80 ms frame the model still sees the fine timing of word onsets. A frame's features
depend only on its own 1280 samples and the 240 samples before it (the analysis window
reaches 15 ms back), so a live stream keeps that tail and gets exactly the features of the
whole file.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 1280  # 80 ms
HOP = 160  # 10 ms sub-frames
WINDOW = 400  # 25 ms analysis window
N_FFT = 512
N_MELS = 80
SUBFRAMES = FRAME_SAMPLES // HOP  # 8 sub-frames per frame
TAIL = WINDOW - HOP  # samples of the previous frame a frame's features read
FEATURES = SUBFRAMES * N_MELS  # features per frame


class LogMelFrames(torch.nn.Module):
    """Log-mel features of whole 80 ms frames: ``[N, 1280]`` samples and the ``[N, 240]``
    samples before each (zeros before a stream's first frame) -> ``[N, 640]``
    (8 sub-frames x 80 mel bands, sub-frame major)."""

    def __init__(self) -> None:
        super().__init__()
        import torchaudio.functional as AF

        self.register_buffer("window", torch.hann_window(WINDOW, periodic=True), persistent=False)
        fbanks = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE, norm="slaney",
                                    mel_scale="slaney")
        self.register_buffer("fbanks", fbanks, persistent=False)

    def forward(self, frames: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        x = torch.cat([tails, frames], dim=-1)  # [N, 1520]
        windows = x.unfold(-1, WINDOW, HOP) * self.window  # [N, 8, 400]
        power = torch.fft.rfft(windows, n=N_FFT).abs().square()  # [N, 8, 257]
        mel = power @ self.fbanks  # [N, 8, 80]
        return torch.log(mel + 1e-6).flatten(1)


def whole_frames(audio: np.ndarray, extra_frames: int = 0) -> np.ndarray:
    """``audio`` (float32 [T] at 16 kHz) zero-padded to whole frames, plus ``extra_frames``
    frames of silence: ``[frames, 1280]``."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    frames = -(-len(audio) // FRAME_SAMPLES) + extra_frames
    padded = np.zeros(frames * FRAME_SAMPLES, dtype=np.float32)
    padded[: len(audio)] = audio
    return padded.reshape(frames, FRAME_SAMPLES)


def tails_of(frames: torch.Tensor) -> torch.Tensor:
    """For consecutive frames ``[..., F, 1280]`` of one stream, the tail each reads (the last
    240 samples of the frame before; zeros for the first)."""
    tails = torch.zeros(*frames.shape[:-1], TAIL, dtype=frames.dtype, device=frames.device)
    tails[..., 1:, :] = frames[..., :-1, -TAIL:]
    return tails


class FrameAssembler:
    """Audio of any chunk sizes -> whole 80 ms frames, in order, nothing lost: ``push``
    returns the frames completed so far (``[n, 1280]``), ``flush`` the last partial frame
    padded with silence (if any). Holds fewer than 1280 samples between calls."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending(self) -> int:
        """Samples received that do not make a whole frame yet."""
        return len(self._pending)

    def push(self, samples: np.ndarray) -> np.ndarray:
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        whole = len(data) // FRAME_SAMPLES * FRAME_SAMPLES
        self._pending = data[whole:]
        return data[:whole].reshape(-1, FRAME_SAMPLES)

    def flush(self) -> np.ndarray:
        if not len(self._pending):
            return np.zeros((0, FRAME_SAMPLES), dtype=np.float32)
        frame = np.zeros((1, FRAME_SAMPLES), dtype=np.float32)
        frame[0, : len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return frame

"""torch and torchaudio are pinned as a pair that imports (pyproject.toml): a mismatched pair
fails at ``import torchaudio`` with an undefined symbol in ``libtorchaudio.so``."""

import math

import torch


def test_torchaudio_imports_and_resamples_a_tone_without_changing_its_pitch():
    import torchaudio.functional as F

    rate, target, hz = 16000, 24000, 440.0
    t = torch.arange(rate) / rate
    tone = torch.sin(2 * math.pi * hz * t)[None]
    out = F.resample(tone, rate, target)
    assert out.shape == (1, target)
    spectrum = torch.fft.rfft(out[0]).abs()
    peak_hz = int(spectrum.argmax()) * target / out.shape[1]
    assert abs(peak_hz - hz) <= 1.0

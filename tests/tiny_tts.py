"""Test helpers for speech synthesis: a tiny codec and a tiny untrained synthesiser saved as
checkpoints (tests/session_driver.py runs a session against them without a socket, on a
virtual clock).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream import registry


def voice_audio(seconds: float, seed: int) -> np.ndarray:
    """Something speech-like enough for a codec to fit: chirps in noise bursts, 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    tone = np.sin(2 * np.pi * (200 + 300 * np.sin(2 * np.pi * 0.7 * t)) * t)
    envelope = np.sin(2 * np.pi * 1.5 * t) ** 2
    return (0.2 * envelope * (tone + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


def save_tiny_tts(directory: Path, seed: int = 1, codebooks: int = 3, window: int = 16, hold_word: bool = True):
    """A tiny fitted codec (``tts_codec.*``) and a tiny random synthesiser (``dsm_tts.*``) in
    ``directory``; returns (model, codec)."""
    import torch

    from models.dsm_tts import DsmTts, DsmTtsConfig, save_dsm_tts
    from models.tts_codec import CodecConfig, fit_codec, save_codec
    from models.world_grammar import vocabulary

    torch.manual_seed(seed)
    codec, _ = fit_codec([voice_audio(2.0, s) for s in range(3)],
                         CodecConfig(codebooks=codebooks, codebook_size=16, components=16, gl_iterations=4),
                         iterations=3, seed=seed)
    save_codec(codec, directory)
    model = DsmTts(DsmTtsConfig(words=vocabulary(), codebooks=codebooks, codebook_size=16, d_model=32, layers=2,
                                heads=2, ff=64, window=window, max_padding=5,
                                hold_word=hold_word)).eval()
    save_dsm_tts(model, directory)
    return model, codec


def tts_model(directory: Path, *, slots: int = 4) -> registry.LoadedModel:
    """The checkpoints in ``directory`` as ``headway serve --tts DIR`` loads them."""
    return registry.load(f"tts:{directory}", registry.ModelOptions(tts_slots=slots))



"""Test helpers for the speech endpoints: a tiny untrained recogniser saved as a checkpoint and
test audio (tests/session_driver.py runs a session against it without a socket).

The untrained network's boundary and activity outputs are centred (as in test_dsm_asr) so that
it says words on noise: the comparisons compare words, whatever the weights mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream import registry

TINY = "tiny_asr"


def noise(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """Noise bursts: something for the features (and the words of an untrained net) to vary with."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    return (0.1 * rng.standard_normal(n) * np.sin(np.linspace(0, 40 * seconds / 6, n)) ** 2).astype(np.float32)


def save_tiny_asr(directory: Path, seed: int = 1):
    """A small random DsmAsr in ``directory/tiny_asr.*``; returns the model (eval mode)."""
    import torch

    from models.audio_frames import whole_frames
    from models.dsm_asr import DsmAsr, DsmAsrConfig, save_dsm_asr
    from models.dsm_streams import BOUNDARY, PAD
    from models.world_grammar import vocabulary

    torch.manual_seed(seed)
    model = DsmAsr(DsmAsrConfig(words=vocabulary(), d_model=32, layers=2, heads=2, ff=64, window=8)).eval()
    frames = torch.from_numpy(whole_frames(noise(6.0, 0)))[None]
    with torch.no_grad():
        logits, activity = model(model.frame_features(frames), torch.full(frames.shape[:2], PAD))
        model.text_head.bias[BOUNDARY] -= (logits[0, :, BOUNDARY] - logits[0, :, PAD]).median()
        model.activity_head.bias -= activity.median()
    save_dsm_asr(model, directory, TINY)
    return model


def asr_model(directory: Path, *, slots: int = 4, buffer_s: float = 10.0, max_batch: int = 64) -> registry.LoadedModel:
    """The checkpoint in ``directory`` as ``headway serve --asr`` loads it."""
    options = registry.ModelOptions(asr_slots=slots, asr_buffer_s=buffer_s, max_batch_size=max_batch)
    return registry.load(f"asr:{directory / (TINY + '.json')}", options)


def offline_words(model, audio16: np.ndarray) -> list[tuple[str, float, float]]:
    """(text, start, end) of the offline decode of 16 kHz audio, flushed, rounded as sessions round."""
    return [(w.text, round(w.start_s, 3), round(w.end_s, 3)) for w in model.offline_decode(audio16)]



"""Specification of the streaming resampler: audio arriving in chunks of any size gives the
samples torchaudio gives the whole recording, at every rate a client may send."""

import numpy as np
import pytest

from models.audio_resample import StreamingResampler, resample


def streamed(resampler: StreamingResampler, audio: np.ndarray, sizes, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out, at = [], 0
    while at < len(audio):
        n = int(rng.choice(sizes))
        out.append(resampler.push(audio[at: at + n]))
        at += n
    out.append(resampler.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100, 48000])
def test_chunks_of_any_size_resample_to_what_torchaudio_gives_the_whole_recording(rate, one_torch_thread):
    audio = (0.3 * np.random.default_rng(rate).standard_normal(int(1.3 * rate) + 7)).astype(np.float32)
    whole = resample(audio, rate, 16000)
    chunked = streamed(StreamingResampler(rate, 16000), audio, [1, 3, 77, 511, 1920, 4001], seed=rate)
    assert len(chunked) == len(whole)
    assert np.allclose(chunked, whole, atol=1e-6)


def test_after_a_flush_the_next_audio_is_a_recording_of_its_own(one_torch_thread):
    a, b = (np.random.default_rng(s).standard_normal(30_000).astype(np.float32) * 0.2 for s in (1, 2))
    r = StreamingResampler(44100, 16000)
    first = np.concatenate([r.push(a), r.flush()])
    second = np.concatenate([r.push(b), r.flush()])
    assert np.allclose(first, resample(a, 44100, 16000), atol=1e-6)
    assert np.allclose(second, resample(b, 44100, 16000), atol=1e-6)


def test_the_resampler_holds_back_only_its_look_ahead(one_torch_thread):
    r = StreamingResampler(48000, 16000)
    for _ in range(50):
        r.push(np.zeros(480, np.float32))
        assert r.pending <= r.width + 3 + 480

"""Specification of the batched voice-activity detector: the silero-vad package's own model,
loaded offline from the package, stepped per slot over 80 ms frames."""

import numpy as np
import pytest
import torch

from models.vad import SileroVad, silero_model_path


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Half a second of silence, a sentence said by espeak-ng (made now), silence to the end."""
    from clients.synthesizers import Espeak
    from models.audio_resample import resample

    rendering = Espeak().synthesize("go to the red cube please".split(), "en", 1.0, 1.0)

    voice = resample(rendering.audio, rendering.sample_rate, 16000)
    out = np.zeros(int(seconds * 16000), np.float32)
    out[8000: 8000 + len(voice)] = voice[: len(out) - 8000]
    return out


@pytest.fixture(scope="module")
def vad(one_torch_thread):
    return SileroVad()


def test_the_model_ships_in_the_package_and_loads_without_a_network():
    assert silero_model_path().is_file()


def test_each_slot_hears_what_the_package_model_hears_on_its_audio_alone(vad):
    audio = speech_like(3.2, 0)  # 40 frames = 100 chunks of 512
    package = torch.jit.load(str(silero_model_path()))
    package.reset_states()
    with torch.no_grad():
        chunks = [float(package(torch.from_numpy(audio[k * 512:(k + 1) * 512]), 16000)) for k in range(len(audio) // 512)]
    per_frame = [max(chunks[k] for k in range(len(chunks)) if f * 1280 < (k + 1) * 512 <= (f + 1) * 1280)
                 for f in range(len(audio) // 1280)]
    slots = vad.new_slots(3)
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(audio.reshape(-1, 1280))
    heard = []
    for frame in frames:  # slot 1 hears the audio; slot 2 something else, now and then; slot 0 idles
        batch = torch.zeros(3, 1280)
        batch[1], batch[2] = frame, torch.randn(1280) * 0.1
        heard.append(float(vad.step(slots, batch, torch.tensor([False, True, bool(rng.random() < 0.5)]))[1]))
    assert np.allclose(heard, per_frame, atol=1e-5)
    assert max(heard) > 0.9 and min(heard[:5]) < 0.1  # speech is heard, the leading silence is not


def test_idle_slots_are_untouched_and_a_reset_slot_starts_fresh(vad):
    audio = torch.from_numpy(speech_like(1.6, 1).reshape(-1, 1280))
    slots = vad.new_slots(2)
    for frame in audio[:7]:
        vad.step(slots, torch.stack([frame, frame]), torch.tensor([True, True]))
    before = (slots.h[0].clone(), slots.c[0].clone(), slots.context[0].clone())
    vad.step(slots, torch.stack([audio[7], audio[7]]), torch.tensor([False, True]))
    assert all(torch.equal(a, b) for a, b in zip(before, (slots.h[0], slots.c[0], slots.context[0])))
    slots.reset(1)
    fresh = vad.new_slots(1)
    for frame in audio[:5]:
        a = vad.step(slots, torch.stack([frame, frame]), torch.tensor([False, True]))[1]
        b = vad.step(fresh, frame[None], torch.tensor([True]))[0]
        assert float(a) == float(b)

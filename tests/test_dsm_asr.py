"""Specification of the DSM recogniser's network: streaming equals offline, idle slots are
untouched, the KV cache is bounded. An untrained network with a small attention window is
enough: these are properties of the computation, whatever the weights say."""

import numpy as np
import pytest
import torch

from models.audio_frames import FRAME_SAMPLES, FrameAssembler, LogMelFrames, tails_of, whole_frames
from models.dsm_asr import DsmAsr, DsmAsrConfig, load_dsm_asr, save_dsm_asr
from models.dsm_asr_training import transcribe_batched
from models.dsm_streams import BOUNDARY, PAD, WordDecoder, WordEnded
from models.world_grammar import vocabulary

WINDOW = 8


def noise(seconds: float, seed: int) -> np.ndarray:
    """Noise bursts: something for the features to vary with."""
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000)) * np.sin(np.linspace(0, 40, int(seconds * 16000))) ** 2
            ).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    """Untrained, its boundary and activity outputs centred so that it starts a word on about
    half the frames and its activity crosses 0.5 often: the comparisons compare words."""
    torch.manual_seed(0)
    model = DsmAsr(DsmAsrConfig(words=vocabulary(), d_model=32, layers=2, heads=2, ff=64, window=WINDOW)).eval()
    frames = torch.from_numpy(whole_frames(noise(6.0, 0)))[None]
    with torch.no_grad():
        logits, activity = model(model.frame_features(frames), torch.full(frames.shape[:2], PAD))
        model.text_head.bias[BOUNDARY] -= (logits[0, :, BOUNDARY] - logits[0, :, PAD]).median()
        model.activity_head.bias -= activity.median()
    return model


def stream(model, audios, chunk_sizes, seed=0):
    """Each audio fed in chunks of random sizes from ``chunk_sizes`` into its own slot of one
    slot table (slot i+1; slot 0 stays idle), frames stepping whenever any slot has one ready;
    then flushed. Returns the word events per audio and the steps' active counts."""
    rng = np.random.default_rng(seed)
    n = len(audios)
    slots = model.new_slots(n + 1)
    assemblers = [FrameAssembler() for _ in audios]
    decoders = [WordDecoder(model.tokenizer, model.config.tau) for _ in audios]
    ready = [[] for _ in audios]
    events = [[] for _ in audios]
    positions = [0] * n
    flushed = [0] * n
    while True:
        for i, audio in enumerate(audios):
            if positions[i] < len(audio):
                size = int(rng.choice(chunk_sizes))
                ready[i].extend(assemblers[i].push(audio[positions[i]: positions[i] + size]))
                positions[i] += size
            elif flushed[i] == 0:
                ready[i].extend(assemblers[i].flush())
                ready[i].extend(np.zeros((model.config.flush_frames, FRAME_SAMPLES), np.float32))
                flushed[i] = 1
        if not any(ready) and all(flushed):
            break
        frames = torch.zeros(n + 1, FRAME_SAMPLES)
        active = torch.zeros(n + 1, dtype=torch.bool)
        for i in range(n):
            if ready[i] and rng.random() < 0.7:  # a slot with a frame may still sit out this step
                frames[i + 1] = torch.from_numpy(ready[i].pop(0))
                active[i + 1] = True
        out = model.step(slots, frames, active)
        for i in range(n):
            if active[i + 1]:
                events[i].extend(decoders[i].feed(int(out.tokens[i + 1]), float(out.activity[i + 1])))
    for i in range(n):
        events[i].extend(decoders[i].finish())
    return events


def test_the_untrained_network_says_words_so_the_comparisons_below_compare_something(model):
    assert len(model.offline_decode(noise(4.0, 1))) >= 5


def test_streaming_in_chunks_of_any_size_beside_other_streams_gives_the_offline_decode(model):
    audios = [noise(3.1, 1), noise(5.3, 2), noise(0.7, 3)]
    streamed = stream(model, audios, chunk_sizes=[1, 7, 333, 1279, 1280, 1281, 4000])
    for audio, events in zip(audios, streamed):
        assert events == model.offline_events(audio)


def test_the_teacher_forced_forward_pass_computes_what_the_steps_compute(model):
    audio = noise(3 * WINDOW * 0.08, 4)  # three windows long: the cache wraps around
    frames = torch.from_numpy(whole_frames(audio))
    slots = model.new_slots(1)
    one = torch.ones(1, dtype=torch.bool)
    tokens, activity = [], []
    for t in range(len(frames)):
        out = model.step(slots, frames[t:t + 1], one)
        tokens.append(int(out.tokens[0]))
        activity.append(float(out.activity[0]))
    previous = torch.tensor([[PAD] + tokens[:-1]])
    with torch.no_grad():
        logits, activity_logits = model(model.frame_features(frames[None]), previous)
    allowed = model.allowed[(previous[0] != BOUNDARY).long()]
    assert logits[0].masked_fill(~allowed, float("-inf")).argmax(-1).tolist() == tokens
    assert torch.allclose(torch.sigmoid(activity_logits[0]), torch.tensor(activity), atol=1e-5)


def test_features_of_a_frame_read_only_its_samples_and_the_tail_before_it():
    features = LogMelFrames()
    frames = torch.from_numpy(whole_frames(noise(1.0, 5)))
    whole = features(frames, tails_of(frames))
    alone = features(frames[7:8], frames[6:7, -240:])
    assert torch.allclose(whole[7:8], alone, atol=1e-5)


def test_a_step_leaves_the_idle_slots_state_bit_for_bit_as_it_was(model):
    slots = model.new_slots(4)
    frames = torch.from_numpy(whole_frames(noise(1.0, 6)))[:4]
    for t in range(3):  # every slot has some history
        model.step(slots, frames, torch.ones(4, dtype=torch.bool))
    before = {name: getattr(slots, name).clone() for name in ("keys", "values", "positions", "frame", "previous", "tail")}
    active = torch.tensor([False, True, False, True])
    out = model.step(slots, torch.randn(4, FRAME_SAMPLES), active)
    for name, old in before.items():
        new = getattr(slots, name)
        idle_old, idle_new = (old[:, ~active], new[:, ~active]) if name in ("keys", "values") else (old[~active], new[~active])
        assert torch.equal(idle_old, idle_new), name
    assert out.tokens[~active].tolist() == [-1, -1] and out.frame[active].tolist() == [3, 3]


def test_the_kv_cache_keeps_its_size_and_only_the_last_window_of_frames(model):
    slots = model.new_slots(2)
    shapes = [tuple(t.shape) for t in (slots.keys, slots.values, slots.positions)]
    frames = torch.from_numpy(whole_frames(noise(10 * WINDOW * 0.08, 7)))
    both = torch.ones(2, dtype=torch.bool)
    for t in range(len(frames)):
        model.step(slots, frames[t:t + 1].expand(2, -1), both)
    assert [tuple(t.shape) for t in (slots.keys, slots.values, slots.positions)] == shapes
    assert sorted(slots.positions[0].tolist()) == list(range(len(frames) - WINDOW, len(frames)))


def test_a_reset_slot_starts_a_fresh_stream(model):
    audio = noise(2.0, 8)
    slots = model.new_slots(1)
    one = torch.ones(1, dtype=torch.bool)
    for frame in torch.from_numpy(whole_frames(noise(1.5, 9))):
        model.step(slots, frame[None], one)
    slots.reset(0)
    decoder = WordDecoder(model.tokenizer, model.config.tau)
    events = []
    for frame in torch.from_numpy(whole_frames(audio, model.config.flush_frames)):
        out = model.step(slots, frame[None], one)
        events.extend(decoder.feed(int(out.tokens[0]), float(out.activity[0])))
    events.extend(decoder.finish())
    assert events == model.offline_events(audio)


def test_batched_transcription_gives_each_file_its_offline_decode(model):
    audios = [noise(1.3, 10), noise(2.9, 11), noise(0.2, 12)]
    assert transcribe_batched(model, audios, batch_size=2) == [model.offline_decode(a) for a in audios]


def test_a_saved_recogniser_loads_back_and_decodes_the_same(model, tmp_path):
    save_dsm_asr(model, tmp_path, "tiny")
    loaded = load_dsm_asr(tmp_path, "tiny")
    assert loaded.config == model.config
    audio = noise(2.0, 13)
    assert loaded.offline_decode(audio) == model.offline_decode(audio)


def test_silence_alone_gives_no_words_from_a_network_that_learned_to_pad(model):
    quiet = DsmAsr(model.config).eval()
    with torch.no_grad():
        quiet.text_head.bias[PAD] = 100.0  # a network that always pads
    assert quiet.offline_decode(np.zeros(16000, np.float32)) == []
    assert all(isinstance(w, WordEnded) for w in model.offline_decode(noise(1.0, 14)))


def test_the_frame_assembler_loses_nothing_and_holds_less_than_a_frame():
    audio = noise(1.0, 15)
    assembler = FrameAssembler()
    frames, at = [], 0
    for size in [1, 1279, 3, 2560, 777, 5000, 100000]:
        frames.extend(assembler.push(audio[at: at + size]))
        at += size
        assert assembler.pending < FRAME_SAMPLES
    frames.extend(assembler.flush())
    assert np.array_equal(np.concatenate(frames), whole_frames(audio).reshape(-1))
    assert assembler.pending == 0 and len(assembler.flush()) == 0

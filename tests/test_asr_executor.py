"""Specification of the DSM recogniser's executor on the engine's stepped lane: each stream
holds a slot, every batch is one masked step, and what a stream hears through the engine is
the offline decode of its audio."""

import asyncio

import numpy as np
import pytest
import torch

from models.audio_frames import FRAME_SAMPLES, whole_frames
from models.dsm_asr import DsmAsr, DsmAsrConfig, save_dsm_asr
from models.dsm_streams import BOUNDARY, PAD, WordEnded
from models.world_grammar import vocabulary
from stream.asr_models import DsmAsrExecutor, asr_step_cost, dsm_asr_executor_spec
from stream.engine import Engine, Lane
from stream.errors import ProtocolError
from stream.hosts import ProcessHost


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    return (0.1 * rng.standard_normal(n) * np.sin(np.linspace(0, 40, n)) ** 2).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained recogniser whose outputs are centred so that it says words (see test_dsm_asr)."""
    torch.manual_seed(1)
    model = DsmAsr(DsmAsrConfig(words=vocabulary(), d_model=32, layers=2, heads=2, ff=64, window=8)).eval()
    frames = torch.from_numpy(whole_frames(noise(6.0, 0)))[None]
    with torch.no_grad():
        logits, activity = model(model.frame_features(frames), torch.full(frames.shape[:2], PAD))
        model.text_head.bias[BOUNDARY] -= (logits[0, :, BOUNDARY] - logits[0, :, PAD]).median()
        model.activity_head.bias -= activity.median()
    directory = tmp_path_factory.mktemp("asr")
    save_dsm_asr(model, directory, "tiny")
    return directory, model


def offline(model, audio) -> list[dict]:
    events = []
    for e in model.offline_events(audio):
        if isinstance(e, WordEnded):
            events.append({"type": "word_ended", "text": e.text, "start_s": e.start_s, "end_s": e.end_s})
        else:
            events.append({"type": "word_started", "text": e.text, "start_s": e.start_s})
    return events


async def serve_stream(engine, session, audio, flush_frames) -> tuple[list[dict], list[int]]:
    """Every frame of ``audio`` and the flush submitted as steps, one in flight at a time (a
    client far faster than real time): the word events heard and each step's batch size."""
    frames = whole_frames(audio, flush_frames)
    events, sizes = [], []
    for t, frame in enumerate(frames):
        result = await engine.submit(session, {"pcm": frame, "end": t == len(frames) - 1}, budget_s=30, lane=Lane.STEP)
        assert result.output["frame"] == t
        events.extend(result.output["words"])
        sizes.append(result.batch_size)
    return events, sizes


async def started(executor_or_host, **options) -> Engine:
    engine = Engine("asr", executor_or_host, cost_of=asr_step_cost, **options)
    engine.start()
    await engine.ready()
    return engine


async def test_streams_stepped_together_through_the_engine_hear_their_offline_decodes(checkpoint):
    directory, model = checkpoint
    # a full batch (3) runs at once; a smaller one waits up to 20 ms for its companions
    engine = await started(DsmAsrExecutor(slots=4, max_batch_size=3, checkpoint_dir=str(directory), name="tiny"),
                           batch_window_s=0.02)
    audios = [noise(3.0, 1), noise(4.2, 2), noise(1.1, 3)]
    sessions = [engine.open_session(stepped=True) for _ in audios]
    served = await asyncio.gather(*(serve_stream(engine, s, a, model.config.flush_frames)
                                    for s, a in zip(sessions, audios)))
    for audio, (events, _) in zip(audios, served):
        assert events == offline(model, audio) and len(events) >= 4
    assert served[2][1] == [3] * len(served[2][1])  # while all three streams run, each step is all three
    await engine.stop()


async def test_a_stream_past_the_slot_count_is_refused_at_capacity(checkpoint):
    directory, _ = checkpoint
    engine = await started(DsmAsrExecutor(slots=2, checkpoint_dir=str(directory), name="tiny"))
    engine.open_session(stepped=True), engine.open_session(stepped=True)
    with pytest.raises(ProtocolError) as refused:
        engine.open_session(stepped=True)
    assert refused.value.code == "at_capacity"
    await engine.stop()


async def test_a_slot_freed_by_a_closed_stream_serves_the_next_stream_from_scratch(checkpoint):
    directory, model = checkpoint
    engine = await started(DsmAsrExecutor(slots=1, checkpoint_dir=str(directory), name="tiny"))
    first = engine.open_session(stepped=True)
    await serve_stream(engine, first, noise(2.0, 4), 0)  # leaves history in the slot, no flush
    engine.close_session(first)
    second = engine.open_session(stepped=True)
    assert second.slot == first.slot
    audio = noise(2.5, 5)
    events, _ = await serve_stream(engine, second, audio, model.config.flush_frames)
    assert events == offline(model, audio)
    await engine.stop()


async def test_the_executor_in_another_process_serves_the_same_words(checkpoint):
    directory, model = checkpoint
    host = ProcessHost(dsm_asr_executor_spec(slots=2, checkpoint_dir=str(directory), name="tiny"))
    engine = await started(host, max_batch_size=2, slots=2)
    audio = noise(2.0, 6)
    events, _ = await serve_stream(engine, engine.open_session(stepped=True), audio, model.config.flush_frames)
    assert events == offline(model, audio)
    await engine.stop()


def test_a_step_of_one_slot_twice_in_a_batch_is_refused(checkpoint):
    from stream.hosts import RunBatch, WorkItem

    directory, _ = checkpoint
    executor = DsmAsrExecutor(slots=2, checkpoint_dir=str(directory), name="tiny")
    frame = np.zeros(FRAME_SAMPLES, np.float32)
    with pytest.raises(ValueError, match="slot of its own"):
        executor.run(RunBatch(0, [WorkItem({"pcm": frame}, slot=0), WorkItem({"pcm": frame}, slot=0)], [True, False]))


def threads_seen_by_a_new_thread(action=None) -> int:
    """torch's thread count as an engine thread started now sees it (after ``action``, run in it)."""
    import threading

    seen = []
    thread = threading.Thread(target=lambda: (action and action(), seen.append(torch.get_num_threads())))
    thread.start()
    thread.join()
    return seen[0]


def test_building_the_executor_leaves_the_thread_count_of_later_engines_alone(checkpoint):
    # torch's count is OpenMP's global default: one executor that set 1 gave every engine
    # started after it one thread (a chat model's prefill ran at half speed beside the recogniser).
    before = threads_seen_by_a_new_thread()
    try:
        threads_seen_by_a_new_thread(lambda: torch.set_num_threads(2))  # a known count that is not 1
        threads_seen_by_a_new_thread(lambda: DsmAsrExecutor(2, checkpoint_dir=str(checkpoint[0]), name="tiny"))
        assert threads_seen_by_a_new_thread() == 2
    finally:
        threads_seen_by_a_new_thread(lambda: torch.set_num_threads(before))

"""Serving the DSM speech recogniser on the engine's stepped lane (``Lane.STEP``).

:class:`DsmAsrExecutor` is a stepped model: each stream holds one slot of the executor (its
KV cache, the sample tail its features read, its word decoder) from ``open_slot`` to
``close_slot``; a batch is one frame of each of its streams, run as one masked batched step
(``models.dsm_asr.DsmAsr.step``), so every active stream advances one 80 ms frame per batch
and a stream with frames in hand catches up one batch at a time, batched with the others.

One step's input (``WorkItem.inputs``): ``{"pcm": float32 [1280]}``, one 80 ms frame at
16 kHz (the session resamples and cuts frames: ``models.audio_frames.FrameAssembler``), and
``"end": True`` on a stream's last frame (after its flush frames) to end its open word. A
flush is the session feeding ``flush_frames`` frames of silence as fast as the engine takes
them. One step's output, plain types so that it crosses a process boundary::

    {"frame": 41, "token": 3, "activity": 0.02,
     "words": [{"type": "word_started", "text": "red", "start_s": 2.64},
               {"type": "word_ended", "text": "red", "start_s": 2.64, "end_s": 2.96}]}

``frame`` counts the stream's frames (0 first); a word's times are seconds of the stream's
audio, and a word is known ``τ + 1`` frames after it starts at the earliest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream.hosts import ExecutorSpec, RunBatch, WorkItem
from stream.latency import CostKey

FRAME_SAMPLES = 1280  # models.audio_frames.FRAME_SAMPLES, without importing torch here


class DsmAsrExecutor:
    """Batched masked steps of the recogniser in ``checkpoint_dir``/``name``; runs on the
    engine's worker thread (or in a host process) only."""

    def __init__(self, slots: int, max_batch_size: int | None = None, checkpoint_dir: str | None = None,
                 name: str = "dsm_asr", threads: int = 1):
        import torch

        from models.dsm_asr import CHECKPOINT_DIR, load_dsm_asr
        from models.dsm_streams import WordDecoder

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = load_dsm_asr(CHECKPOINT_DIR if checkpoint_dir is None else Path(checkpoint_dir), name)
        self.config = self.model.config
        self.slots = slots
        self.max_batch_size = min(max_batch_size or slots, slots)
        self.state = self.model.new_slots(slots)
        self._new_decoder = lambda: WordDecoder(self.model.tokenizer, self.config.tau)
        self.decoders = [self._new_decoder() for _ in range(slots)]
        self._frames = torch.zeros(slots, FRAME_SAMPLES)
        self.warm_up()

    def warm_up(self) -> None:
        """One step of one slot and of every slot, then fresh slots: the first calls of a
        torch model are slow, and a stream's first frames must not pay for them."""
        silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        for count in (1, self.slots):
            self.run(RunBatch(0, [WorkItem({"pcm": silence}, slot=slot) for slot in range(count)],
                              [slot < count for slot in range(self.slots)]))
        for slot in range(self.slots):
            self.open_slot(slot)

    def open_slot(self, slot: int) -> None:
        self.state.reset(slot)
        self.decoders[slot] = self._new_decoder()

    def close_slot(self, slot: int) -> None:
        self.open_slot(slot)  # nothing of a closed stream stays behind

    def run(self, batch: RunBatch) -> list[dict[str, Any]]:
        torch = self.torch
        active = torch.zeros(self.slots, dtype=torch.bool)
        for item in batch.items:
            if item.slot is None or active[item.slot]:
                raise ValueError(f"a step needs a slot of its own, not {item.slot}")
            self._frames[item.slot] = torch.from_numpy(np.asarray(item.inputs["pcm"], dtype=np.float32))
            active[item.slot] = True
        out = self.model.step(self.state, self._frames, active)
        results = []
        for item in batch.items:
            slot = item.slot
            events = self.decoders[slot].feed(int(out.tokens[slot]), float(out.activity[slot]))
            if item.inputs.get("end"):
                events += self.decoders[slot].finish()
            results.append({"frame": int(out.frame[slot]), "token": int(out.tokens[slot]),
                            "activity": float(out.activity[slot]), "words": [_event(e) for e in events]})
        return results


def _event(event) -> dict[str, Any]:
    from models.dsm_streams import WordEnded

    if isinstance(event, WordEnded):
        return {"type": "word_ended", "text": event.text, "start_s": event.start_s, "end_s": event.end_s}
    return {"type": "word_started", "text": event.text, "start_s": event.start_s}


def asr_step_cost(batch) -> CostKey:
    """A batch's cost: its number of streams stepped (every step is one frame)."""
    return CostKey("asr_step", len(batch))


def dsm_asr_executor_spec(slots: int, max_batch_size: int | None = None, checkpoint_dir: str | None = None,
                          name: str = "dsm_asr") -> ExecutorSpec:
    """How a host builds the executor (in the worker thread, or in another process)."""
    return ExecutorSpec("stream.asr_models:DsmAsrExecutor",
                        {"slots": slots, "max_batch_size": max_batch_size, "checkpoint_dir": checkpoint_dir,
                         "name": name})

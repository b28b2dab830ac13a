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
them. Beside the recogniser, the same batch steps each stream's voice-activity detector
(:class:`models.vad.SileroVad`, slots of its own). One step's output, plain types so that it
crosses a process boundary::

    {"frame": 41, "token": 3, "activity": 0.02, "vad": 0.97,
     "words": [{"type": "word_started", "text": "red", "start_s": 2.64},
               {"type": "word_ended", "text": "red", "start_s": 2.64, "end_s": 2.96}]}

``frame`` counts the stream's frames (0 first); a word's times are seconds of the stream's
audio, and a word is known ``τ + 1`` frames after it starts at the earliest; ``vad`` is the
probability that the frame holds speech.

Registered models (:mod:`stream.registry`): ``dsm_asr``, the shipped checkpoint, and
``asr:PATH`` for another one (a directory holding ``dsm_asr.json``/``.safetensors``, or the path
of either file). ``headway serve`` serves the shipped one by default when it is there
(``--asr PATH`` another, ``--asr none`` none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream.hosts import ExecutorSpec, RunBatch, WorkItem
from stream.latency import CostKey
from stream.protocol import ObservationSpec
from stream.registry import AsrAudio, KnownModel, LoadedModel, ModelFactory, ModelOptions, register_resolver

FRAME_SAMPLES = 1280  # models.audio_frames.FRAME_SAMPLES, without importing torch here
SAMPLE_RATE = 16_000  # models.audio_frames.SAMPLE_RATE
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models" / "checkpoints"  # models.dsm_asr.CHECKPOINT_DIR
SHIPPED_NAME = "dsm_asr"
PREFIX = "asr:"


class DsmAsrExecutor:
    """Batched masked steps of the recogniser in ``checkpoint_dir``/``name``; runs on the
    engine's worker thread (or in a host process) only."""

    def __init__(self, slots: int, max_batch_size: int | None = None, checkpoint_dir: str | None = None,
                 name: str = "dsm_asr", threads: int | None = None):
        import torch

        from models.dsm_asr import CHECKPOINT_DIR, load_dsm_asr
        from models.dsm_streams import WordDecoder
        from models.vad import SileroVad

        # Only when asked: torch's thread count is the process's (OpenMP's global default, which
        # every engine thread started later inherits); a 1 here halved a chat model's prefill.
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.model = load_dsm_asr(CHECKPOINT_DIR if checkpoint_dir is None else Path(checkpoint_dir), name)
        self.config = self.model.config
        self.slots = slots
        self.max_batch_size = min(max_batch_size or slots, slots)
        self.state = self.model.new_slots(slots)
        self._new_decoder = lambda: WordDecoder(self.model.tokenizer, self.config.tau)
        self.decoders = [self._new_decoder() for _ in range(slots)]
        self.vad = SileroVad()
        self.vad_state = self.vad.new_slots(slots)
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
        self.vad_state.reset(slot)
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
        vad = self.vad.step(self.vad_state, self._frames, active)
        # whole tensors to lists once: indexing a tensor per item costs microseconds each
        tokens, activity, frames, vad = out.tokens.tolist(), out.activity.tolist(), out.frame.tolist(), vad.tolist()
        results = []
        for item in batch.items:
            slot = item.slot
            events = self.decoders[slot].feed(tokens[slot], activity[slot])
            if item.inputs.get("end"):
                events += self.decoders[slot].finish()
            results.append({"frame": frames[slot], "token": tokens[slot], "activity": activity[slot],
                            "vad": round(vad[slot], 4), "words": [_event(e) for e in events]})
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


def asr_factory(directory: Path, name: str = SHIPPED_NAME, model_name: str | None = None) -> ModelFactory:
    """A factory serving the recogniser ``directory/name`` (its config is read here, the weights
    where the executor is built)."""
    directory = Path(directory).expanduser().resolve()

    def factory(options: ModelOptions) -> LoadedModel:
        import json

        config_path = directory / f"{name}.json"
        if not config_path.is_file() or not (directory / f"{name}.safetensors").is_file():
            raise KeyError(f"no speech recogniser {name!r} in {str(directory)!r} (it needs {name}.json and "
                           f"{name}.safetensors, written by headway train asr)")
        config = json.loads(config_path.read_text())
        tau = int(config.get("tau", 6))
        slots = options.asr_slots
        served = model_name or name
        audio = AsrAudio(sample_rate=SAMPLE_RATE, frame_samples=FRAME_SAMPLES, tau=tau, flush_frames=tau + 2,
                         max_buffer_s=options.asr_buffer_s)
        return LoadedModel(
            name=served,
            executor_spec=dsm_asr_executor_spec(slots, min(slots, options.max_batch_size), str(directory), name),
            max_batch_size=min(slots, options.max_batch_size),
            metadata={"type": "metadata", "model": served, "kind": "asr", "sample_rate": SAMPLE_RATE,
                      "frame_ms": 1000 * FRAME_SAMPLES // SAMPLE_RATE, "tau_frames": tau,
                      "words": len(config.get("words", [])), "checkpoint": str(config_path)},
            observation_spec=ObservationSpec({}),
            reply_fields=lambda output: output,
            latency_prior_s=0.005,
            cost_of=asr_step_cost,
            slots=slots,
            asr=audio,
        )

    return factory


def checkpoint_of(path: str | Path) -> tuple[Path, str]:
    """(directory, name) of a recogniser given as a directory (``dsm_asr`` in it) or as the path
    of its ``.json`` or ``.safetensors`` file."""
    path = Path(path).expanduser()
    if path.suffix in (".json", ".safetensors"):
        return path.parent, path.stem
    return path, SHIPPED_NAME


def shipped_checkpoint_present() -> bool:
    return (SHIPPED_DIR / f"{SHIPPED_NAME}.json").is_file() and (SHIPPED_DIR / f"{SHIPPED_NAME}.safetensors").is_file()


def _resolve(name: str) -> ModelFactory | None:
    if name == SHIPPED_NAME:
        return asr_factory(SHIPPED_DIR, SHIPPED_NAME)
    if not name.startswith(PREFIX):
        return None
    directory, stem = checkpoint_of(name[len(PREFIX):])
    return asr_factory(directory, stem)


def _listing() -> list[KnownModel]:
    return [KnownModel(SHIPPED_NAME, "the shipped DSM speech recogniser (models/checkpoints/dsm_asr.*), at /v1/asr and "
                                     "/api/asr-streaming; headway serve serves it by default when it is there"),
            KnownModel(PREFIX + "PATH", "a DSM speech recogniser checkpoint (headway train asr --out PATH), "
                                        "served at /v1/asr and /api/asr-streaming (same as --asr PATH)")]


register_resolver(_resolve, _listing)

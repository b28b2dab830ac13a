"""Serving the DSM speech synthesiser on the engine's stepped lane (``Lane.STEP``).

:class:`DsmTtsExecutor` is a stepped model: each stream holds one slot from ``open_slot`` to
``close_slot`` -- its KV cache and word queue (``models.dsm_tts.TtsRunner``), its Griffin-Lim
state (``models.tts_codec.StreamingGriffinLim``) and its resampler to the rate the client
asked for (``models.audio_resample.StreamingResampler``). A batch is one step of each of its
streams, run as one masked batched step, then one batched vocoder step over the streams that
completed an audio frame.

One step's input (``WorkItem.inputs``), plain types::

    {"words": ["go", "to"], "end": False, "rate": 24000}

``words``: words that arrived since the last step (queued before stepping; words outside the
vocabulary are skipped and reported); ``end``: the text is over; ``rate``: the output rate
(read on a stream's first step). A stream whose queue cannot feed the step yet (the model
asked for the next word and fewer than ``lookahead`` more are queued) does not step. Output::

    {"stepped": True, "waiting": False, "pcm": float32 [n], "words": [["go", 0.08]],
     "skipped": [], "done": False, "frames": 3}

``pcm``: the audio completed by this step at the asked rate (one 80 ms frame once the delays
are filled, none before); ``words``: the words fed this step and the time (seconds of the
stream's audio) each starts; ``waiting``: the stream needs more words (or ``end``) to go on;
``done``: its last audio frame was in this step's ``pcm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream.hosts import ExecutorSpec, RunBatch, WorkItem
from stream.latency import CostKey
from stream.registry import KnownModel, LoadedModel, ModelFactory, ModelOptions, TtsVoice, register_resolver
from stream.protocol import ObservationSpec

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models" / "checkpoints"
SHIPPED_NAME = "dsm_tts"
CODEC_NAME = "tts_codec"
PREFIX = "tts:"
MODEL_RATE = 16_000
FRAME_S = 0.08


class DsmTtsExecutor:
    """Batched masked steps of the synthesiser ``checkpoint_dir/name`` and its codec; runs on
    the engine's worker thread (or in a host process) only."""

    def __init__(self, slots: int, checkpoint_dir: str | None = None, name: str = SHIPPED_NAME,
                 codec_name: str = CODEC_NAME, threads: int | None = None, warm: bool = True):
        import torch

        from models.dsm_tts import TtsRunner, load_dsm_tts
        from models.tts_codec import StreamingGriffinLim, load_codec

        # Only when asked: torch's thread count is the process's (OpenMP's global default, which
        # every engine thread started later inherits); a 1 here halved a chat model's prefill.
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        directory = SHIPPED_DIR if checkpoint_dir is None else Path(checkpoint_dir)
        self.model = load_dsm_tts(directory, name)
        self.codec = load_codec(directory, codec_name)
        self.slots = slots
        self.runner = TtsRunner(self.model, slots)
        c = self.codec.config
        self.vocoder = StreamingGriffinLim(slots, c.gl_iterations, c.gl_context)
        self.resamplers: list[Any] = [None] * slots
        self.started = [False] * slots
        if warm:
            self.warm_up()

    def warm_up(self) -> None:
        """A whole short utterance in one slot, then in every slot: the first calls of a torch
        model are slow and a stream's first audio must not pay for them."""
        for count in (1, self.slots):
            rows = list(range(count))
            for slot in rows:
                self.open_slot(slot)
            inputs = {"words": self.model.config.words[:3], "end": True, "rate": 24_000}
            for _ in range(12):
                self.run(RunBatch(0, [WorkItem(inputs, slot=s) for s in rows], [s < count for s in range(self.slots)]))
                inputs = {}
        for slot in range(self.slots):
            self.open_slot(slot)

    def open_slot(self, slot: int) -> None:
        self.runner.open(slot)
        self.vocoder.reset(slot)
        self.resamplers[slot] = None
        self.started[slot] = False

    def close_slot(self, slot: int) -> None:
        self.open_slot(slot)  # nothing of a closed stream stays behind

    def run(self, batch: RunBatch) -> list[dict[str, Any]]:
        from models.audio_resample import StreamingResampler

        torch = self.torch
        results: dict[int, dict[str, Any]] = {}
        rows = []
        for item in batch.items:
            slot = item.slot
            if slot is None or slot in results:
                raise ValueError(f"a step needs a slot of its own, not {slot}")
            inputs = item.inputs or {}
            feeder = self.runner.feeders[slot]
            if not self.started[slot]:
                self.started[slot] = True
                self.resamplers[slot] = StreamingResampler(MODEL_RATE, int(inputs.get("rate", MODEL_RATE)))
            skipped = []
            for word in inputs.get("words", ()):
                if feeder.ended:
                    break
                if feeder.known(word):
                    feeder.push(word)
                else:
                    skipped.append(word)
            if inputs.get("end") and not feeder.ended:
                feeder.end()
            results[slot] = {"stepped": False, "waiting": False, "pcm": np.zeros(0, dtype=np.float32), "words": [],
                             "skipped": skipped, "done": False, "frames": 0}
            if feeder.ready():
                rows.append(slot)
            else:
                results[slot]["waiting"] = True
        if rows:
            steps = self.runner.step(rows)
            vocode = [(slot, s) for slot, s in zip(rows, steps) if len(s.codes)]
            audio: dict[int, np.ndarray] = {}
            if vocode:
                index = torch.tensor([slot for slot, _ in vocode])
                codes = torch.from_numpy(np.concatenate([s.codes[:1] for _, s in vocode]))
                mel = self.codec.decode_features(codes)
                pcm = self.vocoder.step(mel, index).numpy()
                for i, (slot, s) in enumerate(vocode):
                    audio[slot] = pcm[i]
            for slot, s in zip(rows, steps):
                out = results[slot]
                out["stepped"] = True
                pcm16 = audio.get(slot, np.zeros(0, dtype=np.float32))
                pcm = self.resamplers[slot].push(pcm16)
                if s.done:
                    pcm = np.concatenate([pcm, self.resamplers[slot].flush()])
                out["pcm"] = pcm.astype(np.float32)
                out["frames"] = int(len(pcm16) // 1280)
                out["words"] = [[w, round(f * FRAME_S, 3)] for w, f in s.words]
                out["done"] = s.done
                out["waiting"] = not s.done and not self.runner.feeders[slot].ready()
        return [results[item.slot] for item in batch.items]


def tts_step_cost(batch) -> CostKey:
    """A batch's cost: its number of streams stepped (every step is one frame)."""
    return CostKey("tts_step", len(batch))


def tts_factory(directory: Path, name: str = SHIPPED_NAME, model_name: str | None = None) -> ModelFactory:
    """A factory serving the synthesiser ``directory/name`` with the codec beside it."""
    directory = Path(directory).expanduser().resolve()

    def factory(options: ModelOptions) -> LoadedModel:
        import json

        needed = [directory / f"{name}.json", directory / f"{name}.safetensors", directory / f"{CODEC_NAME}.json",
                  directory / f"{CODEC_NAME}.safetensors"]
        missing = [str(p.name) for p in needed if not p.is_file()]
        if missing:
            raise KeyError(f"no speech synthesiser {name!r} in {str(directory)!r} (missing {', '.join(missing)}; "
                           "written by headway train codec and headway train tts)")
        config = json.loads(needed[0].read_text())
        slots = options.tts_slots
        served = model_name or name
        voice = TtsVoice(voice=config.get("voice", ""), sample_rate=MODEL_RATE, words=tuple(config["words"]),
                         lookahead=int(config.get("lookahead", 2)))
        return LoadedModel(
            name=served,
            executor_spec=ExecutorSpec("stream.tts_models:DsmTtsExecutor",
                                       {"slots": slots, "checkpoint_dir": str(directory), "name": name}),
            max_batch_size=min(slots, options.max_batch_size),
            metadata={"type": "metadata", "model": served, "kind": "tts", "voice": voice.voice,
                      "sample_rate": MODEL_RATE, "frame_ms": 80, "words": len(voice.words),
                      "checkpoint": str(needed[0])},
            observation_spec=ObservationSpec({}),
            reply_fields=lambda output: output,
            latency_prior_s=0.01,
            cost_of=tts_step_cost,
            slots=slots,
            tts=voice,
        )

    return factory


def shipped_checkpoint_present() -> bool:
    return all((SHIPPED_DIR / f"{n}.{ext}").is_file() for n in (SHIPPED_NAME, CODEC_NAME)
               for ext in ("json", "safetensors"))


def _resolve(name: str) -> ModelFactory | None:
    if name == SHIPPED_NAME:
        return tts_factory(SHIPPED_DIR, SHIPPED_NAME)
    if not name.startswith(PREFIX):
        return None
    return tts_factory(Path(name[len(PREFIX):]))


def _listing() -> list[KnownModel]:
    return [KnownModel(SHIPPED_NAME, "the shipped DSM speech synthesiser (models/checkpoints/dsm_tts.*, tts_codec.*), "
                                     "at /v1/tts and /api/tts_streaming; headway serve serves it by default when it "
                                     "is there"),
            KnownModel(PREFIX + "DIR", "a DSM speech synthesiser (dsm_tts.* and tts_codec.* in DIR), served at "
                                       "/v1/tts and /api/tts_streaming (same as --tts DIR)")]


register_resolver(_resolve, _listing)

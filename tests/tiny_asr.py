"""Test helpers for the speech endpoints: a tiny untrained recogniser saved as a checkpoint, test
audio, and a driver that runs a sans-I/O speech session against a real engine without a socket.

The untrained network's boundary and activity outputs are centred (as in test_dsm_asr) so that
it says words on noise: the comparisons compare words, whatever the weights mean.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream import registry
from stream.engine import Engine
from stream.errors import ProtocolError
from stream.session_actions import CancelQueued, Close, Send, Submit

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


@dataclass
class Driven:
    """What a driven session sent and how it ended."""

    messages: list[dict] = field(default_factory=list)
    closed: tuple[int, str] | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    def words(self) -> list[tuple[str, float, float]]:
        return [(m["text"], m["start"], m["end"]) for m in self.of_type("word_end")]


class SessionDriver:
    """Runs one sans-I/O session protocol against a real :class:`Engine` on this loop, the way
    the pump does (admission, submits, answers in the loop, sends decoded back to dicts)."""

    def __init__(self, engine: Engine, protocol: Any):
        self.engine = engine
        self.protocol = protocol
        self.out = Driven()
        self.pending: set[asyncio.Future] = set()
        self.ticket = None
        try:
            self.ticket = engine.open_session(stepped=True)
        except ProtocolError as exc:
            self._perform(protocol.refused(exc))
            return
        self._perform(protocol.opened())

    def send(self, frame: bytes | str) -> None:
        self._perform(self.protocol.received(frame, 0))

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until nothing the session submitted is outstanding."""
        async def idle():
            while self.pending:
                await asyncio.sleep(0.002)
        await asyncio.wait_for(idle(), timeout)

    def close(self) -> None:
        if self.ticket is not None:
            self.engine.close_session(self.ticket)

    def _perform(self, actions) -> None:
        from stream import wire

        for action in actions:
            if isinstance(action, Submit):
                future = self.engine.submit(self.ticket, action.inputs, budget_s=action.budget_s, lane=action.lane)
                self.pending.add(future)
                future.add_done_callback(lambda f, key=action.key: self._answered(key, f))
            elif isinstance(action, CancelQueued):
                self.engine.cancel_queued(self.ticket)
            elif isinstance(action, Send):
                frame = action.frame
                self.out.messages.append(json.loads(frame) if isinstance(frame, str) else wire.unpackb(frame))
            elif isinstance(action, Close):
                self.out.closed = (action.code, action.reason)

    def _answered(self, key: int, future: asyncio.Future) -> None:
        self.pending.discard(future)
        if future.cancelled():
            return
        outcome = future.exception() or future.result()
        self._perform(self.protocol.answered(key, outcome, 0))

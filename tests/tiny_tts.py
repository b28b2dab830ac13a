"""Test helpers for speech synthesis: a tiny codec and a tiny untrained synthesiser saved as
checkpoints, and a driver that runs a sans-I/O synthesis session against a real engine without
a socket, on a virtual clock (a ``Wake`` jumps the clock to its time), so that pacing is
exercised without waiting for it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from stream import registry
from stream.engine import Engine
from stream.errors import ProtocolError
from stream.session_actions import CancelQueued, Close, Send, Submit, Wake


def voice_audio(seconds: float, seed: int) -> np.ndarray:
    """Something speech-like enough for a codec to fit: chirps in noise bursts, 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    tone = np.sin(2 * np.pi * (200 + 300 * np.sin(2 * np.pi * 0.7 * t)) * t)
    envelope = np.sin(2 * np.pi * 1.5 * t) ** 2
    return (0.2 * envelope * (tone + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


def save_tiny_tts(directory: Path, seed: int = 1, codebooks: int = 3, window: int = 16):
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
                                heads=2, ff=64, window=window, max_padding=5)).eval()
    save_dsm_tts(model, directory)
    return model, codec


def tts_model(directory: Path, *, slots: int = 4) -> registry.LoadedModel:
    """The checkpoints in ``directory`` as ``headway serve --tts DIR`` loads them."""
    return registry.load(f"tts:{directory}", registry.ModelOptions(tts_slots=slots))


@dataclass
class Driven:
    messages: list[dict] = field(default_factory=list)  # control messages, decoded
    audio: list[bytes] = field(default_factory=list)  # binary audio frames (/v1/tts)
    events: list[tuple[int, str]] = field(default_factory=list)  # (clock ns, "audio"|message type)
    closed: tuple[int, str] | None = None

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]


class TtsDriver:
    """Runs one synthesis session protocol against a real :class:`Engine` on this loop, the way
    the pump does, with a virtual clock ``now_ns`` that a ``Wake`` moves forward."""

    def __init__(self, engine: Engine, protocol: Any, binary_control: bool = False):
        self.engine, self.protocol = engine, protocol
        self.binary_control = binary_control  # moshi: every frame is msgpack
        self.out = Driven()
        self.now_ns = 0
        self.pending: set[asyncio.Future] = set()
        self.wakes: list[int] = []
        self.ticket = None
        try:
            self.ticket = engine.open_session(stepped=True)
        except ProtocolError as exc:
            self._perform(protocol.refused(exc))
            return
        self._perform(protocol.opened())

    def send(self, frame: bytes | str) -> None:
        self._perform(self.protocol.received(frame, self.now_ns))

    def send_json(self, message: dict) -> None:
        self.send(json.dumps(message))

    async def run(self, until=None, timeout: float = 60.0) -> None:
        """Answer steps and wakes until the session closes (or ``until()`` holds, or nothing is left)."""
        async def loop():
            while self.out.closed is None and not (until and until()):
                if self.pending:
                    await asyncio.sleep(0.001)
                elif self.wakes:
                    self.now_ns = max(self.now_ns, min(self.wakes))
                    self.wakes.remove(min(self.wakes))
                    self._perform(self.protocol.woke(self.now_ns))
                else:
                    return
        await asyncio.wait_for(loop(), timeout)

    def close(self) -> None:
        if self.ticket is not None:
            self.engine.close_session(self.ticket)
            self.ticket = None

    def _perform(self, actions) -> None:
        for action in actions:
            if isinstance(action, Submit):
                future = self.engine.submit(self.ticket, action.inputs, budget_s=action.budget_s, lane=action.lane)
                self.pending.add(future)
                future.add_done_callback(lambda f, key=action.key: self._answered(key, f))
            elif isinstance(action, CancelQueued):
                self.engine.cancel_queued(self.ticket)
            elif isinstance(action, Wake):
                self.wakes.append(action.at_ns)
            elif isinstance(action, Send):
                frame = action.frame
                if isinstance(frame, str):
                    message = json.loads(frame)
                elif self.binary_control:
                    message = msgpack.unpackb(frame)
                else:
                    self.out.audio.append(frame)
                    self.out.events.append((self.now_ns, "audio"))
                    continue
                self.out.messages.append(message)
                self.out.events.append((self.now_ns, message.get("type")))
            elif isinstance(action, Close):
                self.out.closed = (action.code, action.reason)

    def _answered(self, key: int, future: asyncio.Future) -> None:
        self.pending.discard(future)
        if future.cancelled():
            return
        outcome = future.exception() or future.result()
        self._perform(self.protocol.answered(key, outcome, self.now_ns))

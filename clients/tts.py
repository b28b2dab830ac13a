"""``headway tts "TEXT" OUT.wav``: speak text with Headway's synthesiser and write a WAV.

    headway tts "robot go to the red cube please" out.wav                 # from a running headway serve
    headway tts "robot go to the red cube please" out.wav --offline       # the shipped model, in this process
    headway tts "go left" out.wav --words-per-s 3 --rate 16000           # text streamed in word by word

With a server (``--url``, default ``ws://127.0.0.1:8000/v1/tts``) the text is sent as ``text``
pieces, one word each (``--words-per-s`` paces them like a language model writing; default:
all at once), then ``end``; the audio frames are collected until ``done``. The protocol:
docs/protocol.md (``/v1/tts``). ``--offline`` runs the shipped checkpoints here, the same
steps the server runs (greedy, so the same audio).

:class:`TtsClient` is the asyncio client the command and ``headway bench tts`` use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY = "speak text with the DSM speech synthesiser (/v1/tts, or --offline) and write a WAV"


class TtsClient:
    """One ``/v1/tts`` stream: ``await connect()`` sends the hello and returns ``ready``;
    ``text(piece)``, ``end()``, ``cancel()``; ``receive()`` returns the next event as
    ``(kind, value, t)``: ``("audio", float32 samples, t)``, ``("word", message, t)``,
    ``("done", message, t)``, ``t`` = ``time.monotonic()`` at its arrival. An ``error``
    message raises ``RuntimeError``."""

    def __init__(self, url: str = "ws://127.0.0.1:8000/v1/tts", *, sample_rate: int = 24000,
                 format: str = "pcm_s16le"):
        self.url, self.sample_rate, self.format = url, sample_rate, format
        self.ws = None
        self.ready: dict[str, Any] | None = None

    async def connect(self) -> dict[str, Any]:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, max_size=2**22, compression=None)
        await self.ws.send(json.dumps({"type": "hello", "sample_rate": self.sample_rate, "format": self.format}))
        kind, message, _ = await self.receive()
        if kind != "ready":
            raise RuntimeError(f"expected ready, got {message}")
        self.ready = message
        return message

    async def text(self, piece: str) -> None:
        await self.ws.send(json.dumps({"type": "text", "text": piece}))

    async def end(self) -> None:
        await self.ws.send(json.dumps({"type": "end"}))

    async def cancel(self) -> None:
        await self.ws.send(json.dumps({"type": "cancel"}))

    async def receive(self) -> tuple[str, Any, float]:
        frame = await self.ws.recv()
        t = time.monotonic()
        if isinstance(frame, bytes):
            if self.format == "pcm_s16le":
                return "audio", np.frombuffer(frame, "<i2").astype(np.float32) / 32768, t
            return "audio", np.frombuffer(frame, "<f4").copy(), t
        message = json.loads(frame)
        if message.get("type") == "error":
            raise RuntimeError(f"{message.get('code')}: {message.get('message')}")
        return message["type"], message, t

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def speak(url: str, text: str, sample_rate: int, words_per_s: float | None) -> tuple[np.ndarray, dict]:
    """The audio of ``text`` from the server at ``url``, and its ``done`` message."""
    client = TtsClient(url, sample_rate=sample_rate)
    await client.connect()

    async def feed():
        words = text.split()
        if not words_per_s:
            await client.text(text + " ")
        else:
            for w in words:
                await client.text(w + " ")
                await asyncio.sleep(1.0 / words_per_s)
        await client.end()

    feeder = asyncio.create_task(feed())
    chunks, done = [], {}
    while True:
        kind, value, _ = await client.receive()
        if kind == "audio":
            chunks.append(value)
        elif kind == "done":
            done = value
            break
    await feeder
    await client.close()
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), done


def speak_offline(text: str, sample_rate: int, checkpoint_dir: Path | None = None) -> np.ndarray:
    """The audio of ``text`` from the shipped checkpoints, in this process."""
    import torch

    from models.audio_resample import resample
    from models.dsm_tts import CHECKPOINT_DIR, load_dsm_tts, synthesize_codes
    from models.tts_codec import load_codec, resynthesise

    directory = checkpoint_dir or CHECKPOINT_DIR
    model, codec = load_dsm_tts(directory), load_codec(directory)
    words = [w for w in (_normalise(w) for w in text.split()) if w]
    known = [w for w in words if w in set(model.config.words)]
    codes, _ = synthesize_codes(model, known)
    return resample(resynthesise(codec, torch.from_numpy(codes)), 16000, sample_rate)


def _normalise(word: str) -> str:
    import re

    return re.sub(r"[^a-z']+", "", word.lower())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="what to say (the world's words; others are skipped)")
    parser.add_argument("out", type=Path, help="WAV file to write (16-bit mono)")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/tts", help="the server's /v1/tts (default %(default)s)")
    parser.add_argument("--rate", type=int, default=24000, help="sample rate of the WAV (default %(default)s)")
    parser.add_argument("--words-per-s", type=float, default=None,
                        help="send the text word by word at this rate (default: all at once)")
    parser.add_argument("--offline", action="store_true", help="run the shipped model in this process, no server")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="with --offline: where the checkpoints are")


def main(args: argparse.Namespace) -> int:
    from clients.synthesizers import write_wav

    if args.offline:
        audio = speak_offline(args.text, args.rate, args.checkpoint_dir)
        done: dict = {}
    else:
        audio, done = asyncio.run(speak(args.url, args.text, args.rate, args.words_per_s))
    write_wav(args.out, audio, args.rate)
    print(json.dumps({"out": str(args.out), "seconds": round(len(audio) / args.rate, 2), "sample_rate": args.rate,
                      **{k: done[k] for k in ("words", "skipped", "first_audio_ms") if k in done}}))
    return 0

"""``headway asr FILE.wav``: stream a recording to ``/v1/asr`` and print the words as they come.

    headway asr out/speech/wav/test_heldout_voice-000003.wav              # as fast as the server takes it
    headway asr speech.wav --realtime --url ws://127.0.0.1:8000/v1/asr    # paced like a microphone

The file is sent at its own sample rate (any rate: the server resamples) as 16-bit PCM, in
80 ms chunks; at the end the client asks for a ``flush`` and waits for ``flushed``. Each word
is printed with its times as its end arrives (``word_end``) (``--json``: every message, one JSON object a line). The protocol:
docs/protocol.md (``/v1/asr``).

:class:`AsrClient` is the asyncio client the command, the tests and ``headway bench asr`` use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from clients.sdk import HandshakeRefused, ServerError

SUMMARY = "stream a WAV file to the speech recogniser (/v1/asr) and print the words as they come"
CHUNK_S = 0.08


class AsrClient:
    """One ``/v1/asr`` stream. ``await connect()`` sends the hello and returns ``ready``;
    ``send(samples)`` sends float samples in [-1, 1] (as 16-bit PCM, or float32 with
    ``format="f32le"``); ``flush()`` asks for the last words; ``messages()`` yields every
    message the server sends, each with ``"t"``: ``time.monotonic()`` at its arrival. An
    ``error`` message raises :class:`clients.sdk.ServerError`."""

    def __init__(self, url: str = "ws://127.0.0.1:8000/v1/asr", *, sample_rate: int = 16000,
                 format: str = "pcm_s16le", token: str | None = None, end_of_turn_ms: int | None = None):
        self.url = url
        self.hello: dict[str, Any] = {"type": "hello", "sample_rate": sample_rate, "format": format}
        if end_of_turn_ms is not None:
            self.hello["end_of_turn_ms"] = end_of_turn_ms
        self.format = format
        self.token = token
        self.ready: dict[str, Any] | None = None
        self.ws: ClientConnection | None = None

    async def connect(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self.ws = await connect(self.url, additional_headers=headers, compression=None, max_size=None)
        except InvalidStatus as exc:
            raise HandshakeRefused(self.url, exc.response) from None
        await self.ws.send(json.dumps(self.hello))
        self.ready = self._parse(await self.ws.recv())
        return self.ready

    async def send(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float32)
        if self.format == "f32le":
            data = samples.astype("<f4").tobytes()
        else:
            # x 32768, as the server divides: 16-bit audio read from a WAV file goes back bit for bit
            data = np.clip((samples * 32768.0).round(), -32768, 32767).astype("<i2").tobytes()
        await self.ws.send(data)

    async def flush(self) -> None:
        await self.ws.send(json.dumps({"type": "flush"}))

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        async for frame in self.ws:
            yield self._parse(frame)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def __aenter__(self) -> "AsrClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    def _parse(frame: str | bytes) -> dict[str, Any]:
        message = json.loads(frame)
        message["t"] = time.monotonic()
        if message.get("type") == "error":
            raise ServerError(message.get("code", "?"), message.get("message", ""))
        return message


async def transcribe(url: str, audio: np.ndarray, sample_rate: int, *, realtime: bool = False,
                     chunk_s: float = CHUNK_S, token: str | None = None, format: str = "pcm_s16le",
                     on_message=None) -> list[dict[str, Any]]:
    """Stream ``audio`` (float32, mono) then flush; returns every message up to ``flushed``.
    ``realtime`` paces the chunks like a microphone (chunk k leaves when its audio has ended)."""
    async with AsrClient(url, sample_rate=sample_rate, token=token, format=format) as client:
        received: list[dict[str, Any]] = [client.ready]

        async def reader() -> None:
            async for message in client.messages():
                received.append(message)
                if on_message is not None:
                    on_message(message)
                if message["type"] == "flushed":
                    return

        task = asyncio.create_task(reader())
        chunk = max(1, int(round(chunk_s * sample_rate)))
        start = time.monotonic()
        for at in range(0, len(audio), chunk):
            if realtime:
                delay = start + (at + chunk) / sample_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await client.send(audio[at: at + chunk])
            if task.done():
                break
        await client.flush()
        await task
        return received


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a 16-bit PCM WAV file, mono (any sample rate)")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/asr", help="the /v1/asr endpoint (default %(default)s)")
    parser.add_argument("--realtime", action="store_true", help="send at real time, like a microphone")
    parser.add_argument("--token", default=None, help="the server's token, if it has one")
    parser.add_argument("--json", action="store_true", help="print every message as JSON, one a line")


def main(args: argparse.Namespace) -> int:
    from clients.synthesizers import read_wav

    audio, rate = read_wav(args.file)
    words: list[str] = []

    def show(message: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({k: v for k, v in message.items() if k != "t"}), flush=True)
        elif message["type"] == "word_end":  # the word with both its times
            words.append(message["text"])
            print(f"{message['start']:7.2f} {message['end']:7.2f}  {message['text']}", flush=True)
        elif message["type"] == "end_of_turn" and not args.json:
            print(f"{message['at']:7.2f}          (end of turn)", flush=True)

    try:
        asyncio.run(transcribe(args.url, audio, rate, realtime=args.realtime, token=args.token, on_message=show))
    except (OSError, HandshakeRefused, ServerError) as exc:
        print(f"headway asr: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print(" ".join(words))
    return 0

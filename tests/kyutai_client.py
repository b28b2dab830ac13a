"""Kyutai's ASR client for moshi-server, its message flow copied from delayed-streams-modeling's
``scripts/stt_from_file_rust_server.py`` (read 2026-12): the file's audio at 24 kHz, one second
of silence first, 1920-sample frames paced at ``rtf`` x real time, five seconds of silence, a
``Marker``, 35 seconds of silence; it reads ``Word``/``EndWord`` (ignoring ``Step``) until the
marker comes back. Only the audio source differs: a numpy array instead of a decoded file."""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
from websockets.asyncio.client import connect

SAMPLE_RATE = 24000
FRAME_SIZE = 1920  # Send data in chunks


async def kyutai_transcribe(url: str, api_key: str, audio_data: np.ndarray, rtf: float) -> list[dict]:
    """The script's ``stream_audio``: returns its transcript, ``[{"text", "timestamp": [start, stop]}]``."""

    async def receive_messages(websocket):
        transcript = []
        async for message in websocket:
            data = msgpack.unpackb(message, raw=False)
            if data["type"] == "Step":
                continue
            if data["type"] == "Word":
                transcript.append({"text": data["text"], "timestamp": [data["start_time"], data["start_time"]]})
            if data["type"] == "EndWord":
                if len(transcript) > 0:
                    transcript[-1]["timestamp"][1] = data["stop_time"]
            if data["type"] == "Marker":
                break
        return transcript

    async def send_messages(websocket):
        async def send_audio(audio):
            await websocket.send(msgpack.packb({"type": "Audio", "pcm": [float(x) for x in audio]},
                                               use_single_float=True))

        await send_audio([0.0] * SAMPLE_RATE)
        start_time = asyncio.get_running_loop().time()
        for i in range(0, len(audio_data), FRAME_SIZE):
            await send_audio(audio_data[i: i + FRAME_SIZE])
            expected_send_time = start_time + (i + 1) / SAMPLE_RATE / rtf
            current_time = asyncio.get_running_loop().time()
            if current_time < expected_send_time:
                await asyncio.sleep(expected_send_time - current_time)
            else:
                await asyncio.sleep(0.001)
        for _ in range(5):
            await send_audio([0.0] * SAMPLE_RATE)
        await websocket.send(msgpack.packb({"type": "Marker", "id": 0}, use_single_float=True))
        for _ in range(35):
            await send_audio([0.0] * SAMPLE_RATE)

    headers = {"kyutai-api-key": api_key}
    async with connect(url, additional_headers=headers) as websocket:
        send_task = asyncio.create_task(send_messages(websocket))
        receive_task = asyncio.create_task(receive_messages(websocket))
        _, transcript = await asyncio.gather(send_task, receive_task)
    return transcript

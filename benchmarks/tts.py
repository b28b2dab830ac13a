"""``headway bench tts``: the streaming speech synthesiser served by ``headway serve``, measured
end to end over ``/v1/tts``, and its intelligibility; prints one JSON object.

    flock /tmp/headway-heavy.lock headway bench tts --corpus out/speech     # ~3-4 minutes

It starts ``headway serve --tts DIR`` in a separate process (with the shipped recogniser too,
unless ``--asr-streams 0``, so that speech recognition runs at the same time) and measures:

* ``first_audio_ms``: one stream at a time, a held-out sentence sent as one ``text`` message
  and ``end``; time from sending it to the first audio frame received; median of
  ``--latency-runs``. ``first_audio_ms_p99_8_streams``: the same with 8 streams started
  together, p99 over ``--latency-rounds`` rounds.
* ``max_realtime_streams``: the most streams synthesising at once (3 held-out sentences each,
  about 7 s of audio) that all stay real time: a stream keeps up when no frame after its first
  arrives later than its playback time (first arrival + 80 ms per frame) plus one frame of
  jitter buffer. Probed at 8, 12, 16, 24, ... up to ``--max-streams`` while ``--asr-streams``
  recognition streams are fed at real time (80 ms chunks) beside them.
* ``rtf``: compute time of one stream (its executor stepped back to back in this process)
  over the audio it made.
* ``roundtrip_wer``: ``--wer-sentences`` held-out sentences (never trained on) spoken by the
  synthesiser (greedy, whole text at once, in this process) and recognised by the shipped
  recogniser (``models.dsm_asr_training.transcribe_batched``). ``codec_wer``: the same
  sentences said by the training voice (flite kal16), encoded and resynthesised by the codec;
  ``voice_wer``: the original kal16 audio, for reference.

Timing benchmarks share the machine: run under the shared lock. The clients run in this
process on the same two cores as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

SUMMARY = "the streaming speech synthesiser over /v1/tts: first audio, real-time streams, RTF, round-trip WER; prints JSON"
FRAME_S = 0.08


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=Path("out/speech"), help="corpus of headway data speech (its sentences)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="dsm_tts.* and tts_codec.* (default models/checkpoints)")
    parser.add_argument("--asr-dir", type=Path, default=None, help="recogniser dsm_asr.* (default models/checkpoints)")
    parser.add_argument("--latency-runs", type=int, default=10, help="single streams timed for first_audio_ms (default %(default)s)")
    parser.add_argument("--latency-rounds", type=int, default=5, help="rounds of 8 concurrent streams for the p99 (default %(default)s)")
    parser.add_argument("--max-streams", type=int, default=32, help="most concurrent streams probed (default %(default)s)")
    parser.add_argument("--asr-streams", type=int, default=4, help="recognition streams fed at real time during the capacity probe")
    parser.add_argument("--wer-sentences", type=int, default=100, help="held-out sentences for the WERs (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")


async def _one(url: str, text: str, whole: bool = True) -> dict:
    """One stream: first-audio latency and frame arrival times (``whole`` false: cancelled
    after its first audio)."""
    from clients.tts import TtsClient

    client = TtsClient(url, sample_rate=24000)
    await client.connect()
    sent = time.monotonic()
    await client.text(text + " ")
    await client.end()
    arrivals = []
    while True:
        kind, _, t = await client.receive()
        if kind == "audio":
            arrivals.append(t)
            if not whole and len(arrivals) == 1:
                await client.cancel()
        elif kind == "done":
            break
    await client.close()
    return {"first_audio_ms": (arrivals[0] - sent) * 1000 if arrivals else None, "arrivals": arrivals}


def _keeps_up(arrivals: list[float]) -> bool:
    if not arrivals:
        return False
    first = arrivals[0]
    return all(t <= first + i * FRAME_S + FRAME_S for i, t in enumerate(arrivals))


async def _asr_feeder(url: str, audio: np.ndarray, stop: asyncio.Event) -> None:
    from clients.asr import AsrClient

    client = AsrClient(url, sample_rate=16000)
    await client.connect()

    async def drain():
        async for _ in client.messages():
            pass

    reader = asyncio.create_task(drain())
    chunk = int(16000 * FRAME_S)
    start, i = time.monotonic(), 0
    while not stop.is_set():
        at = (i * chunk) % max(chunk, len(audio) - chunk)
        await client.send(audio[at: at + chunk])
        i += 1
        await asyncio.sleep(max(0.0, start + i * FRAME_S - time.monotonic()))
    reader.cancel()
    await client.close()


async def _served(url: str, asr_url: str | None, asr_audio, sentences: list[str], args) -> dict:
    out: dict = {}
    singles = [await _one(url, sentences[i % len(sentences)], whole=False) for i in range(args.latency_runs)]
    out["first_audio_ms"] = round(statistics.median(s["first_audio_ms"] for s in singles), 1)
    eights = []
    for r in range(args.latency_rounds):
        eights += await asyncio.gather(*(_one(url, sentences[(8 * r + i) % len(sentences)], whole=False) for i in range(8)))
    values = sorted(s["first_audio_ms"] for s in eights)
    out["first_audio_ms_p99_8_streams"] = round(float(np.percentile(values, 99)), 1)
    out["first_audio_ms_median_8_streams"] = round(statistics.median(values), 1)
    stop = asyncio.Event()
    feeders = [asyncio.create_task(_asr_feeder(asr_url, asr_audio, stop)) for _ in range(args.asr_streams)] \
        if asr_url and args.asr_streams else []
    await asyncio.sleep(0.5)
    best, probes = 0, []
    n = 8
    long_texts = [" ".join(sentences[(3 * i + j) % len(sentences)] for j in range(3)) for i in range(args.max_streams)]
    while n <= args.max_streams:
        runs = await asyncio.gather(*(_one(url, long_texts[i]) for i in range(n)))
        ok = sum(_keeps_up(r["arrivals"]) for r in runs)
        probes.append({"streams": n, "kept_up": ok})
        if ok < n:
            break
        best = n
        n = n + 4 if n < 16 else n + 8
    stop.set()
    await asyncio.gather(*feeders, return_exceptions=True)
    out["max_realtime_streams"] = best
    out["capacity_probes"] = probes
    out["asr_streams_meanwhile"] = len(feeders)
    return out


def _rtf(directory: Path, sentences: list[str]) -> float:
    from stream.hosts import RunBatch, WorkItem
    from stream.tts_models import DsmTtsExecutor

    executor = DsmTtsExecutor(1, str(directory))
    compute, audio = 0.0, 0
    for text in sentences[:10]:
        executor.open_slot(0)
        inputs = {"words": text.split(), "end": True, "rate": 24000}
        while True:
            t0 = time.perf_counter()
            result = executor.run(RunBatch(0, [WorkItem(inputs, slot=0)], [True]))[0]
            compute += time.perf_counter() - t0
            inputs = {}
            audio += len(result["pcm"])
            if result["done"]:
                break
    return compute / (audio / 24000)


def _wers(directory: Path, asr_dir: Path, sentences: list[str]) -> dict:
    import torch

    from clients.tts_voice import render
    from models.dsm_asr import load_dsm_asr
    from models.dsm_asr_training import transcribe_batched
    from models.dsm_streams import word_error_rate
    from models.dsm_tts import load_dsm_tts, synthesize_codes
    from models.tts_codec import load_codec, resynthesise

    asr = load_dsm_asr(asr_dir)
    model, codec = load_dsm_tts(directory), load_codec(directory)
    refs = [s.split() for s in sentences]

    def wer(audios):
        return round(word_error_rate(refs, [[w.text for w in h] for h in transcribe_batched(asr, audios)]), 4)

    spoken = [resynthesise(codec, torch.from_numpy(synthesize_codes(model, s.split())[0])) for s in sentences]
    voice = render(sentences)
    coded = [resynthesise(codec, codec.encode(u.audio)) for u in voice]
    return {"roundtrip_wer": wer(spoken), "codec_wer": wer(coded), "voice_wer": wer([u.audio for u in voice]),
            "wer_sentences": len(sentences)}


def main(args: argparse.Namespace) -> int:
    import torch

    from clients.server_process import ServerProcess
    from clients.tts_voice import corpus_sentences, render
    from models.dsm_tts import CHECKPOINT_DIR

    torch.set_num_threads(1)
    directory = (args.checkpoint_dir or CHECKPOINT_DIR).resolve()
    asr_dir = (args.asr_dir or CHECKPOINT_DIR).resolve()
    has_asr = (asr_dir / "dsm_asr.safetensors").is_file()
    _, heldout = corpus_sentences(args.corpus)
    t0 = time.perf_counter()
    serve_args = ["--tts", str(directory), "--tts-slots", str(max(16, args.max_streams)),
                  "--asr", str(asr_dir) if has_asr and args.asr_streams else "none"]
    asr_audio = render(heldout[:3])
    asr_audio = np.concatenate([u.audio for u in asr_audio]) if asr_audio else None
    with ServerProcess(serve_args, timeout_s=120) as server:
        result = asyncio.run(_served(server.url("/v1/tts"), server.url("/v1/asr") if has_asr else None, asr_audio,
                                     heldout, args))
    result["rtf"] = round(_rtf(directory, heldout), 4)
    if has_asr:
        result.update(_wers(directory, asr_dir, heldout[: args.wer_sentences]))
    else:
        result.update({"roundtrip_wer": None, "codec_wer": None, "note": "no recogniser checkpoint"})
    result["bench_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0

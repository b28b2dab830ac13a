"""``headway bench asr``: the streaming speech recogniser served by ``headway serve``, measured
end to end over ``/v1/asr``; prints one JSON object.

    headway bench asr --corpus out/speech                 # the shipped checkpoint, ~4-5 minutes
    headway bench asr --utterances 100 --probe-s 4        # shorter

It starts ``headway serve --asr CHECKPOINT`` in a separate process (one with batched steps, then
one stepping a single stream per batch) and streams the corpus's held-out sentences
(``headway data speech``: the ``test_seen_voices`` and ``test_heldout_voice`` splits, never
trained on) through it. Keys:

* ``wer_seen_voices``, ``wer_heldout_voice``: word error rate of the transcripts the server
  streamed back, every utterance sent as fast as the server takes it (``--concurrency`` at a
  time) and flushed. ``streaming_equals_offline``: the fraction of those utterances whose
  streamed words (texts and times) equal the offline decode of the same file
  (``models.dsm_asr_training.transcribe_batched``, in this process).
* ``rtf``: that phase's wall time over the audio's duration (all streams together);
  ``rtf_one_stream``: one utterance at a time, time from its first byte to ``flushed`` over
  its duration (median).
* ``first_word_latency_ms``: utterances streamed at real time in 80 ms chunks (``--latency-
  streams`` at once, ``--latency-utterances`` in all), the time from the end of the utterance's
  first word in the audio (the synthesizer's timing; chunk k leaves when its audio has ended,
  as from a microphone) to that word's ``word`` message (sent when the word is recognised,
  before its end is known), median over the utterances whose first
  word was recognised (``_p90`` beside it; ``word_latency_ms``: the same over every word of
  exactly recognised utterances).
* ``flush_ms``: from ``flush`` (sent right after an utterance's last chunk, at real time) to
  ``flushed``, by which every word has been sent; median (and p90).
* ``max_realtime_streams``: the most streams fed at real time at once (80 ms chunks, start
  phases spread over a frame) with no stream falling behind: a stream keeps up when, over the
  last second of a ``--probe-s`` probe, the median delay from the end of a frame's audio to the
  ``step`` message that reports it is at most ``--lag-ms``. Searched upward (doubling, then
  bisecting) up to ``--max-streams``.
* ``batching_speedup``: that number over the same search on a server stepping one stream per
  batch (``--max-batch 1``): streams served batched / streams served one step at a time.

Timing benchmarks share the machine: run under the shared lock (``flock /tmp/headway-heavy.lock
headway bench asr``). The client runs in this process on the same cores as the server, so the
capacity numbers include the client's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY = "the streaming speech recogniser over /v1/asr: WER, latency, flush, real-time streams, batching; prints JSON"
FRAME_S = 0.08
RATE = 16_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=Path("out/speech"), help="corpus of headway data speech (default %(default)s)")
    parser.add_argument("--checkpoint", default=None,
                        help="recogniser checkpoint (directory or .json; default: the shipped models/checkpoints/dsm_asr)")
    parser.add_argument("--utterances", type=int, default=None, help="utterances per test split for the WER (default: all)")
    parser.add_argument("--concurrency", type=int, default=32, help="streams at once in the WER phase (default %(default)s)")
    parser.add_argument("--latency-utterances", type=int, default=32, help="utterances streamed at real time (default %(default)s)")
    parser.add_argument("--latency-streams", type=int, default=4, help="of them at once (default %(default)s)")
    parser.add_argument("--probe-s", type=float, default=6.0, help="seconds of each capacity probe (default %(default)s)")
    parser.add_argument("--lag-ms", type=float, default=250.0,
                        help="a stream keeps up when its median step lag over the probe's last second is at most this")
    parser.add_argument("--max-streams", type=int, default=512, help="largest capacity probe (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process's offline decode")
    parser.add_argument("--skip", action="append", default=[], choices=("wer", "latency", "capacity", "unbatched"),
                        help="leave out a phase (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON object to this file")


# -- the corpus ---------------------------------------------------------------------------------


def load_split(corpus: Path, split: str, limit: int | None) -> list[dict]:
    from clients.synthesizers import read_wav

    rows = []
    for line in (corpus / "manifest.jsonl").read_text().splitlines():
        if not line:
            continue
        record = json.loads(line)
        if record["split"] != split:
            continue
        audio, rate = read_wav(corpus / record["path"])
        rows.append({"id": record["id"], "audio": audio, "rate": rate,
                     "words": [(text, start, end) for text, start, end in record["words"]]})
        if limit is not None and len(rows) >= limit:
            break
    return rows


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


# -- streaming through the server ------------------------------------------------------------------


async def stream_fast(url: str, audio: np.ndarray, rate: int) -> tuple[list[dict], float]:
    """An utterance sent as fast as the server takes it (0.5 s frames), flushed: its messages and
    the time from the first byte to ``flushed``."""
    from clients.asr import transcribe

    start = time.monotonic()
    messages = await transcribe(url, audio, rate, chunk_s=0.5)
    return messages, time.monotonic() - start


async def wer_phase(url: str, splits: dict[str, list[dict]], concurrency: int) -> dict[str, Any]:
    from models.dsm_streams import word_error_rate

    results: dict[str, Any] = {}
    everything = [(name, row) for name, rows in splits.items() for row in rows]
    heard: dict[str, list[tuple[str, float, float]]] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one(row: dict) -> None:
        async with gate:
            messages, _ = await stream_fast(url, row["audio"], row["rate"])
        heard[row["id"]] = [(m["text"], m["start"], m["end"]) for m in messages if m["type"] == "word_end"]

    start = time.monotonic()
    await asyncio.gather(*(one(row) for _, row in everything))
    wall = time.monotonic() - start
    seconds = sum(len(row["audio"]) / row["rate"] for _, row in everything)
    for name, rows in splits.items():
        results[name] = word_error_rate([[w for w, _, _ in r["words"]] for r in rows],
                                        [[w for w, _, _ in heard[r["id"]]] for r in rows])
    results["heard"] = heard
    results["rtf"] = wall / max(seconds, 1e-9)
    results["audio_s"] = seconds
    one_stream = []
    for _, row in everything[:8]:
        _, took = await stream_fast(url, row["audio"], row["rate"])
        one_stream.append(took / (len(row["audio"]) / row["rate"]))
    results["rtf_one_stream"] = statistics.median(one_stream)
    return results


async def realtime_utterance(url: str, row: dict) -> dict[str, Any]:
    """One utterance at real time in 80 ms chunks, then flush: word latencies and flush time."""
    from clients.asr import AsrClient

    audio, rate = row["audio"], row["rate"]
    chunk = int(FRAME_S * rate)
    async with AsrClient(url, sample_rate=rate) as client:
        arrivals: list[tuple[float, dict]] = []
        flushed = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            async for message in client.messages():
                if message["type"] == "word":
                    arrivals.append((message["t"], message))
                elif message["type"] == "flushed":
                    flushed.set_result(message["t"])
                    return

        task = asyncio.create_task(reader())
        t0 = time.monotonic()  # the audio's time zero: chunk k leaves at t0 + (k + 1) * 80 ms
        for k, at in enumerate(range(0, len(audio), chunk)):
            delay = t0 + min(len(audio), at + chunk) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.send(audio[at: at + chunk])
        flush_sent = time.monotonic()
        await client.flush()
        done_at = await flushed
        await task
    reference = row["words"]
    hypothesis = [m["text"] for _, m in arrivals]
    out: dict[str, Any] = {"flush_ms": (done_at - flush_sent) * 1000, "word_ms": []}
    if arrivals and reference and hypothesis[0] == reference[0][0]:
        out["first_word_ms"] = (arrivals[0][0] - (t0 + reference[0][2])) * 1000
    if hypothesis == [w for w, _, _ in reference]:
        out["word_ms"] = [(t - (t0 + ref[2])) * 1000 for (t, _), ref in zip(arrivals, reference)
                          if t < flush_sent]  # words out before the flush: latency the delay gives
    return out


async def latency_phase(url: str, rows: list[dict], streams: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(streams)

    async def one(row):
        async with gate:
            return await realtime_utterance(url, row)

    results = await asyncio.gather(*(one(row) for row in rows))
    first = [r["first_word_ms"] for r in results if "first_word_ms" in r]
    every = [ms for r in results for ms in r["word_ms"]]
    flush = [r["flush_ms"] for r in results]
    return {"first_word_latency_ms": percentile(first, 50), "first_word_latency_p90_ms": percentile(first, 90),
            "first_word_measured": len(first), "word_latency_ms": percentile(every, 50),
            "word_latency_p90_ms": percentile(every, 90), "flush_ms": percentile(flush, 50),
            "flush_p90_ms": percentile(flush, 90), "latency_utterances": len(rows), "latency_streams": streams}


async def capacity_probe(url: str, n: int, pool: list[np.ndarray], seconds: float, lag_ms: float) -> dict[str, Any]:
    """``n`` streams at real time for ``seconds``: does every one keep up?"""
    from websockets.asyncio.client import connect

    chunk = int(FRAME_S * RATE)
    frames = int(seconds / FRAME_S)
    connections = []
    for i in range(n):
        ws = await connect(url, compression=None, max_size=None)
        await ws.send(json.dumps({"type": "hello", "sample_rate": RATE, "format": "pcm_s16le"}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"stream {i}: {ready}")
        connections.append(ws)
    audio = []
    for i in range(n):  # each stream its own utterances, end to end
        sequence = np.concatenate([pool[(i + j) % len(pool)] for j in range(len(pool))])
        while len(sequence) < frames * chunk:
            sequence = np.concatenate([sequence, sequence])
        audio.append((np.clip(sequence[: frames * chunk], -1, 1) * 32767).round().astype("<i2").reshape(frames, chunk))
    start = time.monotonic() + 0.3
    phases = [start + FRAME_S * i / n for i in range(n)]
    lags: list[list[tuple[float, float]]] = [[] for _ in range(n)]  # (audio time, lag s)
    late: list[float] = []

    async def reader(i: int) -> None:
        async for frame in connections[i]:
            message = json.loads(frame)
            if message["type"] == "step":
                k = message["frames"]
                if k > frames:
                    continue
                audio_end = phases[i] + k * FRAME_S  # when frame k-1's audio was complete and sent
                lags[i].append((k * FRAME_S, time.monotonic() - audio_end))
                if k == frames:
                    return
            elif message["type"] == "error":
                raise RuntimeError(message)

    async def sender() -> None:
        for k in range(frames):
            for i in range(n):
                due = phases[i] + (k + 1) * FRAME_S
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                late.append(max(0.0, -delay))
                await connections[i].send(audio[i][k].tobytes())

    readers = [asyncio.create_task(reader(i)) for i in range(n)]
    await sender()
    try:
        await asyncio.wait_for(asyncio.gather(*readers), timeout=10 + seconds)
        finished = True
    except TimeoutError:
        finished = False
    for ws in connections:
        await ws.close()
    worst = []
    for samples in lags:
        tail = [lag for t, lag in samples if t > seconds - 1.0]
        worst.append(statistics.median(tail) * 1000 if tail else float("inf"))
    all_lags = [lag * 1000 for samples in lags for _, lag in samples]
    return {"streams": n, "keeps_up": finished and max(worst) <= lag_ms,
            "worst_stream_lag_ms": round(max(worst), 1), "lag_p50_ms": percentile(all_lags, 50),
            "lag_p99_ms": percentile(all_lags, 99), "client_send_late_p99_ms": percentile([x * 1000 for x in late], 99)}


async def capacity_search(url: str, pool: list[np.ndarray], seconds: float, lag_ms: float, top: int) -> dict[str, Any]:
    probes = []
    good, bad = 0, None
    n = 4
    while n <= top:
        result = await capacity_probe(url, n, pool, seconds, lag_ms)
        probes.append(result)
        print(f"  {n} streams: {'keeps up' if result['keeps_up'] else 'falls behind'} "
              f"(worst lag {result['worst_stream_lag_ms']} ms)", file=sys.stderr, flush=True)
        if not result["keeps_up"]:
            bad = n
            break
        good = n
        n *= 2
    while bad is not None and bad - good > max(2, good // 8):
        mid = (good + bad) // 2
        result = await capacity_probe(url, mid, pool, seconds, lag_ms)
        probes.append(result)
        print(f"  {mid} streams: {'keeps up' if result['keeps_up'] else 'falls behind'} "
              f"(worst lag {result['worst_stream_lag_ms']} ms)", file=sys.stderr, flush=True)
        if result["keeps_up"]:
            good = mid
        else:
            bad = mid
    return {"max": good, "probes": probes, "capped": bad is None}


# -- the benchmark ----------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    import torch

    from clients.server_process import ServerProcess
    from models.dsm_asr import CHECKPOINT_DIR, CHECKPOINT_NAME, load_dsm_asr

    torch.set_num_threads(max(1, args.threads))
    checkpoint = Path(args.checkpoint) if args.checkpoint else CHECKPOINT_DIR / f"{CHECKPOINT_NAME}.json"
    directory, name = (checkpoint.parent, checkpoint.stem) if checkpoint.suffix else (checkpoint, CHECKPOINT_NAME)
    if not (directory / f"{name}.json").is_file():
        print(f"headway bench asr: no recogniser at {directory / name}.json (headway train asr makes one)", file=sys.stderr)
        return 2
    if not (args.corpus / "manifest.jsonl").is_file():
        print(f"headway bench asr: no corpus in {args.corpus} (headway data speech makes one)", file=sys.stderr)
        return 2
    splits = {split: load_split(args.corpus, split, args.utterances) for split in ("test_seen_voices", "test_heldout_voice")}
    report: dict[str, Any] = {"checkpoint": str(directory / f"{name}.json"),
                              "utterances": {k: len(v) for k, v in splits.items()}}
    serve_args = ["--asr", str(directory / f"{name}.json"), "--asr-buffer-s", "60"]
    t_start = time.monotonic()
    slots = str(max(args.max_streams, args.concurrency))
    with ServerProcess([*serve_args, "--asr-slots", slots, "--max-batch", slots], timeout_s=120) as server:
        url = server.url("/v1/asr")
        if "wer" not in args.skip:
            print("streaming the test splits ...", file=sys.stderr, flush=True)
            wer = asyncio.run(wer_phase(url, splits, args.concurrency))
            report["wer_seen_voices"] = round(wer["test_seen_voices"], 4)
            report["wer_heldout_voice"] = round(wer["test_heldout_voice"], 4)
            report["rtf"] = round(wer["rtf"], 4)
            report["rtf_one_stream"] = round(wer["rtf_one_stream"], 4)
            report["audio_s"] = round(wer["audio_s"], 1)
            heard = wer["heard"]
        if "latency" not in args.skip:
            print("streaming at real time ...", file=sys.stderr, flush=True)
            rows = splits["test_seen_voices"][: args.latency_utterances]
            report.update(asyncio.run(latency_phase(url, rows, args.latency_streams)))
        pool = [row["audio"] for row in splits["test_seen_voices"][:64] if row["rate"] == RATE]
        if "capacity" not in args.skip:
            print("real-time streams, batched steps:", file=sys.stderr, flush=True)
            batched = asyncio.run(capacity_search(url, pool, args.probe_s, args.lag_ms, args.max_streams))
            report["max_realtime_streams"] = batched["max"]
            report["capacity_probes_batched"] = batched["probes"]
    if "capacity" not in args.skip and "unbatched" not in args.skip:
        with ServerProcess([*serve_args, "--asr-slots", slots, "--max-batch", "1"], timeout_s=120) as server:
            print("real-time streams, one stream per step:", file=sys.stderr, flush=True)
            single = asyncio.run(capacity_search(server.url("/v1/asr"), pool, args.probe_s, args.lag_ms, args.max_streams))
        report["max_realtime_streams_one_per_step"] = single["max"]
        report["batching_speedup"] = round(batched["max"] / max(1, single["max"]), 2)
        report["capacity_probes_one_per_step"] = single["probes"]
    if "wer" not in args.skip:  # after the timed phases: the offline decode, in this process
        from models.dsm_asr_training import transcribe_batched

        model = load_dsm_asr(directory, name)
        rows = [row for rows in splits.values() for row in rows]
        equal = 0
        for first in range(0, len(rows), 64):
            group = rows[first: first + 64]
            offline = transcribe_batched(model, [_at_model_rate(r) for r in group])
            for row, words in zip(group, offline):
                duration = round(len(row["audio"]) / row["rate"], 3)
                expected = [(w.text, min(round(w.start_s, 3), duration), min(round(w.end_s, 3), duration)) for w in words]
                equal += expected == heard[row["id"]]
        report["streaming_equals_offline"] = round(equal / max(1, len(rows)), 4)
    report["bench_seconds"] = round(time.monotonic() - t_start, 1)
    report["settings"] = {"concurrency": args.concurrency, "probe_s": args.probe_s, "lag_ms": args.lag_ms,
                          "max_streams": args.max_streams}
    text = json.dumps(report)
    print(text)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _at_model_rate(row: dict) -> np.ndarray:
    from models.audio_resample import resample

    return resample(row["audio"], row["rate"], RATE)

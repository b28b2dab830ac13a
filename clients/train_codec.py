"""``headway train codec``: fit the speech synthesiser's audio codec (``models.tts_codec``) on
the TTS voice (``clients.tts_voice``: flite kal16) saying the speech corpus's training
sentences, and measure its intelligibility: the recogniser's word error rate on held-out
sentences in that voice, resynthesised from their codes (``codec_wer``), beside its rate on
the original audio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SUMMARY = "fit the TTS audio codec (log-mel residual k-means + streaming Griffin-Lim) and measure its WER"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=Path("out/speech"), help="speech corpus (its sentences.jsonl)")
    parser.add_argument("--codebooks", type=int, default=6, help="residual codebooks (default %(default)s)")
    parser.add_argument("--codebook-size", type=int, default=1024, help="entries per codebook (default %(default)s)")
    parser.add_argument("--components", type=int, default=128, help="principal components of a frame quantised (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=10, help="k-means iterations per codebook")
    parser.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    parser.add_argument("--eval", type=int, default=100, help="held-out sentences to measure the WER on")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default models/checkpoints)")
    parser.add_argument("--asr-dir", type=Path, default=None, help="recogniser checkpoint directory (default models/checkpoints)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def codec_wer(codec, texts: list[str], asr_dir: Path | None = None) -> dict:
    """The recogniser's WER on ``texts`` in the TTS voice: original audio and resynthesised
    from all the codec's codebooks (``None`` values when no recogniser checkpoint exists)."""
    from clients.tts_voice import render
    from models.dsm_asr import CHECKPOINT_DIR, load_dsm_asr
    from models.dsm_asr_training import Clip, evaluate_wer
    from models.tts_codec import resynthesise

    directory = asr_dir or CHECKPOINT_DIR
    if not (directory / "dsm_asr.safetensors").exists():
        return {"codec_wer": None, "original_wer": None, "note": "no recogniser checkpoint"}
    asr = load_dsm_asr(directory)
    utterances = render(texts)
    original = [Clip(u.audio, u.words) for u in utterances]
    coded = [Clip(resynthesise(codec, codec.encode(u.audio)), u.words) for u in utterances]
    return {"codec_wer": evaluate_wer(asr, coded)["wer"], "original_wer": evaluate_wer(asr, original)["wer"],
            "sentences": len(texts)}


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from clients.tts_voice import VOICE, corpus_sentences, render
    from models.tts_codec import CHECKPOINT_DIR, CodecConfig, fit_codec, save_codec

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    train, heldout = corpus_sentences(args.corpus)
    utterances = render(train)
    config = CodecConfig(codebooks=args.codebooks, codebook_size=args.codebook_size, components=args.components)
    bar = tqdm(total=args.codebooks, desc="codebooks", disable=args.no_progress)
    codec, info = fit_codec([u.audio for u in utterances], config, iterations=args.iterations, seed=args.seed,
                            progress=lambda k: bar.update(1))
    bar.close()
    fit_s = time.perf_counter() - t0
    report = {"voice": VOICE, "train_sentences": len(train), **info, "fit_s": round(fit_s, 1),
              **codec_wer(codec, heldout[: args.eval], args.asr_dir)}
    codec.config.extra = {"command": "headway train codec", "seed": args.seed, **report}
    weights, _ = save_codec(codec, args.out or CHECKPOINT_DIR)
    print(json.dumps({**report, "checkpoint": str(weights)}))
    return 0

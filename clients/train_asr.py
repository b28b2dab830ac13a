"""``headway train asr``: train the DSM speech recogniser on the corpus of ``headway data speech``.

Reads the corpus's ``train`` split only (the held-out sentences and voice are checked to be
absent), trains ``models.dsm_asr.DsmAsr`` (``models.dsm_asr_training``), writes the weights,
the config and the loss curve into ``--out`` (default the shipped ``models/checkpoints``), and
reports the word error rate on both test splits, which it never trains on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

SUMMARY = "train the DSM speech recogniser on the speech corpus (headway data speech)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=Path("out/speech"), help="corpus directory (default %(default)s)")
    parser.add_argument("--steps", type=int, default=10000, help="optimizer steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step (default %(default)s)")
    parser.add_argument("--frames", type=int, default=96, help="80 ms frames per sequence (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default %(default)s)")
    parser.add_argument("--d-model", type=int, default=128, help="transformer width (default %(default)s)")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers (default %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default %(default)s)")
    parser.add_argument("--ff", type=int, default=512, help="feed-forward width (default %(default)s)")
    parser.add_argument("--window", type=int, default=64, help="attention window = KV cache length in frames")
    parser.add_argument("--tau", type=int, default=6, help="text delay in frames (default %(default)s = 0.48 s)")
    parser.add_argument("--text-noise", type=float, default=0.2,
                        help="fraction of teacher-forced input words replaced by random words (default %(default)s)")
    parser.add_argument("--vtl-warp", type=float, default=0.1,
                        help="vocal-tract-length perturbation: mel axis stretched by 1 +- this (default %(default)s; 0: none)")
    parser.add_argument("--spectral-tilt", type=float, default=0.3,
                        help="random smooth spectral envelope per sequence, up to +- this per cosine (default %(default)s; 0: none)")
    parser.add_argument("--no-spec-augment", action="store_true", help="no SpecAugment masks on the features")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N utterances only")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N utterances of each test split")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: the shipped models/checkpoints)")
    parser.add_argument("--name", default="dsm_asr", help="checkpoint name (default %(default)s)")
    parser.add_argument("--plot", type=Path, default=None, help="loss-curve PNG (default OUT/NAME_loss.png)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_split(corpus: Path, split: str, limit: int | None = None):
    """The clips of one split (audio kept as int16) and their manifest records."""
    import numpy as np

    from clients.synthesizers import read_wav
    from models.dsm_asr_training import Clip
    from models.speech_corpus import Utterance

    records = [Utterance.from_json(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line]
    records = [r for r in records if r.split == split][:limit]
    clips = []
    for r in records:
        audio, rate = read_wav(corpus / r.path)
        if rate != 16_000:
            raise ValueError(f"{r.path}: {rate} Hz; the corpus is 16 kHz")
        clips.append(Clip((audio * 32768).round().astype(np.int16), r.words))
    return clips, records


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from models.dsm_asr import CHECKPOINT_DIR, DsmAsr, DsmAsrConfig, save_dsm_asr
    from models.dsm_asr_training import Regularisation, evaluate_wer, feature_statistics, train_dsm_asr
    from models.speech_corpus import HELDOUT_SPEAKER_VOICES, check_corpus
    from models.world_grammar import vocabulary
    from policies.training import save_loss_curve

    torch.set_num_threads(max(1, args.threads))
    out = args.out or CHECKPOINT_DIR
    t0 = time.perf_counter()
    clips, records = load_split(args.corpus, "train", args.train_limit)
    if not clips:
        raise SystemExit(f"no training utterances in {args.corpus}; make them with: headway data speech --out {args.corpus}")
    sentences = [json.loads(line) for line in (args.corpus / "sentences.jsonl").read_text().splitlines() if line]
    heldout = {s["text"] for s in sentences if s["heldout"]}
    check_corpus(records, heldout)  # every training record: a training sentence, a training voice
    leaked = {r.voice for r in records} & HELDOUT_SPEAKER_VOICES
    if leaked:
        raise SystemExit(f"the training split holds the held-out voice {sorted(leaked)}")
    mean, std = feature_statistics(clips, seed=args.seed)
    config = DsmAsrConfig(words=vocabulary(), tau=args.tau, d_model=args.d_model, layers=args.layers, heads=args.heads,
                          ff=args.ff, window=args.window, feature_mean=mean, feature_std=std)
    torch.manual_seed(args.seed)
    model = DsmAsr(config)
    t_load = time.perf_counter() - t0
    bar = tqdm(total=args.steps, desc="train asr", unit="step", disable=args.no_progress)

    def on_step(step: int, loss: float, parts: dict) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}", text=f"{parts['text']:.3f}", activity=f"{parts['activity']:.3f}")

    t1 = time.perf_counter()
    regularisation = Regularisation(text_noise=args.text_noise, vtl_warp=args.vtl_warp,
                                    spectral_tilt=args.spectral_tilt,
                                    **({"freq_masks": 0, "time_every": 10**9} if args.no_spec_augment else {}))
    losses = train_dsm_asr(model, clips, steps=args.steps, batch_size=args.batch_size, frames=args.frames, lr=args.lr,
                           seed=args.seed, regularisation=regularisation, on_step=on_step)
    bar.close()
    t_train = time.perf_counter() - t1
    results = {}
    for split in ("test_seen_voices", "test_heldout_voice"):
        test, _ = load_split(args.corpus, split, args.eval_limit)
        if test:
            results[split] = evaluate_wer(model, test)
    config.extra = {"corpus": str(args.corpus), "train_utterances": len(clips), "steps": args.steps,
                    "batch_size": args.batch_size, "frames": args.frames, "lr": args.lr, "seed": args.seed,
                    "regularisation": dataclasses.asdict(regularisation),
                    "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
                    "train_seconds": round(t_train, 1), "evaluation": results}
    weights, config_path = save_dsm_asr(model, out, args.name)
    plot = save_loss_curve(losses, args.plot or out / f"{args.name}_loss.png",
                           f"DSM ASR, {len(clips)} utterances, {args.steps} steps")
    report = {"weights": str(weights), "config": str(config_path), "loss_curve": str(plot),
              "parameters": sum(p.numel() for p in model.parameters()), "load_seconds": round(t_load, 1),
              **config.extra}
    print(json.dumps(report))
    return 0

"""``headway train tts``: train the DSM speech synthesiser (``models.dsm_tts``) on the TTS
voice (``clients.tts_voice``: flite kal16) saying the speech corpus's training sentences,
as codes of the codec of ``headway train codec``; then speak held-out sentences with it and
report the recogniser's word error rate on them (``roundtrip_wer``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SUMMARY = "train the DSM speech synthesiser (text leads, codec audio follows) on one voice"


EXTRA_SEED = 1009  # the extra sentences' draw (the corpus's own uses its --seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=Path("out/speech"), help="speech corpus (its sentences.jsonl, words.txt)")
    parser.add_argument("--steps", type=int, default=9000, help="optimizer steps at most (default %(default)s)")
    parser.add_argument("--minutes", type=float, default=None, help="stop (and anneal) within this wall time")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default %(default)s)")
    parser.add_argument("--d-model", type=int, default=192, help="transformer width (default %(default)s)")
    parser.add_argument("--layers", type=int, default=5, help="transformer layers (default %(default)s)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default %(default)s)")
    parser.add_argument("--ff", type=int, default=768, help="feed-forward width (default %(default)s)")
    parser.add_argument("--window", type=int, default=64, help="attention window = KV cache length in frames (default %(default)s)")
    parser.add_argument("--audio-delay", type=int, default=2, help="frames the audio lags the text (default %(default)s)")
    parser.add_argument("--codebooks", type=int, default=None, help="codebooks predicted (default: all the codec's)")
    parser.add_argument("--hold-word", action=argparse.BooleanOptionalAction, default=True,
                        help="the word being spoken is read at every step until the next boundary, not once "
                             "(default: on)")
    parser.add_argument("--input-noise", type=float, default=0.1,
                        help="fraction of the codes read back as input replaced by random ones in training "
                             "(default %(default)s)")
    parser.add_argument("--extra-sentences", type=int, default=6000,
                        help="more sentences of the world grammar to train on, beyond the corpus's training ones: "
                             "none contains a held-out sentence, every word is in the corpus's list "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    parser.add_argument("--eval", type=int, default=60, help="held-out sentences spoken for the WER")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default models/checkpoints)")
    parser.add_argument("--name", default="dsm_tts", help="checkpoint name (default %(default)s)")
    parser.add_argument("--asr-dir", type=Path, default=None, help="recogniser checkpoint directory (default models/checkpoints)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def roundtrip_wer(model, codec, texts: list[str], asr_dir: Path | None = None) -> dict:
    """Held-out ``texts`` spoken by the synthesiser (whole text at once, greedy), recognised
    by the shipped recogniser."""
    import numpy as np
    import torch

    from models.dsm_asr import CHECKPOINT_DIR, load_dsm_asr
    from models.dsm_asr_training import transcribe_batched
    from models.dsm_streams import word_error_rate
    from models.dsm_tts import synthesize_codes
    from models.tts_codec import resynthesise

    directory = asr_dir or CHECKPOINT_DIR
    if not (directory / "dsm_asr.safetensors").exists():
        return {"roundtrip_wer": None, "note": "no recogniser checkpoint"}
    asr = load_dsm_asr(directory)
    audios = []
    for text in texts:
        codes, _ = synthesize_codes(model, text.split())
        audios.append(resynthesise(codec, torch.from_numpy(codes)))
    hyps = transcribe_batched(asr, audios)
    refs = [t.split() for t in texts]
    return {"roundtrip_wer": word_error_rate(refs, [[w.text for w in h] for h in hyps]), "sentences": len(texts),
            "seconds_spoken": round(sum(len(a) for a in audios) / 16000, 1)}


def extra_sentences(count: int, train: list[str], heldout: list[str], vocabulary: set[str]) -> list[str]:
    """``count`` sentences of the world grammar that are not the corpus's: none says a held-out
    sentence (as a run of its words), none has a word outside ``vocabulary``."""
    from models.world_grammar import normal_text, sample_sentences, says_any

    if count <= 0:
        return []
    held = {normal_text(t) for t in heldout}
    taken = {normal_text(t) for t in train} | held
    out: list[str] = []
    for sentence in sample_sentences(len(taken) + 3 * count, seed=EXTRA_SEED):
        text = " ".join(sentence.words)
        if normal_text(text) in taken or says_any(text, held) or not set(sentence.words) <= vocabulary:
            continue
        taken.add(normal_text(text))
        out.append(text)
        if len(out) == count:
            return out
    raise ValueError(f"the grammar gave only {len(out)} new sentences of the {count} asked for")


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from clients.tts_voice import VOICE, corpus_sentences, render
    from models.dsm_tts import CHECKPOINT_DIR, DsmTts, DsmTtsConfig, save_dsm_tts
    from models.dsm_tts_training import CodedUtterance, train_dsm_tts
    from models.tts_codec import encode_many, load_codec
    from policies.training import save_loss_curve

    torch.set_num_threads(max(1, args.threads))
    out = args.out or CHECKPOINT_DIR
    t0 = time.perf_counter()
    codec = load_codec(out) if (out / "tts_codec.json").exists() else load_codec()
    words = [w for w in (args.corpus / "words.txt").read_text().split() if w]
    train, heldout = corpus_sentences(args.corpus)
    train += extra_sentences(args.extra_sentences, train, heldout, set(words))
    k = args.codebooks or codec.config.codebooks
    rendered = render(train)
    utterances = [CodedUtterance(codes[:, :k].numpy().astype(np.int64), u.words)
                  for codes, u in zip(encode_many(codec, [u.audio for u in rendered]), rendered)]
    config = DsmTtsConfig(words=words, codebooks=k, codebook_size=codec.config.codebook_size,
                          audio_delay=args.audio_delay, d_model=args.d_model, layers=args.layers, heads=args.heads,
                          ff=args.ff, window=args.window, voice=VOICE, hold_word=args.hold_word)
    model = DsmTts(config)
    bar = tqdm(total=args.steps, desc="train tts", disable=args.no_progress)

    def on_step(step: int, loss: float, parts: dict) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}", cb0=f"{parts['codebook0']:.3f}", boundary=f"{parts['boundary']:.3f}")

    losses = train_dsm_tts(model, utterances, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, time_limit_s=args.minutes * 60 if args.minutes else None,
                           input_noise=args.input_noise, on_step=on_step)
    bar.close()
    train_s = time.perf_counter() - t0
    report = {"voice": VOICE, "train_sentences": len(train), "steps": len(losses), "final_loss": float(np.mean(losses[-50:])),
              "train_s": round(train_s, 1), "parameters": sum(p.numel() for p in model.parameters())}
    command = (f"headway train tts --minutes {args.minutes} --seed {args.seed} --steps {args.steps} "
               f"--{'' if args.hold_word else 'no-'}hold-word --input-noise {args.input_noise} "
               f"--extra-sentences {args.extra_sentences}")
    model.config.extra = {"command": command, **report}
    weights, _ = save_dsm_tts(model, out, args.name)
    save_loss_curve(losses, out / f"{args.name}_loss.png", "DSM TTS training loss")
    report.update(roundtrip_wer(model, codec, heldout[: args.eval], args.asr_dir))
    model.config.extra.update(report)
    save_dsm_tts(model, out, args.name)
    print(json.dumps({**report, "checkpoint": str(weights)}))
    return 0

"""``headway data speech``: the speech corpus, made here from the world's grammar and Debian's
synthesizers (``clients.synthesizers``), written outside git.

Sentences come from ``models.world_grammar`` (seeded); 10% are held out, and the held-out
voice speaks only those (``models.speech_corpus``). Every utterance is one sentence in one
training voice, at a random speaking rate and pitch of the synthesizer's own, then augmented
(speed, level, noise, room, telephone line; ``models.audio_augment``) and resampled to 16 kHz.
The word timings are the synthesizer's, moved only by the exact speed factor.

Written to ``--out`` (default ``out/speech``)::

    words.txt          the published word list, one word a line
    sentences.jsonl    {"text", "kind", "goal", "heldout"} per sentence
    manifest.jsonl     one models.speech_corpus.Utterance per line (sorted by id)
    wav/ID.wav         16 kHz mono 16-bit audio
    corpus.json        the arguments, counts per split and voice, time taken
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SUMMARY = "generate the speech corpus: the world's sentences spoken by Debian's synthesizers, with their word timings"
DEFAULT_OUT = Path("out/speech")
SAMPLE_RATE = 16_000
FESTIVAL_BATCH = 64  # utterances per festival process


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpus directory (default %(default)s)")
    parser.add_argument("--sentences", type=int, default=3000, help="distinct sentences (default %(default)s)")
    parser.add_argument("--train-renderings", type=int, default=10,
                        help="utterances per training sentence, each in a random training voice (default %(default)s)")
    parser.add_argument("--test-renderings", type=int, default=2,
                        help="utterances per held-out sentence in training voices (default %(default)s); "
                             "the held-out voice says each once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sentences, voices and augmentation")
    parser.add_argument("--limit", type=int, default=None,
                        help="make only the first N utterances of each split (small corpora while developing)")
    parser.add_argument("--words", action="store_true", help="print the word list and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class PlannedUtterance:
    id: str
    split: str
    sentence: str
    kind: str
    voice: str
    rate: float
    pitch: float
    seed: int


@dataclass
class CorpusPlan:
    """Everything random, drawn from the seed before anything is synthesized."""

    sentences: list  # world_grammar.Sentence
    heldout: set[str]  # texts of the held-out sentences
    utterances: list[PlannedUtterance]
    # another training voice (name, rate, pitch) for an utterance its voice could not time,
    # drawn from the utterance's seed and the attempt number
    redraw: Callable[[PlannedUtterance, int], tuple[str, float, float]]


def plan_corpus(args: argparse.Namespace) -> CorpusPlan:
    """The sentences, the split and every utterance's voice, rate, pitch and seed."""
    import numpy as np

    from clients.synthesizers import heldout_voice, training_voices
    from models.speech_corpus import SPLITS, split_sentences
    from models.world_grammar import sample_sentences

    sentences = sample_sentences(args.sentences, seed=args.seed)
    train, heldout = split_sentences(sentences, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    voices = training_voices()
    families = {family: [v for v in voices if v.synthesizer == family] for family in ("espeak", "flite", "festival")}
    weights = {"espeak": 0.5, "flite": 0.3, "festival": 0.2}
    plan: list[PlannedUtterance] = []
    planned = {split: 0 for split in SPLITS}

    def add(split: str, sentence, voice: str, rate: float, pitch: float) -> None:
        index = planned[split]
        if args.limit is not None and index >= args.limit:
            return
        planned[split] += 1
        plan.append(PlannedUtterance(f"{split}-{index:06d}", split, sentence.text, sentence.kind, voice,
                                     round(rate, 4), round(pitch, 4), int(rng.integers(2 ** 31))))

    def training_voice(rng: np.random.Generator = rng) -> tuple[str, float, float]:
        family = rng.choice(list(weights), p=list(weights.values()))
        voice = families[family][int(rng.integers(len(families[family])))]
        if family == "espeak":
            return voice.name, float(rng.uniform(0.8, 1.35)), float(rng.uniform(0.7, 1.5))
        # flite's and festival's voices are all men's: pitch reaches up to women's range
        return voice.name, float(rng.uniform(0.8, 1.25)), float(rng.uniform(0.8, 1.8))

    for sentence in train:
        for _ in range(args.train_renderings):
            add("train", sentence, *training_voice())
    for sentence in heldout:
        for _ in range(args.test_renderings):
            add("test_seen_voices", sentence, *training_voice())
    for sentence in heldout:  # HTS ignores festival's duration stretch: its own rate and pitch
        add("test_heldout_voice", sentence, heldout_voice().name, 1.0, 1.0)
    def redraw(p: PlannedUtterance, attempt: int) -> tuple[str, float, float]:
        return training_voice(np.random.default_rng([p.seed, attempt]))

    return CorpusPlan(sentences, {s.text for s in heldout}, plan, redraw)


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from clients.synthesizers import Espeak, Festival, FestivalRequest, Flite, Rendering, SynthesisError, write_wav
    from models.audio_augment import AugmentPlan, augment
    from models.speech_corpus import Utterance, check_corpus, check_utterance
    from models.world_grammar import vocabulary

    if args.words:
        print("\n".join(vocabulary()))
        return 0
    torch.set_num_threads(1)  # resampling short clips: more threads only spin
    t0 = time.perf_counter()
    corpus_plan = plan_corpus(args)
    sentences, heldout, plan, redraw = (corpus_plan.sentences, corpus_plan.heldout, corpus_plan.utterances,
                                        corpus_plan.redraw)
    out: Path = args.out
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "words.txt").write_text("\n".join(vocabulary()) + "\n")
    with open(out / "sentences.jsonl", "w") as f:
        for s in sentences:
            f.write(json.dumps({"text": s.text, "kind": s.kind, "goal": s.goal, "heldout": s.text in heldout}) + "\n")

    synthesizers = {"espeak": Espeak(), "flite": Flite()}
    festival = Festival()
    records: list[Utterance] = []
    redrawn: list[dict] = []  # utterances whose first voice could not time their words
    bar = tqdm(total=len(plan), desc="speech corpus", unit="utt", disable=args.no_progress)

    def finish(p: PlannedUtterance, rendering: Rendering) -> None:
        rng = np.random.default_rng(p.seed)
        audio, words, applied = augment(rendering.audio, rendering.sample_rate, SAMPLE_RATE, rendering.words,
                                        AugmentPlan.draw(rng), rng)
        record = Utterance(p.id, p.split, p.sentence, p.voice, p.rate, p.pitch, applied, SAMPLE_RATE, len(audio),
                           words, f"wav/{p.id}.wav", kind=p.kind,
                           extra={"synthesizer_rate_hz": rendering.sample_rate})
        check_utterance(record)
        write_wav(out / record.path, audio, SAMPLE_RATE)
        records.append(record)
        bar.update(1)

    def failed(p: PlannedUtterance, error: SynthesisError) -> PlannedUtterance:
        """Another training voice for ``p`` (the held-out voice has no other)."""
        attempt = sum(1 for r in redrawn if r["id"] == p.id) + 1
        if p.split == "test_heldout_voice" or attempt > 8:
            raise error
        redrawn.append({"id": p.id, "voice": p.voice, "error": str(error)})
        voice, rate, pitch = redraw(p, attempt)
        return dataclasses.replace(p, voice=voice, rate=round(rate, 4), pitch=round(pitch, 4))

    todo = list(plan)
    pending_festival: list[PlannedUtterance] = []
    while todo or pending_festival:
        if todo:
            p = todo.pop(0)
            family, _, voice = p.voice.partition(":")
            if family == "festival":
                pending_festival.append(p)
                if len(pending_festival) < FESTIVAL_BATCH and todo:
                    continue
            else:
                try:
                    finish(p, synthesizers[family].synthesize(p.sentence.split(), voice, p.rate, p.pitch,
                                                              seed=p.seed))
                except SynthesisError as error:
                    todo.insert(0, failed(p, error))
                continue
        renderings = festival.synthesize_many([FestivalRequest(tuple(q.sentence.split()), q.voice.partition(":")[2],
                                                               q.rate, q.pitch) for q in pending_festival])
        for q, rendering in zip(pending_festival, renderings):
            if isinstance(rendering, SynthesisError):
                todo.insert(0, failed(q, rendering))
            else:
                finish(q, rendering)
        pending_festival = []
    bar.close()

    records.sort(key=lambda r: r.id)
    check_corpus(records, heldout)
    with open(out / "manifest.jsonl", "w") as f:
        for r in records:
            f.write(r.to_json() + "\n")
    counts: dict[str, dict] = {}
    for r in records:
        split = counts.setdefault(r.split, {"utterances": 0, "hours": 0.0, "voices": set()})
        split["utterances"] += 1
        split["hours"] += r.duration_s / 3600
        split["voices"].add(r.voice)
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
               "sentences": len(sentences), "heldout_sentences": len(heldout), "words": len(vocabulary()),
               "splits": {k: {"utterances": v["utterances"], "hours": round(v["hours"], 3),
                              "voices": len(v["voices"])} for k, v in counts.items()},
               "redrawn_voices": redrawn, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "corpus.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0

"""Specification of the speech corpus: its split, the synthesizers' word timings, the
augmentations' retiming, and `headway data speech` end to end. Needs Debian's espeak-ng,
flite and festival with its voices (`make system-deps`)."""

import argparse
import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clients.speech_data import add_arguments, main
from clients.synthesizers import Espeak, Festival, Flite, heldout_voice, read_wav, training_voices
from models.audio_augment import AugmentPlan, augment, change_speed
from models.dsm_streams import TimedWord
from models.speech_corpus import (HELDOUT_SPEAKER_VOICES, HELDOUT_VOICE, CorpusError, Utterance, check_corpus,
                                  check_timings, check_utterance, split_sentences)
from models.world_grammar import sample_sentences

SENTENCE = "go to the red cube please".split()
ROOT = Path(__file__).resolve().parent.parent


# -- the split --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split():
    sentences = sample_sentences(3000, seed=0)
    return sentences, *split_sentences(sentences, seed=0)


def test_ten_percent_of_the_sentences_are_held_out(split):
    sentences, train, heldout = split
    assert len(heldout) == 300 and len(train) == 2700


def test_held_out_sentences_are_never_training_sentences(split):
    _, train, heldout = split
    assert not {s.text for s in train} & {s.text for s in heldout}


def test_every_held_out_word_is_also_heard_in_training(split):
    _, train, heldout = split
    assert {w for s in heldout for w in s.words} <= {w for s in train for w in s.words}


def test_the_held_out_voice_and_its_speaker_are_no_training_voice():
    names = {v.name for v in training_voices()}
    assert heldout_voice().name == HELDOUT_VOICE == "festival:cmu_us_slt_arctic_hts"
    assert not names & HELDOUT_SPEAKER_VOICES and "flite:slt" in HELDOUT_SPEAKER_VOICES


# -- the records' rules -----------------------------------------------------------------

def utterance(**changes) -> Utterance:
    base = Utterance("train-000000", "train", "go to", "espeak:en-us", 1.0, 1.0, {}, 16000, 16000,
                     [TimedWord("go", 0.1, 0.3), TimedWord("to", 0.3, 0.5)], "wav/train-000000.wav")
    return dataclasses.replace(base, **changes)


def test_a_record_survives_its_json_line():
    u = utterance()
    assert Utterance.from_json(u.to_json()) == u


@pytest.mark.parametrize("voice", sorted(HELDOUT_SPEAKER_VOICES))
def test_a_training_record_in_the_held_out_speakers_voice_is_refused(voice):
    with pytest.raises(CorpusError, match="voice"):
        check_utterance(utterance(voice=voice))


def test_a_held_out_voice_record_in_another_voice_is_refused():
    with pytest.raises(CorpusError, match="voice"):
        check_utterance(utterance(split="test_heldout_voice"))


def test_a_training_record_of_a_held_out_sentence_is_refused():
    with pytest.raises(CorpusError, match="sentence"):
        check_corpus([utterance()], heldout_sentences={"go to"})


@pytest.mark.parametrize("words, why", [
    ([TimedWord("go", 0.3, 0.1), TimedWord("to", 0.3, 0.5)], "before it starts"),
    ([TimedWord("go", 0.1, 0.4), TimedWord("to", 0.3, 0.5)], "before"),
    ([TimedWord("go", 0.1, 0.3), TimedWord("to", 0.3, 1.5)], "after the audio"),
])
def test_timings_out_of_order_or_outside_the_audio_are_refused(words, why):
    with pytest.raises(CorpusError, match=why):
        check_timings(words, 1.0)


def test_words_other_than_the_sentences_are_refused():
    with pytest.raises(CorpusError, match="not the sentence"):
        check_utterance(utterance(sentence="go there"))


# -- the synthesizers' timings ----------------------------------------------------------

def rms(audio: np.ndarray, rate: int, start: float, end: float) -> float:
    part = audio[int(start * rate): int(end * rate)]
    return float(np.sqrt(np.mean(part.astype(np.float64) ** 2))) if len(part) else 0.0


def assert_timed_where_the_speech_is(rendering, words):
    """Every word is the one asked for, in order, within the audio; each word's span holds
    speech and the audio before the first word and after the last is silent."""
    timed = rendering.words
    assert [w.text for w in timed] == list(words)
    check_timings(timed, len(rendering.audio) / rendering.sample_rate)
    rate, audio = rendering.sample_rate, rendering.audio
    speech = rms(audio, rate, timed[0].start_s, timed[-1].end_s)
    for w in timed:
        assert rms(audio, rate, w.start_s, w.end_s) > 0.2 * speech, w
    duration = len(audio) / rate
    if timed[0].start_s > 0.05:
        assert rms(audio, rate, 0, timed[0].start_s - 0.01) < 0.05 * speech
    if duration - timed[-1].end_s > 0.05:
        assert rms(audio, rate, timed[-1].end_s + 0.02, duration) < 0.05 * speech


@pytest.fixture(scope="module")
def espeak():
    return Espeak()


@pytest.fixture(scope="module")
def flite():
    return Flite()


@pytest.mark.parametrize("voice", ["en-us", "en-gb-x-rp+f3", "en-gb-scotland+klatt"])
def test_espeak_times_each_word_from_its_word_and_pause_events(espeak, voice):
    assert_timed_where_the_speech_is(espeak.synthesize(SENTENCE, voice, rate=1.2, pitch=1.3), SENTENCE)


def test_espeak_splits_a_word_pair_it_speaks_as_one_at_the_phoneme_where_the_second_begins(espeak):
    words = "reach for the blue one".split()  # espeak's dictionary says "for the" as one entry
    rendering = espeak.synthesize(words, "en-us")
    assert_timed_where_the_speech_is(rendering, words)
    grouped = [e for e in espeak._events if e[0] == 7 and e[1] == len("reach ") + 1]  # phonemes of "for the"
    assert rendering.words[2].start_s * espeak.sample_rate in [sample for _, _, sample, _ in grouped[1:]]


def test_espeak_speaks_faster_at_a_higher_rate(espeak):
    slow, fast = (espeak.synthesize(SENTENCE, "en-us", rate=r) for r in (0.8, 1.3))
    assert fast.words[-1].end_s < 0.8 * slow.words[-1].end_s


@pytest.mark.parametrize("voice", ["kal16", "awb", "rms"])
def test_flite_times_each_word_from_its_segments(flite, voice):
    assert_timed_where_the_speech_is(flite.synthesize(SENTENCE, voice, rate=0.9, pitch=1.5), SENTENCE)


@pytest.mark.parametrize("voice", ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"])
def test_festival_times_each_word_from_its_word_relation(voice):
    assert_timed_where_the_speech_is(Festival().synthesize(SENTENCE, voice), SENTENCE)


# -- augmentation -----------------------------------------------------------------------

def click_at(seconds: float, rate: int, length_s: float = 1.0) -> np.ndarray:
    audio = np.zeros(int(length_s * rate), np.float32)
    audio[int(seconds * rate)] = 1.0
    return audio


def test_a_speed_change_moves_a_sound_exactly_as_it_retimes_the_words():
    audio = click_at(0.5, 22050)
    out, words, factor = change_speed(audio, 22050, 16000, 1.1, [TimedWord("go", 0.5, 0.6)])
    assert factor == pytest.approx(1.1, abs=0.005)
    assert abs(np.argmax(out) / 16000 - words[0].start_s) <= 1 / 16000
    assert words[0].start_s == pytest.approx(0.5 / factor)


def test_augmenting_without_a_speed_change_keeps_time_where_it_was():
    rng = np.random.default_rng(0)
    plan = AugmentPlan(gain_db=-6, noise_snr_db=20, room_rt60_s=0.3, telephone=True)
    out, words, applied = augment(click_at(0.5, 22050), 22050, 16000, [TimedWord("go", 0.5, 0.6)], plan, rng)
    assert words == [TimedWord("go", 0.5, 0.6)] and len(out) == 16000 and applied["speed"] is None
    assert abs(np.argmax(np.abs(out)) / 16000 - 0.5) < 0.005  # the direct sound stays the loudest


def test_augmentation_is_seeded():
    speech = Espeak().synthesize(SENTENCE, "en-us")
    runs = [augment(speech.audio, speech.sample_rate, 16000, speech.words, AugmentPlan.draw(rng), rng)[0]
            for rng in (np.random.default_rng(7), np.random.default_rng(7))]
    assert np.array_equal(*runs)


# -- headway data speech ----------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("speech")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--out", str(out), "--limit", "6", "--no-progress"])) == 0
    return out


def records(corpus):
    return [Utterance.from_json(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]


def test_the_corpus_command_writes_every_split_with_its_audio(corpus):
    found = records(corpus)
    assert Counter(r.split for r in found) == {"train": 6, "test_seen_voices": 6, "test_heldout_voice": 6}
    for r in found:
        audio, rate = read_wav(corpus / r.path)
        assert rate == 16000 == r.sample_rate and len(audio) == r.num_samples


def test_the_corpus_keeps_held_out_sentences_and_voice_out_of_training(corpus):
    sentences = [json.loads(line) for line in (corpus / "sentences.jsonl").read_text().splitlines()]
    heldout = {s["text"] for s in sentences if s["heldout"]}
    found = records(corpus)
    check_corpus(found, heldout)
    assert {r.voice for r in found if r.split == "test_heldout_voice"} == {HELDOUT_VOICE}
    assert not {r.voice for r in found if r.split == "train"} & HELDOUT_SPEAKER_VOICES
    assert len(sentences) == 3000 and len(heldout) == 300


def test_the_corpus_publishes_its_word_list(corpus):
    from models.world_grammar import vocabulary

    assert (corpus / "words.txt").read_text().split() == vocabulary()


def generate_in_a_fresh_process(out) -> None:
    code = ("import argparse, sys; from clients.speech_data import add_arguments, main; p = argparse.ArgumentParser(); "
            "add_arguments(p); sys.exit(main(p.parse_args(sys.argv[1:])))")
    subprocess.run([sys.executable, "-c", code, "--out", str(out), "--limit", "6", "--no-progress"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)


def test_the_same_seed_makes_the_same_corpus_byte_for_byte(tmp_path):
    """Everything is drawn from the seed, and the synthesizers' own noise is seeded too (a
    fresh process: espeak-ng carries state from one call to the next)."""
    generate_in_a_fresh_process(tmp_path / "a")
    generate_in_a_fresh_process(tmp_path / "b")
    assert (tmp_path / "a" / "manifest.jsonl").read_text() == (tmp_path / "b" / "manifest.jsonl").read_text()
    names = sorted(p.name for p in (tmp_path / "a" / "wav").iterdir())
    assert len(names) == 18
    assert all((tmp_path / "a" / "wav" / n).read_bytes() == (tmp_path / "b" / "wav" / n).read_bytes() for n in names)

"""Specification of training the DSM recogniser: the training sequences, that training
trains, and `headway train asr` end to end on a tiny corpus."""

import argparse
import json

import numpy as np
import pytest
import torch

from clients.synthesizers import Espeak
from models.audio_augment import resample
from models.audio_frames import FRAME_SAMPLES, N_MELS, SAMPLE_RATE, SUBFRAMES
from models.dsm_asr import DsmAsr, DsmAsrConfig, load_dsm_asr
from models.dsm_asr_training import Clip, Regularisation, batch_loss, make_batch, make_sequence, train_dsm_asr
from models.dsm_streams import BOUNDARY, TimedWord
from models.world_grammar import vocabulary

TINY = dict(d_model=32, layers=1, heads=2, ff=64, window=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips():
    espeak = Espeak()
    out = []
    for text in ("go to the red cube", "stop", "move two steps left please"):
        r = espeak.synthesize(text.split(), "en-us")
        out.append(Clip(resample(r.audio, r.sample_rate, SAMPLE_RATE), r.words))
    return out


def test_a_training_sequence_holds_whole_clips_at_their_words_times(clips):
    rng = np.random.default_rng(0)
    audio, words = make_sequence(clips, rng, frames=200, reserve_frames=8, silence_only=0.0)
    assert len(audio) == 200 * FRAME_SAMPLES
    placed, i = 0, 0
    while i < len(words):  # split the words back into clips, and find each clip's audio at its time
        clip = next(c for c in clips if [w.text for w in words[i: i + len(c.words)]] == [w.text for w in c.words])
        at = int(round((words[i].start_s - clip.words[0].start_s) * SAMPLE_RATE))
        assert np.allclose(audio[at: at + len(clip.audio)], clip.samples(), atol=1e-3)
        placed, i = placed + 1, i + len(clip.words)
    assert placed >= 3


def test_no_word_of_a_training_sequence_ends_in_the_frames_kept_for_its_tokens(clips):
    rng = np.random.default_rng(1)
    for _ in range(20):
        _, words = make_sequence(clips, rng, frames=60, reserve_frames=8)
        assert all(w.end_s <= (60 - 8) * 0.08 for w in words)


def test_a_silence_only_sequence_has_no_words_and_only_a_quiet_floor(clips):
    audio, words = make_sequence(clips, np.random.default_rng(2), frames=30, reserve_frames=8, silence_only=1.0)
    assert words == [] and np.abs(audio).max() < 0.01


def test_a_batch_targets_a_boundary_and_a_token_for_every_word(clips):
    model = DsmAsr(DsmAsrConfig(words=vocabulary(), **TINY))
    batch = make_batch(model, clips, np.random.default_rng(3), batch_size=4, frames=120)
    assert batch.frames.shape == (4, 120, FRAME_SAMPLES) and batch.tokens.shape == (4, 120)
    assert (batch.tokens == BOUNDARY).sum() > 0
    after = batch.tokens[:, 1:][batch.tokens[:, :-1] == BOUNDARY]
    assert (after >= 4).all()


def test_a_batch_draws_again_when_dense_words_would_push_tokens_past_its_end():
    # twelve words in 0.72 s: their tokens need 24 frames after the first boundary, far more
    # than the reserve a flush needs, so a stretch ending with this clip cannot be labelled
    words = [TimedWord("a", 0.06 * i, 0.06 * i + 0.05) for i in range(12)]
    dense = Clip(np.zeros(int(0.75 * SAMPLE_RATE), dtype=np.float32), words)
    quiet = Clip(np.zeros(int(0.3 * SAMPLE_RATE), dtype=np.float32), [TimedWord("stop", 0.05, 0.25)])
    model = DsmAsr(DsmAsrConfig(words=vocabulary(), **TINY))
    batch = make_batch(model, [dense, quiet], np.random.default_rng(5), batch_size=16, frames=30)
    assert batch.tokens.shape == (16, 30)


def test_training_lowers_the_loss_on_the_clips_it_sees(clips):
    torch.manual_seed(0)
    model = DsmAsr(DsmAsrConfig(words=vocabulary(), **TINY))
    fixed = make_batch(model, clips, np.random.default_rng(4), batch_size=8, frames=60)
    with torch.no_grad():
        before = batch_loss(model, fixed)[0].item()
    losses = train_dsm_asr(model, clips, steps=80, batch_size=8, frames=60, lr=3e-3, warmup=10, seed=0)
    with torch.no_grad():
        after = batch_loss(model, fixed)[0].item()
    assert len(losses) == 80 and after < 0.5 * before


def test_the_train_command_writes_a_checkpoint_a_loss_curve_and_both_test_splits_wer(tmp_path, capsys):
    from clients import speech_data, train_asr

    corpus = tmp_path / "speech"
    parser = argparse.ArgumentParser()
    speech_data.add_arguments(parser)
    speech_data.main(parser.parse_args(["--out", str(corpus), "--limit", "4", "--no-progress"]))
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    train_asr.add_arguments(parser)
    args = ["--corpus", str(corpus), "--steps", "3", "--batch-size", "2", "--frames", "80", "--d-model", "16",
            "--layers", "1", "--heads", "2", "--ff", "32", "--threads", "1", "--out", str(tmp_path / "ckpt"),
            "--no-progress"]
    assert train_asr.main(parser.parse_args(args)) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["train_utterances"] == 4 and set(report["evaluation"]) == {"test_seen_voices", "test_heldout_voice"}
    assert all(0 <= r["wer"] and r["clips"] == 4 for r in report["evaluation"].values())
    assert (tmp_path / "ckpt" / "dsm_asr_loss.png").stat().st_size > 0
    assert load_dsm_asr(tmp_path / "ckpt").config.extra["evaluation"] == report["evaluation"]


def test_the_train_command_refuses_a_corpus_whose_training_split_holds_the_held_out_voice(tmp_path):
    from clients import speech_data, train_asr
    from models.speech_corpus import CorpusError

    corpus = tmp_path / "speech"
    parser = argparse.ArgumentParser()
    speech_data.add_arguments(parser)
    speech_data.main(parser.parse_args(["--out", str(corpus), "--limit", "2", "--no-progress"]))
    manifest = corpus / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    record = json.loads(next(line for line in lines if '"split": "train"' in line))
    leaked = json.dumps({**record, "voice": "festival:cmu_us_slt_arctic_hts"})
    manifest.write_text("\n".join(leaked if '"split": "train"' in line and record["id"] in line else line
                                  for line in lines) + "\n")
    parser = argparse.ArgumentParser()
    train_asr.add_arguments(parser)
    with pytest.raises(CorpusError, match="voice"):
        train_asr.main(parser.parse_args(["--corpus", str(corpus), "--steps", "1", "--out", str(tmp_path / "c")]))


def test_text_noise_replaces_only_word_tokens_and_with_words():
    previous = torch.tensor([[0, 1, 2, 3] + list(range(4, 24))] * 50)
    noised = Regularisation(text_noise=0.5).text(previous, 30, torch.Generator().manual_seed(0))
    assert torch.equal(noised[:, :4], previous[:, :4])  # PAD, boundary and the other specials stay
    changed = noised[:, 4:] != previous[:, 4:]
    assert 0.3 < changed.float().mean() < 0.6 and (noised[:, 4:] >= 4).all() and (noised < 30).all()


def test_spec_augment_masks_bands_and_stretches_to_the_mean_and_keeps_the_shape():
    features = torch.ones(3, 48, SUBFRAMES * N_MELS)
    masked = Regularisation(spectral_tilt=0.0, freq_masks=2, freq_width=12, time_width=4, time_every=12).features(
        features, torch.Generator().manual_seed(1))
    assert masked.shape == features.shape and set(masked.unique().tolist()) <= {0.0, 1.0}
    assert 0 < (masked == 0).float().mean() < 0.3


def test_vocal_tract_warp_moves_spectral_peaks_both_ways_and_keeps_the_shape():
    features = torch.zeros(16, 8, SUBFRAMES * N_MELS)
    features.view(16, 8 * SUBFRAMES, N_MELS)[:, :, N_MELS // 2] = 1.0
    warped = Regularisation(vtl_warp=0.15, spectral_tilt=0.0, freq_masks=0, time_every=10**9).features(
        features, torch.Generator().manual_seed(2))
    assert warped.shape == features.shape
    peaks = warped.view(16, 8 * SUBFRAMES, N_MELS).argmax(-1)[:, 0]
    assert (peaks > N_MELS // 2).any() and (peaks < N_MELS // 2).any()
    assert (peaks - N_MELS // 2).abs().max() <= round(0.15 * N_MELS // 2) + 1


def test_no_vocal_tract_warp_leaves_the_spectrum_alone():
    features = torch.randn(4, 8, SUBFRAMES * N_MELS)
    same = Regularisation(vtl_warp=0.0, spectral_tilt=0.0, freq_masks=0, time_every=10**9).features(
        features, torch.Generator().manual_seed(2))
    assert torch.equal(same, features)


def test_spectral_tilt_adds_one_smooth_curve_per_sequence_to_every_frame():
    features = torch.zeros(8, 6, SUBFRAMES * N_MELS)
    tilted = Regularisation(spectral_tilt=0.3, vtl_warp=0.0, freq_masks=0, time_every=10**9).features(
        features, torch.Generator().manual_seed(3)).view(8, 6 * SUBFRAMES, N_MELS)
    assert torch.equal(tilted, tilted[:, :1].expand_as(tilted))  # the same curve in every frame of a sequence
    curves = tilted[:, 0]
    assert not torch.allclose(curves[0], curves[1])  # a new curve per sequence
    assert curves.abs().max() <= 3 * 0.3 + 1e-6
    assert curves.diff(dim=1).abs().max() < 0.1  # smooth across neighbouring bands

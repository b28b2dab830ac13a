"""Specification of the DSM text stream: alignment of timed words to frames, and words back."""

import numpy as np
import pytest

from models.dsm_streams import (BOUNDARY, FIRST_WORD, FRAME_S, PAD, TimedWord, WordDecoder, WordEnded, WordStarted,
                                WordTokenizer, align_text_stream, allowed_after, decode_words, word_error_rate,
                                word_errors)

TAU = 6
TOKENIZER = WordTokenizer(["go", "to", "the", "red", "cube"])


def test_the_dsm_token_ids_are_moshis():
    assert (BOUNDARY, PAD, FIRST_WORD) == (0, 3, 4)
    assert TOKENIZER.token("go") == 4 and TOKENIZER.word(8) == "cube" and TOKENIZER.size == 9


def test_a_word_is_its_boundary_token_tau_frames_after_its_start_then_its_token_and_pads_elsewhere():
    stream = align_text_stream([TimedWord("red", 0.40, 0.70)], 20, TOKENIZER, TAU)  # starts at frame 5
    expected = np.full(20, PAD)
    expected[5 + TAU], expected[5 + TAU + 1] = BOUNDARY, TOKENIZER.token("red")
    assert stream.tokens.tolist() == expected.tolist()


def test_the_activity_stream_marks_the_frames_inside_the_word_delayed_by_tau():
    stream = align_text_stream([TimedWord("red", 0.40, 0.70)], 20, TOKENIZER, TAU)
    # frames 5..8 have their centres (0.44 .. 0.68 s) inside the word
    assert np.flatnonzero(stream.activity).tolist() == [5 + TAU, 6 + TAU, 7 + TAU, 8 + TAU]


def test_a_word_starting_while_the_previous_token_is_written_waits_for_the_next_free_frame():
    words = [TimedWord("to", 0.40, 0.48), TimedWord("the", 0.48, 0.60)]  # frames 5 and 6
    stream = align_text_stream(words, 20, TOKENIZER, TAU)
    assert stream.boundaries == [5 + TAU, 5 + TAU + 2]


def test_a_word_whose_tokens_do_not_fit_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        align_text_stream([TimedWord("red", 0.40, 0.70)], 5 + TAU + 1, TOKENIZER, TAU)


def test_a_word_outside_the_vocabulary_is_refused():
    with pytest.raises(KeyError):
        align_text_stream([TimedWord("blue", 0.4, 0.7)], 20, TOKENIZER, TAU)


def test_a_word_may_only_follow_a_boundary_and_a_boundary_only_precede_a_word():
    after_boundary = allowed_after(BOUNDARY, TOKENIZER.size)
    after_pad = allowed_after(PAD, TOKENIZER.size)
    assert np.flatnonzero(after_boundary).tolist() == list(range(FIRST_WORD, TOKENIZER.size))
    assert np.flatnonzero(after_pad).tolist() == [BOUNDARY, PAD]
    assert allowed_after(TOKENIZER.token("red"), TOKENIZER.size).tolist() == after_pad.tolist()


def test_decoding_the_aligned_streams_gives_the_words_at_frame_resolution():
    words = [TimedWord("go", 0.16, 0.40), TimedWord("to", 0.40, 0.56), TimedWord("red", 0.80, 1.20)]
    stream = align_text_stream(words, 40, TOKENIZER, TAU)
    decoded = decode_words(stream.tokens, stream.activity, TOKENIZER, TAU)
    assert decoded == [WordEnded("go", 2 * FRAME_S, 5 * FRAME_S), WordEnded("to", 5 * FRAME_S, 7 * FRAME_S),
                       WordEnded("red", 10 * FRAME_S, 15 * FRAME_S)]


def test_a_word_is_started_the_frame_its_token_arrives_and_ended_the_frame_its_speech_stops():
    stream = align_text_stream([TimedWord("red", 0.40, 0.70)], 24, TOKENIZER, TAU)
    decoder = WordDecoder(TOKENIZER, TAU)
    events = {t: decoder.feed(int(tok), float(a)) for t, (tok, a) in enumerate(zip(stream.tokens, stream.activity))}
    assert {t: e for t, e in events.items() if e} == {
        5 + TAU + 1: [WordStarted("red", 5 * FRAME_S)],
        9 + TAU: [WordEnded("red", 5 * FRAME_S, 9 * FRAME_S)],  # frame 9 is the first not inside the word
    }


def test_a_word_followed_at_once_by_another_ends_where_the_next_starts():
    words = [TimedWord("red", 0.40, 0.72), TimedWord("cube", 0.72, 1.0)]
    stream = align_text_stream(words, 30, TOKENIZER, TAU)
    activity = np.ones_like(stream.activity)  # speech throughout: only the next word ends the first
    decoded = decode_words(stream.tokens, activity, TOKENIZER, TAU)
    assert [(w.text, w.end_s) for w in decoded] == [("red", 9 * FRAME_S), ("cube", 30 * FRAME_S - TAU * FRAME_S)]


def test_finishing_ends_the_open_word_at_the_last_frame_seen():
    decoder = WordDecoder(TOKENIZER, TAU)
    for token in [PAD] * 8 + [BOUNDARY, TOKENIZER.token("go")] + [PAD] * 2:
        decoder.feed(token, 1.0)
    assert decoder.finish() == [WordEnded("go", 2 * FRAME_S, (12 - TAU) * FRAME_S)]
    assert decoder.finish() == []


def test_word_errors_count_substitutions_deletions_and_insertions():
    assert word_errors("go to the red cube".split(), "go to the red cube".split()) == 0
    assert word_errors("go to the red cube".split(), "go the blue cube now".split()) == 3
    assert word_error_rate([["a", "b"], ["c"]], [["a"], ["c", "d"]]) == pytest.approx(2 / 3)

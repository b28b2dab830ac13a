"""Specification of the demo world's grammar (models/world_grammar.py, ../shared/WORLD.md)."""

import pytest

from models.world_grammar import COLORS, DIRECTIONS, NUMBERS, SHAPES, sample_sentences, vocabulary


@pytest.fixture(scope="module")
def sentences():
    return sample_sentences(3000, seed=0)


def test_the_same_seed_draws_the_same_sentences_and_another_seed_others(sentences):
    assert [s.text for s in sample_sentences(3000, seed=0)] == [s.text for s in sentences]
    assert [s.text for s in sample_sentences(100, seed=1)] != [s.text for s in sentences[:100]]


def test_sentences_are_distinct(sentences):
    assert len({s.text for s in sentences}) == 3000


def test_the_grammar_has_far_more_than_3000_sentences():
    assert len(sample_sentences(30000, seed=2)) == 30000


def test_every_word_said_is_in_the_published_word_list(sentences):
    words = set(vocabulary())
    assert {w for s in sentences for w in s.words} <= words


def test_every_word_of_the_list_is_said_by_some_sentence():
    said = {w for s in sample_sentences(30000, seed=3) for w in s.words}
    assert set(vocabulary()) <= said


def test_the_word_list_is_a_few_hundred_sorted_lowercase_words():
    words = vocabulary()
    assert 200 <= len(words) <= 500
    assert words == sorted(set(words)) and all(w.isalpha() and w.islower() and w.isascii() for w in words)


def test_numbers_zero_to_twenty_are_spoken_as_words():
    words = set(vocabulary())
    assert set(NUMBERS) <= words and len(NUMBERS) == 21 and not any(ch.isdigit() for w in words for ch in w)


def test_a_reach_goal_names_the_colour_and_shape_the_sentence_says(sentences):
    for s in (s for s in sentences if s.kind == "reach"):
        color, shape = s.goal["color"], s.goal["shape"]
        assert (color in s.words if color else not set(COLORS) & set(s.words)), s.text
        assert (shape in s.words if shape else not set(SHAPES) & set(s.words)), s.text


def test_a_move_goal_goes_the_said_number_of_steps_in_the_said_direction(sentences):
    def counted_steps(words):  # the number word right before "step(s)"; "step" may also be the verb
        return next((NUMBERS.index(a) for a, b in zip(words, words[1:]) if b in ("step", "steps") and a in NUMBERS),
                    None)

    counted = [s for s in sentences if s.kind == "move" and counted_steps(s.words) is not None]
    assert len(counted) > 100
    for s in counted:
        n = counted_steps(s.words)
        direction = next(w for w in s.words if w in DIRECTIONS)
        ux, uy = DIRECTIONS[direction]
        assert (s.goal["dx"], s.goal["dy"]) == (ux * n, uy * n), s.text


def test_questions_and_small_talk_carry_no_goal_and_commands_do(sentences):
    for s in sentences:
        assert (s.goal is None) == (s.kind in ("question", "small_talk")), s.text

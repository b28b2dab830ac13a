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


# -- the table and the answers the language model is taught (models/world_grammar.answer) --

from models.world_grammar import (Sentence, Table, TableObject, answer, context_text, region_of,  # noqa: E402
                                  table_context)

TABLE = Table((0.0, 0.0), (TableObject("red", "cube", -6.0, 5.0), TableObject("blue", "ball", 3.0, 4.0),
                           TableObject("blue", "ring", 0.0, -2.0)), {"action": "reach", "color": "red", "shape": "cube"})


def reach(color, shape, text="go to it"):
    return Sentence(text, "reach", {"action": "reach", "color": color, "shape": shape})


def test_questions_say_what_they_ask_and_other_sentences_ask_nothing(sentences):
    for s in sentences:
        assert (s.query is not None) == (s.kind == "question"), s.text


def test_reaching_an_object_on_the_table_names_it_in_reply_and_goal():
    assert answer(reach("red", "cube"), TABLE) == {
        "reply": "Going to the red cube.", "goal": {"action": "reach", "color": "red", "shape": "cube"}}


def test_an_object_not_on_the_table_gets_a_reply_saying_so_and_no_goal():
    assert answer(reach("green", "ball"), TABLE) == {"reply": "There is no green ball on the table.", "goal": None}
    assert answer(reach("yellow", None), TABLE) == {"reply": "There is no yellow one on the table.", "goal": None}


def test_a_colour_or_shape_alone_reaches_the_one_object_that_fits_and_asks_when_two_do():
    assert answer(reach(None, "ball"), TABLE)["goal"] == {"action": "reach", "color": "blue", "shape": "ball"}
    assert answer(reach("blue", None), TABLE) == {"reply": "Which one? I see a blue ball and a blue ring.", "goal": None}


def test_questions_are_answered_from_the_table():
    def asked(**query):
        return answer(Sentence("?", "question", None, query), TABLE)

    assert asked(ask="distance", color="blue", shape="ball") == {"reply": "The blue ball is five steps away.", "goal": None}
    assert asked(ask="where", color="red", shape="cube")["reply"] == "The red cube is in the top left corner."
    assert asked(ask="objects")["reply"] == "I see a red cube, a blue ball and a blue ring."
    assert asked(ask="doing")["reply"] == "I am going to the red cube."
    assert asked(ask="exists", color="green", shape="ring")["reply"] == "There is no green ring on the table."
    assert asked(ask="compare", color="blue", shape="ring", relation="less than", steps=3)["reply"] == \
        "Yes, the blue ring is two steps away."


def test_the_context_names_every_object_with_its_region_and_distance_in_words():
    assert table_context(TABLE) == ("gripper centre, going to the red cube. red cube top left, eight; "
                                    "blue ball top right, five; blue ring centre, two.")
    assert region_of(-6, 5) == "top_left" and region_of(0, -2) == "centre" and region_of(7, 0) == "right"


def test_a_table_map_gives_the_context_of_the_table_it_describes():
    assert context_text(TABLE.to_state()) == table_context(TABLE)


@pytest.mark.parametrize("state", [{"objects": [{"color": "pink", "shape": "cube", "x": 0, "y": 0}]},
                                   {"gripper": [0]}, {"objects": "red cube"}, {"table": []},
                                   {"objects": [{"color": "red", "shape": "cube", "x": 0, "y": 0}] * 2}])
def test_a_map_that_is_no_table_is_refused_saying_why(state):
    with pytest.raises(ValueError):
        context_text(state)

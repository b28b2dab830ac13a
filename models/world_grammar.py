"""The demo world's grammar (../shared/WORLD.md): what a person may say to the table robot.

The one source of the world's vocabulary, its sentences and the goals they carry, for every
model that deals with the world (speech recognition and synthesis, the language model, the
goal-conditioned robot). Pure and seeded: :func:`sample_sentences` draws distinct sentences
with their goals, :func:`vocabulary` publishes the plain word list (every word the grammar
can produce, and nothing else).

Words are lowercase ASCII, numbers are spoken as words (``zero`` .. ``twenty``) and there is
no punctuation, so a sentence is exactly its words joined by single spaces.

Goals (``None`` for questions and small talk)::

    {"action": "reach", "color": "red", "shape": "cube"}   # shape or colour may be None
    {"action": "move", "dx": -2, "dy": 0}                   # steps; right and up are positive
    {"action": "region", "region": "top_left"}
    {"action": "stop" | "wait" | "resume" | "faster" | "slower" | "restart"}
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("cube", "ball", "ring")
SHAPE_PLURALS = {"cube": "cubes", "ball": "balls", "ring": "rings"}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
           "nineteen", "twenty")
# direction word -> (dx, dy)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, 1), "down": (0, -1),
              "forward": (0, 1), "backward": (0, -1)}
# spoken region -> region name
REGIONS = {
    "the left side": "left", "the right side": "right", "the left": "left", "the right": "right",
    "the top": "top", "the bottom": "bottom", "the top edge": "top", "the bottom edge": "bottom",
    "the centre": "centre", "the middle": "centre", "the centre of the table": "centre",
    "the middle of the table": "centre",
    "the top left corner": "top_left", "the top right corner": "top_right",
    "the bottom left corner": "bottom_left", "the bottom right corner": "bottom_right",
    "the upper left corner": "top_left", "the upper right corner": "top_right",
    "the lower left corner": "bottom_left", "the lower right corner": "bottom_right",
}
REACH_VERBS = ("go to", "move to", "touch", "reach", "reach for", "head for", "head to", "get to",
               "point at", "find", "drive to", "tap", "go over to", "move over to", "take me to",
               "approach", "visit", "poke", "aim for", "steer to")
REGION_VERBS = ("go to", "move to", "head to", "get to", "go back to", "back to", "return to",
                "drive to", "go over to", "steer to", "slide to")
MOVE_VERBS = ("move", "go", "step", "slide", "shift", "drive", "head", "nudge")
AMOUNTS = ("a bit", "a little", "a little bit", "slightly", "just a bit")
CONTROLS = {
    "stop": "stop", "halt": "stop", "freeze": "stop", "stop right there": "stop", "stop moving": "stop",
    "wait": "wait", "hold on": "wait", "wait a moment": "wait", "pause": "wait", "hang on": "wait",
    "wait a second": "wait", "hold still": "wait",
    "carry on": "resume", "keep going": "resume", "go on": "resume", "continue": "resume",
    "resume": "resume", "go ahead": "resume", "keep moving": "resume",
    "faster": "faster", "go faster": "faster", "speed up": "faster", "hurry up": "faster",
    "move faster": "faster", "quicker": "faster",
    "slower": "slower", "go slower": "slower", "slow down": "slower", "move slower": "slower",
    "more slowly": "slower", "gently": "slower", "carefully": "slower",
    "start again": "restart", "start over": "restart", "begin again": "restart", "reset": "restart",
    "try again": "restart", "from the beginning": "restart",
}
PREFIXES = ("", "", "", "", "please", "could you", "can you", "would you", "could you please",
            "can you please", "would you please", "now", "then", "and", "and then", "okay", "okay now",
            "now please", "robot", "hey robot", "robot please", "i want you to", "i would like you to",
            "so", "alright", "next", "first", "after that", "quickly", "slowly")
SUFFIXES = ("", "", "", "", "please", "now", "then", "right now", "for me", "again", "thanks",
            "thank you", "now please", "please robot", "if you can", "when you are ready", "quickly",
            "slowly")
GREETINGS = ("hello", "hi", "hi there", "hello there", "hey", "hey there", "good morning",
             "good afternoon", "good evening", "hello robot", "hi robot", "hey robot", "good morning robot")
THANKS = ("thank you", "thanks", "thanks a lot", "thank you very much", "many thanks", "thanks robot",
          "thank you robot", "cheers")
REPLIES = ("yes", "no", "yes please", "no thanks", "no thank you", "okay", "alright", "sure", "of course",
           "not really", "never mind", "forget it", "sorry", "my mistake", "that is right", "that is wrong",
           "not that one", "the other one", "well done", "good job", "great", "nice", "perfect", "excellent",
           "very good", "goodbye", "bye", "see you later", "how are you", "i am fine", "exactly",
           "maybe later", "that is enough", "that is fine", "yes that one", "no not that one")
STATE_QUESTIONS = ("where are you", "what are you doing", "which objects do you see", "what do you see",
                   "what is on the table", "how many objects are there", "how many objects do you see",
                   "are you moving", "are you done", "what can you do", "where are you going",
                   "what is next", "can you hear me", "what is your position", "which one are you going to",
                   "are you still moving", "what are you looking at", "how far did you go")
QUESTION_OPENERS = ("", "", "", "robot", "hey robot", "tell me", "please tell me", "can you tell me",
                    "okay", "so", "and")


@dataclass(frozen=True)
class Sentence:
    """One thing a person may say: its text (words joined by spaces), what kind of utterance it
    is, and the goal it asks the robot for (None for questions and small talk)."""

    text: str
    kind: str  # "reach" | "move" | "region" | "control" | "question" | "small_talk"
    goal: dict[str, Any] | None

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.text.split())


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _object_phrase(rng: random.Random) -> tuple[str, str | None, str | None]:
    """(phrase, colour, shape): "the red cube", "the green one", "the ball", "that blue ring"."""
    form = rng.random()
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    determiner = rng.choice(("the", "the", "the", "that", "this"))
    if form < 0.7:
        return _join(determiner, color, shape), color, shape
    if form < 0.85:
        return _join(determiner, color, "one"), color, None
    return _join(determiner, shape), None, shape


def _reach(rng: random.Random) -> Sentence:
    phrase, color, shape = _object_phrase(rng)
    text = _join(rng.choice(PREFIXES), rng.choice(REACH_VERBS), phrase, rng.choice(SUFFIXES))
    if rng.random() < 0.08:  # "the green one, please": the object alone
        text = _join(phrase, rng.choice(("please", "", "now", "next")))
    return Sentence(text, "reach", {"action": "reach", "color": color, "shape": shape})


def _move(rng: random.Random) -> Sentence:
    direction = rng.choice(tuple(DIRECTIONS))
    ux, uy = DIRECTIONS[direction]
    to = rng.choice(("", "to the")) if direction in ("left", "right") else ""
    form = rng.random()
    if form < 0.45:
        n = rng.randrange(0, len(NUMBERS))
        amount = _join(NUMBERS[n], "step" if n == 1 else "steps")
    elif form < 0.75:
        n, amount = 1, rng.choice(AMOUNTS)
    else:
        n, amount = 1, ""
    verb = rng.choice(MOVE_VERBS)
    middle = _join(verb, amount, to, direction) if rng.random() < 0.8 or not amount else _join(verb, to, direction, amount)
    text = _join(rng.choice(PREFIXES), middle, rng.choice(SUFFIXES))
    return Sentence(text, "move", {"action": "move", "dx": ux * n, "dy": uy * n})


def _region(rng: random.Random) -> Sentence:
    spoken = rng.choice(tuple(REGIONS))
    text = _join(rng.choice(PREFIXES), rng.choice(REGION_VERBS), spoken, rng.choice(SUFFIXES))
    return Sentence(text, "region", {"action": "region", "region": REGIONS[spoken]})


def _control(rng: random.Random) -> Sentence:
    spoken = rng.choice(tuple(CONTROLS))
    before = rng.choice(("", "", "", "please", "okay", "now", "robot", "hey robot", "and", "okay now"))
    after = rng.choice(("", "", "", "please", "now", "right now", "thanks", "for a moment", "again"))
    return Sentence(_join(before, spoken, after), "control", {"action": CONTROLS[spoken]})


def _question(rng: random.Random) -> Sentence:
    form = rng.random()
    opener = rng.choice(QUESTION_OPENERS)
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    if form < 0.3:
        body = rng.choice(STATE_QUESTIONS)
    elif form < 0.5:
        body = _join(rng.choice(("how far is", "how far away is", "how close is", "where is", "how far are you from")),
                     "the", color, shape)
    elif form < 0.7:
        body = _join(rng.choice(("is there a", "do you see a", "can you see a", "is there any", "can you find a")),
                     color, shape)
    elif form < 0.78:
        body = _join(rng.choice(("what colour is the", "where is the", "which colour is the")), shape)
    elif form < 0.85:
        n = rng.randrange(0, len(NUMBERS))
        body = _join("is the", color, shape, rng.choice(("", "more than", "less than", "about")), NUMBERS[n],
                     "step" if n == 1 else "steps", "away")
    elif form < 0.93:
        body = _join(rng.choice(("how many", "which")), rng.choice((color, "")), SHAPE_PLURALS[shape],
                     rng.choice(("do you see", "are there", "are on the table")))
    else:
        body = _join("where are the", rng.choice((color, "")), SHAPE_PLURALS[shape])
    return Sentence(_join(opener, body), "question", None)


def _small_talk(rng: random.Random) -> Sentence:
    pool = rng.choice((GREETINGS, THANKS, REPLIES, REPLIES))
    text = rng.choice(pool)
    if pool is THANKS and rng.random() < 0.3:
        text = _join(text, rng.choice(("that was great", "well done", "good job")))
    return Sentence(text, "small_talk", None)


# kind -> (weight, production)
KINDS: dict[str, tuple[float, Callable[[random.Random], Sentence]]] = {
    "reach": (0.30, _reach),
    "move": (0.22, _move),
    "region": (0.13, _region),
    "control": (0.12, _control),
    "question": (0.15, _question),
    "small_talk": (0.08, _small_talk),
}


def sample_sentence(rng: random.Random) -> Sentence:
    """One sentence drawn by ``rng``, its kind chosen by the weights of :data:`KINDS`."""
    kinds = tuple(KINDS)
    kind = rng.choices(kinds, weights=[KINDS[k][0] for k in kinds])[0]
    return KINDS[kind][1](rng)


def sample_sentences(n: int, seed: int = 0) -> list[Sentence]:
    """``n`` distinct sentences (by text), in the order drawn; the same for the same seed.

    Raises ``ValueError`` if the grammar runs out of new sentences (it has far more than
    tens of thousands).
    """
    rng = random.Random(seed)
    seen: dict[str, Sentence] = {}
    misses = 0
    while len(seen) < n:
        sentence = sample_sentence(rng)
        if sentence.text in seen:
            misses += 1
            if misses > 50 * n + 1000:
                raise ValueError(f"only {len(seen)} distinct sentences after {misses} repeats")
            continue
        seen[sentence.text] = sentence
    return list(seen.values())


def vocabulary() -> list[str]:
    """Every word the grammar can say, sorted: the published word list."""
    phrases: list[str] = [*COLORS, *SHAPES, *SHAPE_PLURALS.values(), *NUMBERS, "step", "steps", "one",
                          *DIRECTIONS, "to the", "the that this", *REGIONS, *REACH_VERBS, *REGION_VERBS,
                          *MOVE_VERBS, *AMOUNTS, *CONTROLS, *PREFIXES, *SUFFIXES, *GREETINGS, *THANKS,
                          "that was great well done good job", *REPLIES, *STATE_QUESTIONS, *QUESTION_OPENERS,
                          "please okay now robot hey and next", "right now thanks for a moment again",
                          "how far is how far away is how close is where is how far are you from",
                          "is there a do you see a can you see a is there any can you find a",
                          "what colour is the where is the which colour is the",
                          "how many which where are the do you see are there are on the table",
                          "is the more than less than about away"]
    return sorted({word for phrase in phrases for word in phrase.split()})

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

A question carries its ``query`` (what it asks: ``{"ask": "distance", "color": "red",
"shape": "cube"}``, ...). The second half is what the language model is taught: a
:class:`Table` (the gripper, the objects, the goal pursued; positions in steps), the one text
the model reads of it (:func:`table_context`, in training and in serving), and
:func:`answer`, the reply and goal a sentence gets at a table -- an object that is not there
gets a reply saying so and no goal; questions are answered from the table.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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
# question -> what it asks (the query of :meth:`answer`)
STATE_QUESTIONS = {
    "where are you": "where_self", "what are you doing": "doing", "which objects do you see": "objects",
    "what do you see": "objects", "what is on the table": "objects", "how many objects are there": "count_all",
    "how many objects do you see": "count_all", "are you moving": "moving", "are you done": "done",
    "what can you do": "abilities", "where are you going": "heading", "what is next": "next",
    "can you hear me": "hearing", "what is your position": "where_self", "which one are you going to": "heading",
    "are you still moving": "moving", "what are you looking at": "objects", "how far did you go": "travelled",
}
QUESTION_OPENERS = ("", "", "", "robot", "hey robot", "tell me", "please tell me", "can you tell me",
                    "okay", "so", "and")


@dataclass(frozen=True)
class Sentence:
    """One thing a person may say: its text (words joined by spaces), what kind of utterance it
    is, and the goal it asks the robot for (None for questions and small talk)."""

    text: str
    kind: str  # "reach" | "move" | "region" | "control" | "question" | "small_talk"
    goal: dict[str, Any] | None
    # What a question asks ({"ask": "distance", "color": "red", "shape": "cube"}, ...; see
    # :func:`answer`), None for the other kinds.
    query: dict[str, Any] | None = None

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
    # The draws (and so the sentences of a seed) are those of the grammar before questions
    # carried their query: the speech corpus and its held-out split depend on them.
    form = rng.random()
    opener = rng.choice(QUESTION_OPENERS)
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    if form < 0.3:
        body = rng.choice(tuple(STATE_QUESTIONS))
        query: dict[str, Any] = {"ask": STATE_QUESTIONS[body]}
    elif form < 0.5:
        verb = rng.choice(("how far is", "how far away is", "how close is", "where is", "how far are you from"))
        body = _join(verb, "the", color, shape)
        query = {"ask": "where" if verb == "where is" else "distance", "color": color, "shape": shape}
    elif form < 0.7:
        body = _join(rng.choice(("is there a", "do you see a", "can you see a", "is there any", "can you find a")),
                     color, shape)
        query = {"ask": "exists", "color": color, "shape": shape}
    elif form < 0.78:
        verb = rng.choice(("what colour is the", "where is the", "which colour is the"))
        body = _join(verb, shape)
        query = {"ask": "where" if verb == "where is the" else "colour", "color": None, "shape": shape}
    elif form < 0.85:
        n = rng.randrange(0, len(NUMBERS))
        relation = rng.choice(("", "more than", "less than", "about"))
        body = _join("is the", color, shape, relation, NUMBERS[n], "step" if n == 1 else "steps", "away")
        query = {"ask": "compare", "color": color, "shape": shape, "relation": relation or "exactly", "steps": n}
    elif form < 0.93:
        ask, which = rng.choice(("how many", "which")), rng.choice((color, ""))
        body = _join(ask, which, SHAPE_PLURALS[shape], rng.choice(("do you see", "are there", "are on the table")))
        query = {"ask": "count" if ask == "how many" else "list", "color": which or None, "shape": shape}
    else:
        which = rng.choice((color, ""))
        body = _join("where are the", which, SHAPE_PLURALS[shape])
        query = {"ask": "where_all", "color": which or None, "shape": shape}
    return Sentence(_join(opener, body), "question", None, query)


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


def normal_text(text: str) -> str:
    """Lowercase words joined by single spaces: how sentences are compared for held-out splits."""
    return " ".join(re.findall(r"[a-z]+", text.lower()))


def says_any(text: str, sentences: set[str], min_words: int = 1) -> bool:
    """``text`` contains one of ``sentences`` (:func:`normal_text` forms) of at least
    ``min_words`` words as a run of its words."""
    words = normal_text(text).split()
    return any(" ".join(words[i:j]) in sentences for i in range(len(words))
               for j in range(i + min_words, len(words) + 1))


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


# -- the table, and what the language model answers ---------------------------------------
#
# Positions are in steps (the unit of "move two steps left"): x from -TABLE_STEPS (left) to
# TABLE_STEPS (right), y from -TABLE_STEPS (bottom) to TABLE_STEPS (top). A coordinate within
# CENTRE_STEPS of 0 is neither left nor right (top nor bottom). Distances are from the gripper,
# rounded to whole steps, so they are at most twenty (a number the grammar can say).

TABLE_STEPS = 7
CENTRE_STEPS = 2
# region name -> where something is, as a reply says it
REGION_PLACES = {
    "top_left": "in the top left corner", "top_right": "in the top right corner",
    "bottom_left": "in the bottom left corner", "bottom_right": "in the bottom right corner",
    "left": "on the left side", "right": "on the right side", "top": "at the top", "bottom": "at the bottom",
    "centre": "in the centre",
}
# region name -> where to go, as a reply says it
REGION_TARGETS = {
    "top_left": "the top left corner", "top_right": "the top right corner", "bottom_left": "the bottom left corner",
    "bottom_right": "the bottom right corner", "left": "the left side", "right": "the right side",
    "top": "the top", "bottom": "the bottom", "centre": "the centre",
}
CONTROL_REPLIES = {"stop": "Stopping.", "wait": "Waiting.", "resume": "Carrying on.", "faster": "Going faster.",
                   "slower": "Going slower.", "restart": "Starting again."}


@dataclass(frozen=True)
class TableObject:
    """One object on the table: its colour, its shape and where it lies (in steps)."""

    color: str
    shape: str
    x: float
    y: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Table:
    """What the language model is told about the world: where the gripper is, the objects on
    the table, and the goal the robot is pursuing (None: it is idle)."""

    gripper: tuple[float, float]
    objects: tuple[TableObject, ...]
    goal: dict[str, Any] | None = None

    def distance(self, obj: TableObject) -> int:
        """Whole steps from the gripper to ``obj``."""
        return int(round(((obj.x - self.gripper[0]) ** 2 + (obj.y - self.gripper[1]) ** 2) ** 0.5))

    def find(self, color: str | None, shape: str | None) -> list[TableObject]:
        """The objects of that colour and shape (None: any), in the table's order."""
        return [o for o in self.objects if (color is None or o.color == color) and (shape is None or o.shape == shape)]

    def to_state(self) -> dict[str, Any]:
        """The wire form :meth:`from_state` reads (a chat ``hello``'s ``context`` map)."""
        return {"gripper": [self.gripper[0], self.gripper[1]],
                "objects": [{"color": o.color, "shape": o.shape, "x": o.x, "y": o.y} for o in self.objects],
                "goal": self.goal}

    @classmethod
    def from_state(cls, state: Any) -> "Table":
        """The table of a wire map ``{"gripper": [x, y], "objects": [{"color", "shape", "x", "y"}, ...],
        "goal": goal | None}`` (positions in steps, clamped to the table). Raises ``ValueError``
        saying what is wrong."""
        if not isinstance(state, dict) or not set(state) <= {"gripper", "objects", "goal"}:
            raise ValueError("the table: a map with 'gripper', 'objects' and optionally 'goal'")

        def coordinate(value: Any, what: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{what}: a number of steps")
            return float(min(TABLE_STEPS, max(-TABLE_STEPS, value)))

        gripper = state.get("gripper", [0, 0])
        if not isinstance(gripper, (list, tuple)) or len(gripper) != 2:
            raise ValueError("gripper: [x, y] in steps")
        objects = state.get("objects", [])
        if not isinstance(objects, list) or len(objects) > len(COLORS) * len(SHAPES):
            raise ValueError(f"objects: a list of at most {len(COLORS) * len(SHAPES)} objects")
        parsed, seen = [], set()
        for i, o in enumerate(objects):
            if not isinstance(o, dict) or set(o) != {"color", "shape", "x", "y"} or o["color"] not in COLORS \
                    or o["shape"] not in SHAPES:
                raise ValueError(f"objects[{i}]: {{'color': one of {list(COLORS)}, 'shape': one of {list(SHAPES)}, "
                                 "'x': steps, 'y': steps}")
            if (o["color"], o["shape"]) in seen:
                raise ValueError(f"objects[{i}]: a second {o['color']} {o['shape']}")
            seen.add((o["color"], o["shape"]))
            parsed.append(TableObject(o["color"], o["shape"], coordinate(o["x"], f"objects[{i}].x"),
                                      coordinate(o["y"], f"objects[{i}].y")))
        goal = state.get("goal")
        if goal is not None and not (isinstance(goal, dict) and goal.get("action") in
                                     ("reach", "move", "region", *CONTROL_REPLIES)):
            raise ValueError("goal: a goal of the demo world (see models/world_grammar.py) or null")
        return cls((coordinate(gripper[0], "gripper x"), coordinate(gripper[1], "gripper y")), tuple(parsed), goal)


def region_of(x: float, y: float) -> str:
    """The region name (a value of :data:`REGIONS`) of a point of the table."""
    side = "left" if x < -CENTRE_STEPS else "right" if x > CENTRE_STEPS else ""
    level = "top" if y > CENTRE_STEPS else "bottom" if y < -CENTRE_STEPS else ""
    if side and level:
        return f"{level}_{side}"
    return side or level or "centre"


def _number(n: int) -> str:
    return NUMBERS[n] if 0 <= n < len(NUMBERS) else "more than twenty"


def _steps(n: int) -> str:
    return f"{_number(n)} {'step' if n == 1 else 'steps'}"


def _a_list(names: Sequence[str]) -> str:
    """"a red cube", "a red cube and a blue ball", "a red cube, a blue ball and a yellow ring"."""
    items = [f"a {name}" for name in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _move_words(dx: int, dy: int) -> str:
    """"two steps left", "one step up", "three steps left and one step up", "zero steps"."""
    parts = []
    if dx:
        parts.append(f"{_steps(abs(dx))} {'right' if dx > 0 else 'left'}")
    if dy:
        parts.append(f"{_steps(abs(dy))} {'up' if dy > 0 else 'down'}")
    return " and ".join(parts) or "zero steps"


def doing_words(goal: dict[str, Any] | None) -> str:
    """What the robot is doing, as the context and the replies say it."""
    if goal is None:
        return "waiting"
    action = goal.get("action")
    if action == "reach":
        return f"going to the {goal.get('color')} {goal.get('shape')}"
    if action == "region":
        return f"going to {REGION_TARGETS.get(goal.get('region'), 'the centre')}"
    if action == "move":
        return f"moving {_move_words(int(goal.get('dx', 0)), int(goal.get('dy', 0)))}"
    return {"stop": "stopped", "wait": "waiting", "resume": "moving", "faster": "moving faster",
            "slower": "moving slower", "restart": "starting again"}.get(action, "waiting")


def table_context(table: Table) -> str:
    """The table as the language model reads it: the system turn of every conversation, in
    training (``headway train lm``) and in serving (a chat ``hello`` whose ``context`` is the
    table's map, :meth:`Table.from_state`). Where the gripper is and what it is doing, then
    each object, its region and how many steps it is from the gripper, in words and short
    (every token of it is prefilled for every conversation): ``gripper centre, waiting.
    red cube top left, seven; blue ball right, three.``"""
    gripper = f"gripper {_region_words(region_of(*table.gripper))}, {doing_words(table.goal)}."
    if not table.objects:
        return f"{gripper} nothing on the table."
    things = "; ".join(f"{o.name} {_region_words(region_of(o.x, o.y))}, {_number(table.distance(o))}"
                       for o in table.objects)
    return f"{gripper} {things}."


def _region_words(region: str) -> str:
    return region.replace("_", " ")


def context_text(state: Any) -> str:
    """:func:`table_context` of a table's wire map (``ValueError`` for a map that is none)."""
    return table_context(Table.from_state(state))


def _described(color: str | None, shape: str | None) -> str:
    """How a reply names what was asked for: "red cube", "green one", "ball"."""
    if color and shape:
        return f"{color} {shape}"
    return f"{color} one" if color else shape or "object"


def answer(sentence: Sentence, table: Table) -> dict[str, Any]:
    """What the language model should answer ``sentence`` said at ``table``: ``{"reply": text
    to speak, "goal": goal | None}`` (../shared/WORLD.md). A reach goal names the object on
    the table (a colour or a shape alone is resolved when one object fits); an object that is
    not there, or a choice the sentence leaves open, gets a reply saying so and no goal.
    Questions are answered from the table."""
    goal = sentence.goal
    if sentence.kind == "reach":
        color, shape = goal["color"], goal["shape"]
        found = table.find(color, shape)
        if not found:
            return {"reply": f"There is no {_described(color, shape)} on the table.", "goal": None}
        if len(found) > 1:
            return {"reply": f"Which one? I see {_a_list([o.name for o in found])}.", "goal": None}
        target = found[0]
        return {"reply": f"Going to the {target.name}.",
                "goal": {"action": "reach", "color": target.color, "shape": target.shape}}
    if sentence.kind == "move":
        return {"reply": f"Moving {_move_words(goal['dx'], goal['dy'])}.", "goal": dict(goal)}
    if sentence.kind == "region":
        return {"reply": f"Going to {REGION_TARGETS[goal['region']]}.", "goal": dict(goal)}
    if sentence.kind == "control":
        return {"reply": CONTROL_REPLIES[goal["action"]], "goal": dict(goal)}
    if sentence.kind == "question":
        return {"reply": _answer_question(sentence.query or {"ask": "objects"}, table), "goal": None}
    return {"reply": _small_talk_reply(sentence.text), "goal": None}


def _answer_question(query: dict[str, Any], table: Table) -> str:
    ask, color, shape = query["ask"], query.get("color"), query.get("shape")
    names = [o.name for o in table.objects]
    moving = table.goal is not None and table.goal.get("action") in ("reach", "region", "move", "resume", "faster",
                                                                       "slower", "restart")
    if ask == "where_self":
        return f"I am {REGION_PLACES[region_of(*table.gripper)]}."
    if ask == "doing":
        return f"I am {doing_words(table.goal)}."
    if ask == "objects":
        return f"I see {_a_list(names)}." if names else "I see nothing on the table."
    if ask == "count_all":
        return f"I see {_number(len(names))} {'object' if len(names) == 1 else 'objects'}."
    if ask == "moving":
        return f"Yes, I am {doing_words(table.goal)}." if moving else "No, I am not moving."
    if ask == "done":
        return f"No, I am {doing_words(table.goal)}." if moving else "Yes, I am done."
    if ask == "heading":
        if table.goal is not None and table.goal.get("action") in ("reach", "region"):
            return f"I am {doing_words(table.goal)}."
        return "I am not going anywhere."
    if ask == "abilities":
        return "I can go to an object, move in steps or go to a part of the table."
    if ask == "next":
        return "Tell me where to go."
    if ask == "hearing":
        return "Yes, I can hear you."
    if ask == "travelled":
        return "I do not count my steps."
    found = table.find(color, shape)
    if ask in ("distance", "where", "exists", "compare", "colour"):
        if not found:
            return f"There is no {_described(color, shape)} on the table."
        if len(found) > 1:
            return f"I see {_a_list([o.name for o in found])}."
        o = found[0]
        place, d = REGION_PLACES[region_of(o.x, o.y)], table.distance(o)
        if ask == "distance":
            return f"The {o.name} is {_steps(d)} away."
        if ask == "where":
            return f"The {o.name} is {place}."
        if ask == "exists":
            return f"Yes, there is a {o.name} {place}."
        if ask == "colour":
            return f"The {o.shape} is {o.color}."
        n, relation = query["steps"], query["relation"]
        holds = {"exactly": d == n, "more than": d > n, "less than": d < n, "about": abs(d - n) <= 1}[relation]
        return f"{'Yes' if holds else 'No'}, the {o.name} is {_steps(d)} away."
    plural = SHAPE_PLURALS[shape]
    kind = f"{color} {plural}" if color else plural
    if ask == "count":
        if not found:
            return f"I see no {kind}."
        return f"I see {_number(len(found))} {f'{color} {shape}' if color else shape if len(found) == 1 else kind}." \
            if len(found) == 1 else f"I see {_number(len(found))} {kind}."
    if ask == "list":
        return f"I see {_a_list([o.name for o in found])}." if found else f"I see no {kind}."
    # where_all
    if not found:
        return f"There are no {kind} on the table."
    return " and ".join(f"{'The' if i == 0 else 'the'} {o.name} is {REGION_PLACES[region_of(o.x, o.y)]}"
                        for i, o in enumerate(found)) + "."


def _small_talk_reply(text: str) -> str:
    if text in GREETINGS:
        return "Hello! Where should I go?"
    if text.startswith(THANKS):
        return "You are welcome."
    if text == "how are you":
        return "I am fine, thank you."
    if text in ("goodbye", "bye", "see you later"):
        return "Goodbye!"
    if text in ("never mind", "forget it", "maybe later", "that is enough", "that is fine"):
        return "Okay, never mind."
    if text in ("sorry", "my mistake"):
        return "No problem."
    if text in ("well done", "good job", "great", "nice", "perfect", "excellent", "very good"):
        return "Thank you!"
    if text in ("not that one", "the other one", "no not that one", "that is wrong"):
        return "Which one should I go to?"
    return "Okay."


def sample_table(rng: random.Random, sentence: Sentence | None = None) -> Table:
    """A table of three or four objects at distinct places, the gripper somewhere, and a goal
    it may be pursuing. Given a ``sentence`` that names an object, the table is drawn so that
    what it names is there (most often), missing, or -- for a colour or a shape alone --
    sometimes there twice: every answer :func:`answer` can give comes up in training."""
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    named = None
    if sentence is not None:
        if sentence.kind == "reach":
            named = (sentence.goal["color"], sentence.goal["shape"])
        elif sentence.query and sentence.query.get("shape"):
            named = (sentence.query.get("color"), sentence.query["shape"])
    count = rng.choice((3, 4))
    if named is None:
        chosen = rng.sample(pairs, count)
    else:
        fits = [p for p in pairs if (named[0] is None or p[0] == named[0]) and (named[1] is None or p[1] == named[1])]
        others = [p for p in pairs if p not in fits]
        case = rng.random()
        if case < 0.3:  # what is named is not on the table
            chosen = rng.sample(others, count)
        elif case < 0.45 and len(fits) > 1:  # it is there twice
            chosen = rng.sample(fits, 2) + rng.sample(others, count - 2)
        else:
            chosen = [rng.choice(fits)] + rng.sample(others, count - 1)
        rng.shuffle(chosen)
    spots = rng.sample([(x, y) for x in range(-TABLE_STEPS, TABLE_STEPS + 1)
                        for y in range(-TABLE_STEPS, TABLE_STEPS + 1)], count + 1)
    objects = tuple(TableObject(c, s, float(x), float(y)) for (c, s), (x, y) in zip(chosen, spots))
    gripper = (float(spots[-1][0]), float(spots[-1][1]))
    form = rng.random()
    if form < 0.4:
        goal = None
    elif form < 0.7:
        target = rng.choice(objects)
        goal = {"action": "reach", "color": target.color, "shape": target.shape}
    elif form < 0.85:
        goal = {"action": "region", "region": rng.choice(tuple(REGION_TARGETS))}
    else:
        goal = {"action": rng.choice(("stop", "wait", "resume", "faster", "slower"))}
    return Table(gripper, objects, goal)

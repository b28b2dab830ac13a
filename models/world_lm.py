"""The embedded language model of the demo world (../shared/WORLD.md): its dialogues, its
tokenizer and model, training and evaluation. ``headway train lm`` (clients/train_lm.py)
runs it; the result is a ``transformers`` directory (``models/checkpoints/world_lm``) that
:class:`models.lm.CausalLM` serves at ``/v1/chat`` like any local model.

**One layout for training and serving.** A dialogue is laid out by the chat format the
server uses for this tokenizer (:class:`models.lm_text.ChatFormat`, here the plain
``User:`` / ``Assistant:`` one): the table as the system turn (:func:`models.world_grammar.table_context`,
the text the server makes of a ``hello`` whose ``context`` is the table's map), earlier
turns, the user's sentence, the reply. The reply is the structured answer as one JSON line
(:func:`reply_line`: ``{"reply": ..., "goal": ...}``), read back by the one parser the
server uses (:func:`models.lm_text.parse_structured`).

**Held out by sentence.** :func:`split_sentences` holds out commands (sentences that ask for
a goal); no training dialogue says a held-out sentence, nor a sentence that contains one
(as words, whatever the case and punctuation), in any turn. Evaluation
(:func:`evaluate`) asks the trained model each held-out command at a table drawn for it
(the object named is on the table, missing, or -- named by colour or shape alone -- there
twice) and counts exact goals and replies, through the serving path's model code
(:class:`models.lm.CausalLM`, greedy, the slot cache).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from models.world_grammar import (Sentence, Table, answer, normal_text, sample_sentences, sample_table, says_any,
                                  table_context)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "world_lm"
COMMAND_KINDS = ("reach", "move", "region", "control")
SENTENCE_SEED = 10  # the grammar's draw for the LM (the speech corpus draws its own)
POOL = 40000  # distinct sentences drawn; the held-out ones come from these
HELDOUT_COMMANDS = 400
HELDOUT_QUESTIONS = 100
MIN_HELDOUT_WORDS = 4  # shorter commands ("stop", "go left") are in too many other sentences
MAX_REPLY_TOKENS = 64

# Model shape: hidden, intermediate, layers, heads, kv heads.
SIZES = {"small": (128, 384, 4, 4, 2), "medium": (192, 512, 4, 4, 2), "tiny": (64, 128, 2, 4, 2)}


def reply_line(answer_: dict[str, Any]) -> str:
    """The structured answer as the model writes it: one line of JSON."""
    return json.dumps({"reply": answer_["reply"], "goal": answer_["goal"]})


def split_sentences(seed: int = SENTENCE_SEED, pool: int = POOL, commands: int = HELDOUT_COMMANDS,
                    questions: int = HELDOUT_QUESTIONS) -> tuple[list[Sentence], list[Sentence]]:
    """(training, held-out) sentences. Held out: ``commands`` commands and ``questions``
    questions of at least :data:`MIN_HELDOUT_WORDS` words, drawn at random from ``pool``
    sentences of the grammar. Training: the other sentences of the pool, except any that
    contains a held-out sentence as a run of words."""
    sentences = sample_sentences(pool, seed=seed)
    rng = random.Random(seed)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    held: list[int] = []
    want = {"command": commands, "question": questions}
    for i in order:
        s = sentences[i]
        group = "command" if s.kind in COMMAND_KINDS else "question" if s.kind == "question" else None
        if group and want[group] > 0 and len(s.words) >= MIN_HELDOUT_WORDS:
            held.append(i)
            want[group] -= 1
    heldout = [sentences[i] for i in sorted(held)]
    chosen = set(held)
    texts = {normal_text(s.text) for s in heldout}
    train = [s for i, s in enumerate(sentences) if i not in chosen]
    return [s for s in train if not _says(s.text, texts)], heldout


def _says(text: str, heldout: set[str]) -> bool:
    """``text`` contains one of the ``heldout`` texts (normalised) as a run of its words."""
    return says_any(text, heldout, MIN_HELDOUT_WORDS)


def leaks(train_texts: Sequence[str], heldout: Sequence[Sentence]) -> list[str]:
    """The training texts that say a held-out sentence (as a run of words, any case): [] when clean."""
    held = {normal_text(s.text) for s in heldout}
    return [t for t in train_texts if _says(t, held)]


def spoken(sentence: Sentence, rng: random.Random) -> str:
    """The sentence as a user may type or a recogniser may write it: as is (most often), or
    with a capital and closing punctuation."""
    text = sentence.text
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
        if rng.random() < 0.7:
            text += "?" if sentence.kind == "question" else rng.choice((".", ".", "!"))
    return text


@dataclass(frozen=True)
class Dialogue:
    """One conversation at one table: the context and turns of (user text, reply line)."""

    context: str
    turns: tuple[tuple[str, str], ...]


# How often a dialogue's sentence is of each kind: questions and control more often than
# among distinct sentences (where the many ways to name an object or a move dominate), and
# reach most often: it is the one kind whose answer needs the table (is the object there?),
# and a 28% share left the grounding unlearnt after 4000 steps (61% right on training
# sentences at fresh tables).
DIALOGUE_KINDS = {"reach": 0.4, "move": 0.14, "region": 0.1, "control": 0.1, "question": 0.2, "small_talk": 0.06}
# How many turns before the last: more turns at one table teach more grounding per context.
EARLIER_TURNS = ((0.5, 0), (0.8, 1), (1.0, 2))


def sample_dialogues(sentences: Sequence[Sentence], n: int, seed: int) -> list[Dialogue]:
    """``n`` dialogues: a table drawn for the last sentence, and one to three turns
    (:data:`EARLIER_TURNS`) of sentences from ``sentences`` (a kind drawn by
    :data:`DIALOGUE_KINDS`, then a sentence of it) answered at that table."""
    rng = random.Random(seed)
    by_kind: dict[str, list[Sentence]] = {}
    for s in sentences:
        by_kind.setdefault(s.kind, []).append(s)
    kinds = [k for k in DIALOGUE_KINDS if k in by_kind]
    weights = [DIALOGUE_KINDS[k] for k in kinds]

    def draw() -> Sentence:
        return rng.choice(by_kind[rng.choices(kinds, weights)[0]])

    out = []
    for _ in range(n):
        last = draw()
        table = sample_table(rng, last)
        r = rng.random()
        earlier = next(n for bound, n in EARLIER_TURNS if r < bound)
        said = [draw() for _ in range(earlier)] + [last]
        turns = tuple((spoken(s, rng), reply_line(answer(s, table))) for s in said)
        out.append(Dialogue(table_context(table), turns))
    return out


def encode_dialogue(tokenizer: Any, fmt: Any, dialogue: Dialogue) -> tuple[list[int], list[int]]:
    """(token ids, labels) of a dialogue laid out as the server lays it out; labels are -100
    except on the replies (and the line end that closes each)."""
    ids = fmt.encode(tokenizer, fmt.conversation(dialogue.context, []))
    labels = [-100] * len(ids)
    for text, reply in dialogue.turns:
        prompt = fmt.encode(tokenizer, fmt.user_turn(text))
        target = fmt.encode(tokenizer, fmt.reply(fmt.content_lead + reply))
        ids += prompt + target
        labels += [-100] * len(prompt) + target
    return ids, labels


def prompt_ids(tokenizer: Any, fmt: Any, context: str, history: Sequence[tuple[str, str]], text: str) -> list[int]:
    """The ids the model answers after: what a ``/v1/chat`` session holds at ``prompt_end``."""
    return fmt.encode(tokenizer, fmt.conversation(context, history) + fmt.user_turn(text))


def build_tokenizer(dialogues: Sequence[Dialogue], vocab_size: int):
    """A byte-level BPE tokenizer (models.lm_build.train_tokenizer) trained on the dialogues' text."""
    from models.lm_build import train_tokenizer
    from models.lm_text import ChatFormat

    layout = ChatFormat("plain")  # the format the server finds for a tokenizer without a chat template
    texts = ["".join(segment.text for segment in layout.conversation(
        d.context, [(role, text) for turn in d.turns for role, text in zip(("user", "assistant"), turn)]))
        for d in dialogues]
    return train_tokenizer(texts, vocab_size)


def build_model(tokenizer: Any, size: str = "small", max_context: int = 1024, seed: int = 0):
    """A randomly initialised Llama of ``size`` (:data:`SIZES`) for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads = SIZES[size]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_context, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def train(model: Any, examples: Sequence[tuple[list[int], list[int]]], *, steps: int, batch_size: int,
          lr: float, seed: int, pad_id: int, warmup: int = 100,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """AdamW, a linear warm-up then cosine decay; the loss of every step. Batches are runs of
    ``batch_size`` examples of similar length (little padding), taken in a random order each
    epoch; right-padded: pads carry no loss and, the model being causal, no real token sees one."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    by_length = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), i))
    runs = [by_length[i:i + batch_size] for i in range(0, len(by_length), batch_size)]
    order: list[int] = []
    losses = []
    for step in range(steps):
        if not order:
            order = torch.randperm(len(runs), generator=generator).tolist()
        picks = runs[order.pop()]
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        width = max(len(examples[i][0]) for i in picks)
        ids = torch.full((len(picks), width), pad_id, dtype=torch.long)
        labels = torch.full((len(picks), width), -100, dtype=torch.long)
        for row, i in enumerate(picks):
            x, y = examples[i]
            ids[row, :len(x)] = torch.tensor(x)
            labels[row, :len(y)] = torch.tensor(y)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


@dataclass(frozen=True)
class Case:
    """One evaluation question: a sentence said at a table, and the right answer."""

    sentence: Sentence
    table: Table
    text: str  # what the user says (the sentence, maybe capitalised)
    expected: dict[str, Any]

    @property
    def missing(self) -> bool:
        """The sentence names an object that is not on the table."""
        return self.sentence.kind == "reach" and not self.table.find(self.sentence.goal["color"],
                                                                     self.sentence.goal["shape"])


def heldout_cases(heldout: Sequence[Sentence], seed: int = SENTENCE_SEED + 1, typed: bool = False) -> list[Case]:
    """Each held-out sentence at a table drawn for it (:func:`models.world_grammar.sample_table`),
    said as a recogniser writes it (lowercase words) or, ``typed``, as a person types it
    (a capital, a full stop or a question mark): the same tables either way."""
    rng = random.Random(seed)
    cases = []
    for s in heldout:
        table = sample_table(rng, s)
        text = s.text[0].upper() + s.text[1:] + ("?" if s.kind == "question" else ".") if typed else s.text
        cases.append(Case(s, table, text, answer(s, table)))
    return cases


def probe_cases(train: Sequence[Sentence], n: int = 200, seed: int = SENTENCE_SEED + 2) -> list[Case]:
    """``n`` training reach commands, each at a table drawn with another seed than training's:
    whether the model checks the named object against the table, measured while it trains
    without looking at the held-out sentences (which only the final evaluation asks)."""
    reach = [s for s in train if s.kind == "reach"]
    random.Random(seed).shuffle(reach)
    return heldout_cases(reach[:n], seed=seed)


def generate(lm: Any, fmt: Any, prompts: Sequence[list[int]], max_tokens: int = MAX_REPLY_TOKENS,
             batch: int = 64) -> list[str]:
    """Greedy replies to ``prompts`` (token ids) by a :class:`models.lm.CausalLM`, as a chat
    session decodes them: packed rows of slots, stopping at the format's stop strings and
    end-of-sequence tokens; the reply text without the format's lead."""
    from models.lm import Row
    from models.lm_text import ReplyText

    replies: list[str] = []
    for start in range(0, len(prompts), batch):
        group = prompts[start:start + batch]
        slots = list(range(len(group)))
        for slot in slots:
            lm.open_slot(slot)
        texts = [ReplyText(lm.tokenizer, fmt.stop) for _ in group]
        logits = lm.forward([Row(slot, 0, ids) for slot, ids in zip(slots, group)])
        positions = [len(ids) for ids in group]
        live = set(slots)
        for _ in range(max_tokens):
            rows = []
            for slot in sorted(live):
                token = int(torch.argmax(logits[slot]))
                if token in fmt.stop_ids:
                    live.discard(slot)
                    continue
                texts[slot].push(token)
                if texts[slot].stopped:
                    live.discard(slot)
                    continue
                rows.append(Row(slot, positions[slot], [token]))
                positions[slot] += 1
            if not rows:
                break
            out = lm.forward(rows)
            logits = list(logits)
            for row, row_logits in zip(rows, out):
                logits[row.slot] = row_logits
        for slot in slots:
            lm.close_slot(slot)
        lead = fmt.content_lead
        replies += [t.sent[len(lead):] if lead and t.sent.startswith(lead) else t.sent for t in texts]
    return replies


def evaluate(lm: Any, cases: Sequence[Case]) -> dict[str, Any]:
    """Ask ``lm`` every case (greedy, no history) and score it: per kind, how many replies
    parse as structured output, how many goals and replies are exactly right; and the cases
    whose object is not on the table (right when the goal is null and the reply is the one
    that says so)."""
    from models.lm_text import ChatFormat, parse_structured

    fmt = ChatFormat.for_tokenizer(lm.tokenizer)
    prompts = [prompt_ids(lm.tokenizer, fmt, table_context(c.table), [], c.text) for c in cases]
    replies = generate(lm, fmt, prompts)
    groups: dict[str, dict[str, int]] = {}
    examples = []

    def count(group: str, parsed: bool, goal_ok: bool, reply_ok: bool) -> None:
        g = groups.setdefault(group, {"n": 0, "parsed": 0, "goal_exact": 0, "reply_exact": 0})
        g["n"] += 1
        g["parsed"] += parsed
        g["goal_exact"] += goal_ok
        g["reply_exact"] += reply_ok

    for case, reply in zip(cases, replies):
        output = parse_structured(reply)
        parsed = output is not None and set(output) == {"reply", "goal"}
        goal_ok = parsed and output["goal"] == case.expected["goal"]
        reply_ok = parsed and output["reply"] == case.expected["reply"]
        kind = case.sentence.kind
        typed = "typed_" if case.text != case.sentence.text else ""
        for group in ([kind] + (["commands"] if kind in COMMAND_KINDS else []) +
                      (["not_on_table"] if case.missing else [])):
            count(typed + group, parsed, goal_ok, reply_ok)
        if not goal_ok and len(examples) < 8:
            examples.append({"said": case.text, "expected": case.expected, "got": reply})
    result: dict[str, Any] = {}
    for group, g in groups.items():
        n = max(1, g["n"])
        result[group] = {"n": g["n"], "parsed": round(g["parsed"] / n, 4),
                         "goal_exact": round(g["goal_exact"] / n, 4), "reply_exact": round(g["reply_exact"] / n, 4)}
    result["wrong_examples"] = examples
    return result

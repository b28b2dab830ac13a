"""Text in and out of a causal LM, for streamed conversations: tokenising a prompt while it
arrives, the chat format of a conversation, and detokenising a reply token by token.

Pure functions of a ``transformers`` tokenizer; no model, no I/O.

**The tokens of a conversation** are defined segment by segment (:class:`ChatFormat`):
template text (``User:``, ``<|user|>``, ...) is tokenised with the model's special tokens
recognised, content (the context, what the user says, what the model replied) with them
split into ordinary text, so a user cannot type a control token. Each segment is tokenised
whole. This is what "a full prefill of the final prompt" means here, and what
:meth:`ChatFormat.encode` returns for a finished conversation.

**Incremental tokenisation** (:class:`IncrementalTokenizer`) tokenises a content segment
while it arrives, committing only tokens that more text cannot change. A byte-level BPE
(GPT-2, Llama 3, Qwen, the tokenizers of :mod:`models.lm_build`) pre-splits text so that no
token spans a non-space character followed by a space: the place before such a space is a
*stable boundary*. Text up to the last stable boundary is tokenised and committed; the
trailing piece (a word that may be half typed, a run of spaces) is held back. The held-back
text is tokenised with the next piece, or at :meth:`~IncrementalTokenizer.finish`.
:meth:`~IncrementalTokenizer.verify` then tokenises the whole segment once and says how many
committed tokens agree with it, so a tokenizer without stable boundaries (a SentencePiece
model that prepends a space to every piece) costs a re-prefill of the tail but never gives
a different result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

SENTINEL = "\x00HEADWAY\x00"  # stands for content when a chat template is rendered


def encode_content(tokenizer: Any, text: str) -> list[int]:
    """``text`` as content: special tokens split into ordinary text, no BOS/EOS added."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def encode_template(tokenizer: Any, text: str) -> list[int]:
    """``text`` as template: the model's special tokens recognised, no BOS/EOS added."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stable_boundary(text: str) -> int:
    """The last index i where ``text[i]`` is a space and ``text[i - 1]`` is no whitespace
    (0 if none): the tokens of ``text[:i]`` do not depend on what follows."""
    i = text.rfind(" ")
    while i > 0:
        if not text[i - 1].isspace():
            return i
        i = text.rfind(" ", 0, i)
    return 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class IncrementalTokenizer:
    """Tokenises one content segment that arrives in pieces (see the module docstring).

    ``push(piece)`` returns the token ids it commits (possibly none), ``finish()`` the ids of
    the held-back rest once the segment is complete; together they are the segment's ids.
    ``verify()`` (after ``finish``) returns the segment tokenised whole and how many of the
    ids handed out agree with it.
    """

    def __init__(self, tokenizer: Any, lead: str = ""):
        self.tokenizer = tokenizer
        self.text = lead  # the whole segment so far
        self.held = lead  # its tail that is not committed yet
        self.ids: list[int] = []  # handed out so far
        self.finished = False

    def push(self, piece: str) -> list[int]:
        if self.finished:
            raise ValueError("the segment is finished")
        self.text += piece
        self.held += piece
        cut = stable_boundary(self.held)
        if cut == 0:
            return []
        ids = encode_content(self.tokenizer, self.held[:cut])
        self.held = self.held[cut:]
        self.ids.extend(ids)
        return ids

    def peek(self) -> list[int]:
        """The ids :meth:`finish` would hand out now, without finishing (a guess that the
        segment is complete)."""
        return encode_content(self.tokenizer, self.held)

    def finish(self) -> list[int]:
        self.finished = True
        ids = encode_content(self.tokenizer, self.held)
        self.held = ""
        self.ids.extend(ids)
        return ids

    def verify(self) -> tuple[list[int], int]:
        """(the finished segment tokenised whole, how many handed-out ids agree with it)."""
        whole = encode_content(self.tokenizer, self.text)
        return whole, common_prefix(self.ids, whole)


@dataclass(frozen=True)
class Segment:
    text: str
    content: bool  # True: special tokens split (user text, context, replies)


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation is laid out as text, as segments (see the module docstring).

    A conversation is ``start``, then the context as a system turn (``system_prefix``,
    content, ``system_suffix``) when there is one, then turns: ``user_prefix``, the user's
    text, ``user_suffix`` (which ends with the assistant's header: the model answers after
    it), the reply, ``assistant_suffix``. ``content_lead`` is put before every content
    segment (the plain format's space after ``User:``, which a byte-level BPE tokenises
    with the first word). ``stop`` strings end a reply (besides the end-of-sequence tokens
    ``stop_ids``); they are not part of it.
    """

    name: str
    start: str = ""
    system_prefix: str = ""
    system_suffix: str = "\n"
    user_prefix: str = "User:"
    user_suffix: str = "\nAssistant:"
    assistant_suffix: str = "\n"
    content_lead: str = " "
    stop: tuple[str, ...] = ("\n",)
    stop_ids: tuple[int, ...] = ()

    def system(self, context: str) -> list[Segment]:
        return [Segment(self.system_prefix, False), Segment(self.content_lead + context, True),
                Segment(self.system_suffix, False)]

    def user_turn(self, text: str) -> list[Segment]:
        return [Segment(self.user_prefix, False), Segment(self.content_lead + text, True),
                Segment(self.user_suffix, False)]

    def reply(self, text: str) -> list[Segment]:
        """A finished reply as it stays in the conversation (``text`` as generated, lead included)."""
        return [Segment(text, True), Segment(self.assistant_suffix, False)]

    def conversation(self, context: str | None, history: Sequence[tuple[str, str]]) -> list[Segment]:
        """The segments of ``start``, the context and ``history`` (role, text) turns, where
        an assistant text is given without ``content_lead`` (as a client shows it)."""
        segments = [Segment(self.start, False)]
        if context:
            segments += self.system(context)
        for role, text in history:
            if role == "user":
                segments += self.user_turn(text)
            else:
                segments += self.reply(self.content_lead + text)
        return segments

    def encode(self, tokenizer: Any, segments: Sequence[Segment]) -> list[int]:
        """The token ids of ``segments``: each tokenised whole, as content or as template."""
        ids: list[int] = []
        for segment in segments:
            ids += (encode_content if segment.content else encode_template)(tokenizer, segment.text)
        return ids

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "stop": list(self.stop)}

    @classmethod
    def plain(cls, tokenizer: Any) -> "ChatFormat":
        """``User: ...`` / ``Assistant: ...`` lines: for base models without a chat template."""
        eos = tokenizer.eos_token_id
        return cls("plain", stop_ids=(eos,) if eos is not None else ())

    @classmethod
    def from_template(cls, tokenizer: Any) -> "ChatFormat | None":
        """The format of the tokenizer's chat template, found by rendering conversations with
        a sentinel for every content; None when there is no template or its pieces do not
        reproduce what it renders (a template that rewrites content, injects a default
        system prompt into later turns, or drops earlier turns' reasoning)."""
        if not getattr(tokenizer, "chat_template", None):
            return None

        def render(messages: list[dict], generation: bool) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

        try:
            one = render([{"role": "user", "content": SENTINEL}], True).split(SENTINEL)
            two = render([{"role": "user", "content": SENTINEL}, {"role": "assistant", "content": SENTINEL},
                          {"role": "user", "content": SENTINEL}], True).split(SENTINEL)
            closed = render([{"role": "user", "content": SENTINEL}, {"role": "assistant", "content": SENTINEL}],
                            False).split(SENTINEL)
            system = render([{"role": "system", "content": SENTINEL}, {"role": "user", "content": SENTINEL}],
                            True).split(SENTINEL)
        except Exception:  # a template that refuses these conversations (roles, alternation)
            return None
        if len(one) != 2 or len(two) != 4 or len(closed) != 3 or len(system) != 3:
            return None
        assistant_suffix = closed[2]
        between = two[2]  # assistant suffix + next user prefix
        if not between.startswith(assistant_suffix):
            return None
        user_prefix = between[len(assistant_suffix):]
        if not one[0].endswith(user_prefix) or two[1] != one[1]:
            return None
        start = one[0][: len(one[0]) - len(user_prefix)]
        if not system[1].endswith(user_prefix) or not system[0].startswith(start):
            return None
        stop_ids = tuple(i for i in {tokenizer.eos_token_id, *_template_end_ids(tokenizer, assistant_suffix)}
                         if i is not None)
        fmt = cls("template", start=start, system_prefix=system[0][len(start):],
                  system_suffix=system[1][: len(system[1]) - len(user_prefix)], user_prefix=user_prefix,
                  user_suffix=one[1], assistant_suffix=assistant_suffix, content_lead="", stop=(),
                  stop_ids=stop_ids)
        probe = [("user", "Hello there."), ("assistant", "Hi."), ("user", "Go left.")]
        rendered = render([{"role": "system", "content": "Context."}] +
                          [{"role": r, "content": t} for r, t in probe], True)
        ours = "".join(s.text for s in fmt.conversation("Context.", probe[:2]) + fmt.user_turn("Go left."))
        return fmt if ours == rendered else None

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> "ChatFormat":
        """The chat template's format when it has a usable one, else :meth:`plain`."""
        return cls.from_template(tokenizer) or cls.plain(tokenizer)


def _template_end_ids(tokenizer: Any, assistant_suffix: str) -> list[int]:
    """The special token that closes an assistant turn (``<|eot_id|>``, ``<|im_end|>``), if the
    suffix starts with one: generating it ends the reply."""
    ids = encode_template(tokenizer, assistant_suffix)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [ids[0]] if ids and ids[0] in special else []


@dataclass
class ReplyText:
    """A reply detokenised token by token: :meth:`push` returns the text to send now.

    Text is held back while it ends in an incomplete UTF-8 character (a byte-level token can
    split one) or in what may be the start of a stop string; a stop string ends the reply
    (``stopped``) and is not part of it. Special tokens are not shown.
    """

    tokenizer: Any
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    sent: str = ""  # text handed out so far
    stopped: bool = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop:
            at = text.find(stop, len(self.sent))  # earlier text was sent: it held no stop's start
            if at >= 0:
                self.stopped = True
                text = text[:at]
                new = text[len(self.sent):]
                self.sent = text
                return new
        if text.endswith("\ufffd"):
            return ""
        keep = len(text)
        for stop in self.stop:  # a possible start of a stop string waits for the next token
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = min(keep, len(text) - n)
                    break
        if keep <= len(self.sent):
            return ""
        new = text[len(self.sent):keep]
        self.sent = text[:keep]
        return new


def parse_structured(reply: str) -> dict | None:
    """The reply as structured output when it is one JSON object (``{"reply": ..., "goal":
    ...}`` in the demo world), else None."""
    text = reply.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

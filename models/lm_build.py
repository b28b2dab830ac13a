"""Randomly initialised Llama-style models and byte-level BPE tokenizers, built and saved
locally with ``save_pretrained``: a directory that :class:`models.lm.CausalLM` (and any
``transformers`` program) loads with ``local_files_only=True``.

They are for the tests (``tiny``: a few hundred thousand parameters, loads in well under a
second) and for timing (``100m``: about 100M parameters, a realistic size for the cost of
prefill and decode on a CPU; its output is noise). The tokenizer is trained on
:func:`sample_text`, so words split into several tokens and byte-level merges exist:
what incremental tokenisation must get right.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable

# Common English words; sample_text strings them into sentences for tokenizer training,
# prompts and test texts.
WORDS = (
    "the of and to in is that it was for on are as with his they at be this from have or by one had not but "
    "what all were when we there can an your which their said if do will each about how up out them then she "
    "many some so these would other into has more her two like him see time could no make than first been its "
    "who now people my made over did down only way find use may water long little very after words called just "
    "where most know get through back much before go good new write our used me man too any day same right look "
    "think also around another came come work three word must because does part even place well such here take "
    "why things help put years different away again off went old number great tell men say small every found "
    "still between name should home big give air line set own under read last never us left end along while "
    "might next sound below saw something thought both few those always looked show large often together asked "
    "house world going want school important until form food keep children feet land side without boy once "
    "animals life enough took sometimes four head above kind began almost live page got earth need far hand high "
    "year mother light parts country father let night following picture being study second eyes soon times "
    "story boys since white days ever paper hard near sentence better best across during today others however "
    "sure means knew try told young miles sun ways thing whole hear example heard several change answer room sea "
    "against top turned learn point city play toward five using himself usually red cube green ball blue ring "
    "yellow table gripper corner centre move steps please could you stop wait faster slower again"
).split()


def sample_text(words: int, seed: int = 0) -> str:
    """``words`` words of English-like sentences (capitals, commas, full stops, a question
    now and then), the same for the same seed."""
    rng = random.Random(seed)
    out: list[str] = []
    sentence = 0
    for i in range(words):
        word = rng.choice(WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        if sentence > 3 and (rng.random() < 0.12 or i == words - 1):
            word += rng.choice("..?")
            sentence = 0
        elif sentence > 2 and rng.random() < 0.08:
            word += ","
        out.append(word)
    return " ".join(out)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, chat_template: str | None = None):
    """A byte-level BPE tokenizer (GPT-2's pre-tokenisation) trained on ``texts``, as a
    ``transformers`` fast tokenizer with ``<|bos|>``, ``<|eos|>`` and ``<|pad|>`` special tokens
    (and ``chat_template``, a Jinja template, if given)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(list(texts), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>",
                                        pad_token="<|pad|>", additional_special_tokens=specials[3:])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


# A chat template in the style of instruction-tuned models: special tokens around turns.
SPECIAL_TOKEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}<|end|>"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}<|end|>"
    "{% else %}<|assistant|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SIZES = {
    # hidden, intermediate, layers, heads, kv heads
    "tiny": (64, 128, 2, 4, 2),
    "100m": (768, 2048, 16, 12, 4),
}


def build_random_llama(path: str | Path, size: str = "tiny", *, vocab_size: int = 512, seed: int = 0,
                       max_context: int = 4096, chat_template: str | None = None,
                       tokenizer_words: int = 20000) -> Path:
    """Save a randomly initialised Llama of ``size`` (:data:`SIZES`) and a tokenizer trained
    on :func:`sample_text` to ``path``; returns ``path``. Deterministic for a seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, intermediate, layers, heads, kv_heads = SIZES[size]
    path = Path(path)
    tokenizer = train_tokenizer([sample_text(tokenizer_words, seed=seed)], vocab_size, chat_template=chat_template)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_context, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

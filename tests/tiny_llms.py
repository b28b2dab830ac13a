"""Tiny randomly initialised Llamas saved with ``save_pretrained`` in a temporary directory,
built once per test run: what ``--llm PATH`` loads, at a size a test runs in milliseconds."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from models.lm_build import SPECIAL_TOKEN_TEMPLATE, build_random_llama

_ROOT = Path(tempfile.mkdtemp(prefix="headway-tiny-llms-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def tiny_llm(template: bool = False, max_context: int = 1024) -> Path:
    """A tiny Llama and its byte-level BPE tokenizer; ``template``: with a chat template of
    special tokens (``<|user|>...<|end|><|assistant|>``), else none (the plain format)."""
    name = f"tiny-{'template' if template else 'plain'}-{max_context}"
    return build_random_llama(_ROOT / name, "tiny", max_context=max_context, tokenizer_words=4000,
                              chat_template=SPECIAL_TOKEN_TEMPLATE if template else None)

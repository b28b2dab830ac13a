"""``headway bench chat``: time to first token after ``prompt_end`` with incremental prefill
against prefill at ``prompt_end``, on one model in one run; prints one JSON array.

    headway bench chat --prompt-tokens 128,512,2048 --arrival-tps 50 --sessions 1,8 [--llm PATH]

Without ``--llm`` it builds (once, in ``out/bench_chat/``) a randomly initialised ~100M-
parameter Llama-style model and its byte-level BPE with ``save_pretrained``: the timing is
about compute, not wisdom. It starts ``headway serve --llm PATH`` in a separate process.

Method, per (prompt length, sessions) and per mode (incremental prefill, then prefill at
``prompt_end``, the hello's ``"incremental": false``): every session streams a prompt of
that many tokens word by word, each word sent when the prompt's tokens so far are due at
``--arrival-tps`` tokens per second, then sends ``prompt_end`` and reads the reply
(``--reply-tokens``, greedy). Sessions start staggered by the prompt's duration over the
number of sessions, so while one session decodes the others' prompts arrive (and, with
incremental prefill, are prefilled). The prefill-at-end mode sends each prompt at once at
the same moment its incremental twin would have ended it (nothing is prefilled before
``prompt_end`` either way), so both modes end their prompts on the same schedule.

Row keys: ``prompt_tokens``, ``sessions``, ``ttft_incremental_ms`` and ``ttft_full_ms``
(median over the row's sessions of the client's time from sending ``prompt_end`` to
receiving the first token), ``ratio`` (incremental / full), ``itl_p50_ms`` ``itl_p99_ms``
(gaps between tokens of a reply, incremental mode, all sessions), ``tokens_per_s`` (median
decode rate of a reply, incremental mode), ``prefill_tokens_per_s`` (prompt tokens / the
server's time to first token, prefill-at-end mode: the machine's prefill throughput, which
incremental prefill must exceed to keep up with arrivals), ``prefilled_at_end`` (the mean
fraction of the prompt already in the cache at ``prompt_end``, incremental mode), ``errors``
(error codes of turns that failed), and the settings.

``--early-answer``: the incremental sessions ask for early answer and send ``prompt_pause``
after a prompt's last piece; the rows add ``early_answer_paid`` (the fraction of turns whose
guess held at ``prompt_end``) and ``early_answer_guesses`` (guesses per turn: every sentence
end of a prompt is one). ``--endpoint-delay-ms``: a wait between the last piece and
``prompt_end`` (a speech recogniser deciding that the utterance ended); TTFT still counts from
``prompt_end``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.chat import ChatClient
from clients.sdk import ServerError
from clients.server_process import ServerProcess

SUMMARY = "partial-prompt LLM streaming: TTFT with incremental prefill vs prefill at prompt_end; prints JSON"
DEFAULT_MODEL_DIR = Path("out/bench_chat/llama-100m")


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", default=None, metavar="PATH",
                        help="a transformers causal LM in a local directory (default: a random ~100M Llama "
                             f"built once in {DEFAULT_MODEL_DIR})")
    parser.add_argument("--prompt-tokens", type=int_list, default=[128, 512, 2048],
                        help="prompt lengths in tokens, comma-separated (default 128,512,2048)")
    parser.add_argument("--sessions", type=int_list, default=[1, 8],
                        help="concurrent sessions, comma-separated (default 1,8)")
    parser.add_argument("--arrival-tps", type=float, default=50.0,
                        help="tokens per second at which a prompt arrives (default %(default)s)")
    parser.add_argument("--reply-tokens", type=int, default=32, help="tokens per reply (default %(default)s)")
    parser.add_argument("--prefill-slice", type=int, default=32,
                        help="the server's --prefill-slice (default %(default)s)")
    parser.add_argument("--llm-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the server's --llm-dtype (default %(default)s: bfloat16 where the hardware "
                             "computes in it natively)")
    parser.add_argument("--seed", type=int, default=0, help="prompt text seed (default %(default)s)")
    parser.add_argument("--early-answer", action="store_true",
                        help="sessions ask for early answer (decode on a guess that the prompt is complete); "
                             "after its last piece a prompt gets a prompt_pause, as from a speech recogniser")
    parser.add_argument("--endpoint-delay-ms", type=float, default=0.0,
                        help="time from a prompt's last piece to its prompt_end (a speech recogniser's "
                             "end-of-utterance delay; default %(default)s: typed text, ended at once)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON array to this file")


@dataclass
class Turn:
    ttft_s: float
    gaps_s: list[float]
    tokens: int
    decode_s: float
    server_ttft_ms: float | None
    prompt_tokens: int
    prefilled_before_end: int
    finish_reason: str
    early_answer: dict | None = None
    error: str | None = None


@dataclass
class Prompt:
    text: str
    tokens: int
    pieces: list[tuple[float, str]] = field(default_factory=list)  # (seconds after the start, word)


def make_prompt(tokenizer, tokens: int, arrival_tps: float, seed: int) -> Prompt:
    """About ``tokens`` tokens of text ending a sentence, cut into words, each due once its
    tokens have arrived."""
    from models.lm_build import sample_text

    words = sample_text(tokens * 2, seed=seed).split(" ")
    pieces, count, text = [], 0, ""
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        n = len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if count + n + 1 > tokens:
            break
        count += n
        text += piece
        pieces.append((count / arrival_tps, piece))
    if not text.endswith((".", "?")):  # the prompt is a complete question or command
        offset, last = pieces[-1]
        pieces[-1] = (offset, last.rstrip(",") + ".")
        text = text.rstrip(",") + "."
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return Prompt(text, count, pieces)


async def one_turn(url: str, prompt: Prompt, start: float, args: argparse.Namespace, incremental: bool) -> Turn:
    try:
        return await _one_turn(url, prompt, start, args, incremental)
    except ServerError as exc:
        return Turn(float("nan"), [], 0, 0.0, None, prompt.tokens, 0, "error", error=exc.code)


async def _one_turn(url: str, prompt: Prompt, start: float, args: argparse.Namespace, incremental: bool) -> Turn:
    early = args.early_answer and incremental
    async with ChatClient(url, max_tokens=args.reply_tokens, incremental=incremental, early_answer=early,
                          timeout_s=600) as chat:
        if incremental:
            for offset, piece in prompt.pieces:
                delay = start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await chat.say(piece)
        else:  # the whole prompt, at the moment the incremental twin ends it
            delay = start + prompt.pieces[-1][0] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for _, piece in prompt.pieces:
                await chat.say(piece)
        if early:
            await chat.pause()
        if args.endpoint_delay_ms > 0:
            await asyncio.sleep(args.endpoint_delay_ms / 1000.0)
        sent = time.monotonic()
        await chat.end_prompt()
        done = await chat.reply()
    times = [t["t"] for t in chat.tokens]
    first = times[0] if times else time.monotonic()
    return Turn(first - sent, list(np.diff(times)), len(times), times[-1] - first if times else 0.0,
                done.get("ttft_ms"), done["prompt_tokens"], done["prefilled_before_end"], done["finish_reason"],
                done.get("early_answer"))


async def one_row(url: str, prompts: list[Prompt], args: argparse.Namespace, incremental: bool) -> list[Turn]:
    duration = prompts[0].pieces[-1][0]
    stagger = duration / len(prompts)
    start = time.monotonic() + 0.5
    return await asyncio.gather(*(one_turn(url, p, start + i * stagger, args, incremental)
                                  for i, p in enumerate(prompts)))


def summarize(tokens: int, sessions: int, incremental: list[Turn], full: list[Turn], args) -> dict:
    def ms(values, q=50):
        return round(float(np.percentile(values, q)) * 1e3, 2) if len(values) else None

    errors = [t.error for t in incremental + full if t.error]
    incremental = [t for t in incremental if not t.error]
    full = [t for t in full if not t.error]

    ttft_inc = ms([t.ttft_s for t in incremental])
    ttft_full = ms([t.ttft_s for t in full])
    gaps = [g for t in incremental for g in t.gaps_s]
    rates = [(t.tokens - 1) / t.decode_s for t in incremental if t.tokens > 1 and t.decode_s > 0]
    prefill_rates = [t.prompt_tokens / (t.server_ttft_ms / 1e3) for t in full if t.server_ttft_ms]
    return {
        "prompt_tokens": tokens, "sessions": sessions,
        "ttft_incremental_ms": ttft_inc, "ttft_full_ms": ttft_full,
        "ratio": round(ttft_inc / ttft_full, 4) if ttft_inc and ttft_full else None,
        "itl_p50_ms": ms(gaps), "itl_p99_ms": ms(gaps, 99),
        "tokens_per_s": round(float(np.median(rates)), 2) if rates else None,
        "prefill_tokens_per_s": round(float(np.median(prefill_rates)), 1) if prefill_rates else None,
        "prefilled_at_end": round(float(np.mean([t.prefilled_before_end / t.prompt_tokens for t in incremental])), 3)
        if incremental else None,
        "reply_tokens_mean": round(float(np.mean([t.tokens for t in incremental])), 1) if incremental else None,
        "finish_reasons": sorted({t.finish_reason for t in incremental + full}),
        "errors": errors,
        "arrival_tps": args.arrival_tps, "prefill_slice": args.prefill_slice,
        "endpoint_delay_ms": args.endpoint_delay_ms,
        **({"early_answer_paid": round(float(np.mean([t.early_answer["paid"] for t in incremental])), 3),
            "early_answer_guesses": round(float(np.mean([t.early_answer["guesses"] for t in incremental])), 2)}
           if args.early_answer and incremental else {}),
    }


async def drive(url: str, tokenizer, args: argparse.Namespace) -> list[dict]:
    rows = []
    for tokens in args.prompt_tokens:
        for sessions in args.sessions:
            prompts = [make_prompt(tokenizer, tokens, args.arrival_tps, args.seed + i) for i in range(sessions)]
            incremental = await one_row(url, prompts, args, incremental=True)
            full = await one_row(url, prompts, args, incremental=False)
            row = summarize(tokens, sessions, incremental, full, args)
            print(json.dumps(row), file=sys.stderr, flush=True)  # progress; the array goes to stdout at the end
            rows.append(row)
    return rows


def model_dir(args: argparse.Namespace) -> Path:
    if args.llm:
        return Path(args.llm)
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        from models.lm_build import build_random_llama

        print(f"headway bench chat: building a random ~100M Llama in {DEFAULT_MODEL_DIR}", file=sys.stderr)
        build_random_llama(DEFAULT_MODEL_DIR, "100m", vocab_size=8192, max_context=4096)
    return DEFAULT_MODEL_DIR


def main(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    path = model_dir(args)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    serve = ["--llm", str(path), "--chat-slots", str(max(args.sessions)), "--prefill-slice", str(args.prefill_slice),
             "--llm-dtype", args.llm_dtype]
    try:
        server = ServerProcess(serve, timeout_s=300).start()
    except RuntimeError as exc:
        print(f"headway bench chat: {exc}", file=sys.stderr)
        return 2
    try:
        rows = asyncio.run(drive(server.url("/v1/chat"), tokenizer, args))
    finally:
        server.stop(timeout_s=30)
    from models.lm import serving_dtype

    dtype = str(serving_dtype(args.llm_dtype)).removeprefix("torch.")  # what the server on this machine chose
    rows = [{**row, "dtype": dtype} for row in rows]
    print(json.dumps(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0

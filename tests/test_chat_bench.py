"""``headway bench chat`` end to end on a tiny Llama (a server process of its own): one JSON
array, a row per (prompt length, sessions), each with its keys and counts. Timings are not
judged here (benchmarks measure them); only that every turn was measured."""

from __future__ import annotations

import argparse
import json

from benchmarks.chat import add_arguments, main
from tiny_llms import tiny_llm

KEYS = {"prompt_tokens", "sessions", "ttft_incremental_ms", "ttft_full_ms", "ratio", "itl_p50_ms", "itl_p99_ms",
        "tokens_per_s", "prefill_tokens_per_s", "prefilled_at_end"}


def run(capsys, *argv: str) -> list[dict]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main(parser.parse_args(["--llm", str(tiny_llm()), *argv])) == 0
    return json.loads(capsys.readouterr().out)


def test_the_bench_prints_a_row_per_prompt_length_and_session_count(capsys):
    rows = run(capsys, "--prompt-tokens", "12,24", "--sessions", "1,2", "--arrival-tps", "400",
               "--reply-tokens", "3")
    assert [(r["prompt_tokens"], r["sessions"]) for r in rows] == [(12, 1), (12, 2), (24, 1), (24, 2)]
    for row in rows:
        assert KEYS <= set(row) and row["errors"] == []
        assert row["ttft_incremental_ms"] > 0 and row["ttft_full_ms"] > 0 and row["ratio"] > 0
        assert 0.0 <= row["prefilled_at_end"] <= 1.0


def test_with_early_answer_the_rows_say_how_often_the_guess_paid(capsys):
    [row] = run(capsys, "--prompt-tokens", "16", "--sessions", "2", "--arrival-tps", "400", "--reply-tokens", "3",
                "--early-answer")
    assert row["errors"] == [] and 0.0 <= row["early_answer_paid"] <= 1.0 and row["early_answer_guesses"] >= 0


def test_out_writes_the_same_array_to_a_file(capsys, tmp_path):
    out = tmp_path / "chat.json"
    rows = run(capsys, "--prompt-tokens", "12", "--sessions", "1", "--arrival-tps", "400", "--reply-tokens", "3",
               "--out", str(out))
    assert json.loads(out.read_text()) == rows

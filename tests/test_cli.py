"""The ``headway`` command line tells a newcomer what it has: models, benchmarks, options."""

from __future__ import annotations

import argparse
import errno
import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.server_process import ServerProcess
from clients.sim import TASKS
from stream import registry
from stream.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent
# Every shipped checkpoint, named as ``--model`` takes it: TASK (flow), TASK:flow, TASK:diffusion.
SHIPPED = [name for task in TASKS for name in (task, f"{task}:flow", f"{task}:diffusion")]


def help_of(words: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_serve_help_lists_every_shipped_model_and_alias(capsys):
    text = help_of(["serve"], capsys)
    for name in ["standin", *SHIPPED]:
        assert f" {name}" in text, name


def test_serve_help_says_plain_serve_is_the_stand_in(capsys):
    text = help_of(["serve"], capsys)
    assert "Plain 'headway serve' serves the stand-in" in text


def test_unknown_model_error_lists_every_shipped_model_and_alias():
    with pytest.raises(KeyError) as info:
        registry.load("nosuch")
    message = info.value.args[0]
    assert message.startswith("unknown model 'nosuch'; known: standin")
    for name in SHIPPED:
        assert name in message, name


def test_unknown_model_error_suggests_the_closest_name():
    with pytest.raises(KeyError) as info:
        registry.load("whak")
    assert "(did you mean 'whack'?)" in info.value.args[0]


@pytest.mark.parametrize("argv", [["bench"], ["bench", "--help"], ["bench", "-h"]])
def test_bench_alone_or_with_help_lists_every_benchmark(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for words, _, text in COMMANDS:
        if words[0] == "bench":
            assert f"  {words[1]:<16} {text}" in out


def test_unknown_benchmark_exits_2_listing_the_benchmarks(capsys):
    assert main(["bench", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'bench nosuch'" in err
    assert "load" in err and "robot" in err


@pytest.mark.parametrize("words", [words for words, _, _ in COMMANDS], ids=" ".join)
def test_every_option_of_every_command_has_help_text(words):
    module = importlib.import_module(dict((w, m) for w, m, _ in COMMANDS)[words])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert [a.option_strings for a in parser._actions if not a.help] == []


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_1():
    with listening_socket() as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "stream.cli", "serve", "--port", str(port)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"headway serve: port {port} on 127.0.0.1 is already in use (another 'headway serve' or 'make demo' "
        f"still running?); stop it with Ctrl-C, or serve on another port: --port {port + 1} "
        "(--port 0 picks a free one)"]


def test_server_process_on_a_port_in_use_refuses_before_starting_a_server():
    with listening_socket() as taken:
        server = ServerProcess(["--model", "standin"], port=taken.getsockname()[1])
        with pytest.raises(OSError) as info:
            server.start()
    assert info.value.errno == errno.EADDRINUSE
    assert server.process is None

"""The ``headway`` command line: commands as pyproject declares them, help that lists what the
server has, errors that say what to do."""

from __future__ import annotations

import argparse
import errno
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from clients.server_process import ServerProcess
from clients.sim import TASKS
from policies.base import checkpoint_paths
from stream import cli, registry
from stream.cli import main

ROOT = Path(__file__).resolve().parent.parent
# Every shipped checkpoint, named as ``--model`` takes it: TASK (flow), TASK:flow, TASK:diffusion
# (a task whose checkpoints are not trained yet, as the table's until its training has run, is
# not shipped).
SHIPPED = [name for task in TASKS if all(checkpoint_paths(task, f)[0].exists() for f in ("flow", "diffusion"))
           for name in (task, f"{task}:flow", f"{task}:diffusion")]

DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][cli.GROUP]


def test_the_installed_commands_are_those_pyproject_declares():
    installed = {ep.name: ep.value for ep in entry_points(group=cli.GROUP)}
    assert installed == DECLARED, "the installed metadata is stale: run `pip install --no-deps -e .`"


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_every_declared_command_imports_and_is_callable(name):
    module = __import__(DECLARED[name], fromlist=["main"])
    assert isinstance(module.SUMMARY, str) and "\n" not in module.SUMMARY
    assert callable(module.add_arguments) and callable(module.main)


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_every_command_builds_its_parser(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*name.split("-"), "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: headway {name.replace('-', ' ')}")


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "stream.cli", "--help"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    for name in DECLARED:
        assert f"  {name.replace('-', ' ')} " in out


def test_listing_the_commands_imports_no_torch():
    code = "import sys; from stream import cli; [c.load() for c in cli.declared_commands()]; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_an_unknown_command_exits_2(capsys):
    assert cli.main(["bench", "nothing"]) == 2
    assert "usage: headway" in capsys.readouterr().err


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
    for command in cli.declared_commands():
        if command.words[0] == "bench":
            assert f"  {command.words[1]:<16} {command.load().SUMMARY}" in out


def test_unknown_benchmark_exits_2_listing_the_benchmarks(capsys):
    assert main(["bench", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'bench nosuch'" in err
    assert "load" in err and "robot" in err


@pytest.mark.parametrize("command", cli.declared_commands(), ids=lambda c: " ".join(c.words))
def test_every_option_of_every_command_has_help_text(command):
    module = command.load()
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

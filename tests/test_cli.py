"""The headway command line: commands are declared as entry points and discovered."""

import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from stream import cli

ROOT = Path(__file__).resolve().parent.parent
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

"""The ``headway`` command line.

Commands are discovered, not imported by name: every package declares its commands as entry
points of the group :data:`GROUP` in pyproject.toml, named by the command's words joined with
``-`` (``bench-load`` is ``headway bench load``) and pointing at the module that implements it::

    [project.entry-points."headway.commands"]
    bench-load = "benchmarks.load"

A command module is a :class:`Command`: ``SUMMARY`` (one line for ``headway --help``),
``add_arguments(parser)`` and ``main(args) -> int``, with its heavy imports (torch) inside
``main``, so that ``headway --help`` stays quick. Only the module of the command being run
is imported otherwise. Entry points are read from the installed metadata: after changing
them, reinstall (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol

GROUP = "headway.commands"


class Command(Protocol):
    """What a command's module provides."""

    SUMMARY: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


@dataclass(frozen=True)
class DeclaredCommand:
    """One ``headway`` command as its package declared it."""

    words: tuple[str, ...]  # as typed: ("bench", "load")
    entry_point: EntryPoint

    def load(self) -> Command:
        return self.entry_point.load()


def declared_commands() -> list[DeclaredCommand]:
    """Every installed command, longest first (so ``bench load`` wins over a ``bench``)."""
    found = [DeclaredCommand(tuple(ep.name.split("-")), ep) for ep in entry_points(group=GROUP)]
    return sorted(found, key=lambda c: (-len(c.words), c.words))


def _usage(commands: list[DeclaredCommand]) -> str:
    lines = ["usage: headway COMMAND [ARGS]", "", "commands:"]
    for command in sorted(commands, key=lambda c: c.words):
        lines.append(f"  {' '.join(command.words):<16} {command.load().SUMMARY}")
    lines.append("")
    lines.append("'headway COMMAND --help' describes a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = declared_commands()
    for command in commands:
        words = command.words
        if tuple(argv[: len(words)]) == words:
            module = command.load()
            parser = argparse.ArgumentParser(prog="headway " + " ".join(words), description=module.SUMMARY)
            module.add_arguments(parser)
            args = parser.parse_args(argv[len(words):])
            try:
                return int(module.main(args) or 0)
            except KeyboardInterrupt:
                return 130
    if argv and argv[0] not in ("-h", "--help", "help"):
        print(f"headway: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
        print(_usage(commands), file=sys.stderr)
        return 2
    print(_usage(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``headway`` command line.

Commands are discovered, not imported by name: every package declares its commands as entry
points of the group :data:`GROUP` in pyproject.toml, named by the command's words joined with
``-`` (``bench-load`` is ``headway bench load``) and pointing at the module that implements it::

    [project.entry-points."headway.commands"]
    bench-load = "benchmarks.load"

A command module is a :class:`Command`: ``SUMMARY`` (one line for the command lists),
``add_arguments(parser)`` and ``main(args) -> int``, with its heavy imports (torch) inside
``main``; it may expose ``epilog() -> str``, text for the end of its ``--help`` computed only
when help is printed (``headway serve`` lists its models there, which reads the
checkpoints). Only the module of the command being run is imported otherwise, so
``headway --help`` stays quick. Entry points are read from the installed metadata: after
changing them, reinstall (``pip install -e .``).

A command of several words (``bench load``) belongs to a group (``bench``): ``headway bench``
and ``headway bench --help`` list the group's commands.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Callable, Protocol

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


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose epilog is computed when help is printed, not before."""

    def __init__(self, *args, epilog_source: Callable[[], str] | None = None, **kwargs) -> None:
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.epilog_source = epilog_source

    def format_help(self) -> str:
        if self.epilog_source is not None and self.epilog is None:
            self.epilog = self.epilog_source()
        return super().format_help()


def _usage(commands: list[DeclaredCommand], group: tuple[str, ...] = ()) -> str:
    """The commands under ``group`` (all of them for ``()``), one line each."""
    head = " ".join(("headway", *group))
    lines = [f"usage: {head} COMMAND [ARGS]", "", "commands:"]
    for command in sorted(commands, key=lambda c: c.words):
        if command.words[: len(group)] == group:
            lines.append(f"  {' '.join(command.words[len(group):]):<16} {command.load().SUMMARY}")
    lines.append("")
    lines.append(f"'{head} COMMAND --help' describes a command's options.")
    return "\n".join(lines)


def _group_of(commands: list[DeclaredCommand], argv: list[str]) -> tuple[str, ...]:
    """The longest run of leading words that starts some command but is none (``("bench",)``)."""
    group: tuple[str, ...] = ()
    for word in argv:
        longer = (*group, word)
        if not any(c.words[: len(longer)] == longer and len(c.words) > len(longer) for c in commands):
            break
        group = longer
    return group


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = declared_commands()
    for command in commands:
        words = command.words
        if tuple(argv[: len(words)]) == words:
            module = command.load()
            parser = CommandParser(prog="headway " + " ".join(words), description=module.SUMMARY,
                                   epilog_source=getattr(module, "epilog", None))
            module.add_arguments(parser)
            args = parser.parse_args(argv[len(words):])
            try:
                return int(module.main(args) or 0)
            except KeyboardInterrupt:
                return 130
    group = _group_of(commands, argv)
    rest = argv[len(group):]
    if not rest or rest[0] in ("-h", "--help", "help"):
        print(_usage(commands, group))
        return 0
    print(f"headway: unknown command {' '.join(argv[: len(group) + 1])!r}\n", file=sys.stderr)
    print(_usage(commands, group), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

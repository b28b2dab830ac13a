"""The ``headway`` command line.

Each command lives in its own module, which exposes ``add_arguments(parser)`` and
``main(args) -> int``, and may expose ``epilog() -> str``: text for the end of its
``--help``, computed only when help is printed (``headway serve`` lists its models there,
which reads the checkpoints). Only the module of the command being run is imported, so
``headway bench load`` does not pay for importing torch and ``headway --help`` is instant.

A command of several words (``bench load``) belongs to a group (``bench``): ``headway bench``
and ``headway bench --help`` list the group's commands.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

# (words, module, one-line help). Words are the command as typed: ("bench", "load").
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("serve",), "stream.serve", "serve models over websockets"),
    (("demo",), "stream.demo", "serve the shipped policy and drive a simulated robot against it"),
    (("train", "policy"), "clients.sim.train", "collect expert demonstrations and train an action-chunk policy"),
    (("bench", "load"), "benchmarks.load", "open-loop load test of a server; prints JSON"),
    (("bench", "rtc"), "benchmarks.rtc", "execution-strategy sweep over tasks and delays; prints JSON"),
    (("bench", "sampler"), "benchmarks.sampler", "time plain, RTC-guided and warm-started sampling; prints JSON"),
    (("bench", "robot"), "benchmarks.robot", "simulated robots in real time against a server; prints JSON"),
]


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose epilog is computed when help is printed, not before."""

    def __init__(self, *args, epilog_source: Callable[[], str] | None = None, **kwargs) -> None:
        super().__init__(*args, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.epilog_source = epilog_source

    def format_help(self) -> str:
        if self.epilog_source is not None and self.epilog is None:
            self.epilog = self.epilog_source()
        return super().format_help()


def _usage(group: tuple[str, ...] = ()) -> str:
    """The commands under ``group`` (all of them for ``()``), one line each."""
    head = " ".join(("headway", *group))
    lines = [f"usage: {head} COMMAND [ARGS]", "", "commands:"]
    for words, _, text in COMMANDS:
        if words[: len(group)] == group:
            lines.append(f"  {' '.join(words[len(group):]):<16} {text}")
    lines.append("")
    lines.append(f"'{head} COMMAND --help' describes a command's options.")
    return "\n".join(lines)


def _group_of(argv: list[str]) -> tuple[str, ...]:
    """The longest run of leading words that starts some command but is none (``("bench",)``)."""
    group: tuple[str, ...] = ()
    for word in argv:
        longer = (*group, word)
        if not any(words[: len(longer)] == longer and len(words) > len(longer) for words, _, _ in COMMANDS):
            break
        group = longer
    return group


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, module_name, text in COMMANDS:
        if tuple(argv[: len(words)]) == words:
            module = importlib.import_module(module_name)
            parser = CommandParser(prog="headway " + " ".join(words), description=text,
                                   epilog_source=getattr(module, "epilog", None))
            module.add_arguments(parser)
            args = parser.parse_args(argv[len(words):])
            try:
                return int(module.main(args) or 0)
            except KeyboardInterrupt:
                return 130
    group = _group_of(argv)
    rest = argv[len(group):]
    if not rest or rest[0] in ("-h", "--help", "help"):
        print(_usage(group))
        return 0
    print(f"headway: unknown command {' '.join(argv[: len(group) + 1])!r}\n", file=sys.stderr)
    print(_usage(group), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

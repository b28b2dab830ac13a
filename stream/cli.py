"""The ``headway`` command line.

Each command lives in its own module, which exposes ``add_arguments(parser)`` and
``main(args) -> int``. Only the module of the command being run is imported, so
``headway bench load`` does not pay for importing torch and ``headway --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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


def _usage() -> str:
    lines = ["usage: headway COMMAND [ARGS]", "", "commands:"]
    for words, _, text in COMMANDS:
        lines.append(f"  {' '.join(words):<16} {text}")
    lines.append("")
    lines.append("'headway COMMAND --help' describes a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, module_name, text in COMMANDS:
        if tuple(argv[: len(words)]) == words:
            module = importlib.import_module(module_name)
            parser = argparse.ArgumentParser(prog="headway " + " ".join(words), description=text)
            module.add_arguments(parser)
            args = parser.parse_args(argv[len(words):])
            try:
                return int(module.main(args) or 0)
            except KeyboardInterrupt:
                return 130
    if argv and argv[0] not in ("-h", "--help", "help"):
        print(f"headway: unknown command {' '.join(argv[:2])!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    print(_usage())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``headway serve``: load models from the registry and serve them until SIGTERM/SIGINT.

    headway serve --model standin --standin-ms 20
    headway serve --host 0.0.0.0 --port 8000 --token s3cret --allowed-origin https://ui.example

The first ``--model`` is the default at ``/``; others are reached with ``/?model=NAME``.
The shipped speech recogniser (``models/checkpoints/dsm_asr``) is served too, at ``/v1/asr``
and ``/api/asr-streaming``, when it is there (``--asr PATH`` serves another, ``--asr none``
none; ``--asr-slots`` streams at once).
``--model NAME=ALIAS`` serves a model under another name (e.g. two stand-ins). Without
``--model`` it serves the stand-in, not a trained policy; ``headway serve --help`` lists
every model it can serve.

Your own policy (docs/own-policy.md): ``--policy MODULE:FACTORY`` serves the object
``FACTORY(**args)`` returns (the chunk-policy plug-in interface of ``policies.base``), each
``--policy-arg K=V`` after it one keyword argument, each ``--obs-map CLIENT=POLICY`` after it
one observation key renamed (``CLIENT=`` accepts the key and drops it);
``--policy lerobot:PATH`` serves a LeRobot policy saved with ``save_pretrained``. Policies
come first: the first is the default at ``/`` and ``/v1/policy``.
On SIGTERM or SIGINT the server drains: no new sessions, replies in flight are sent,
sessions close with 1001, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from stream import registry
from stream.server import HeadwayServer, ServerConfig

log = logging.getLogger("headway.serve")

SUMMARY = "serve models over websockets"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass
class PolicyChoice:
    """One ``--policy`` and the ``--policy-arg`` and ``--obs-map`` options given after it."""

    target: str
    alias: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    obs_map: dict[str, str | None] = field(default_factory=dict)


def option_value(text: str) -> Any:
    """A ``--policy-arg`` value: JSON where it parses (``10``, ``0.5``, ``true``, ``[0, 1]``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class _PolicyAction(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        target, _, alias = value.partition("=")
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), PolicyChoice(target, alias or None)])


class _PolicyOptionAction(argparse.Action):
    """``--policy-arg K=V`` and ``--obs-map CLIENT=POLICY``: for the ``--policy`` before them."""

    def __call__(self, parser, namespace, value, option_string=None):
        policies = getattr(namespace, "policy", None)
        if not policies:
            parser.error(f"{option_string} {value}: put it after the --policy it is for")
        key, sep, rest = value.partition("=")
        if not sep or not key:
            parser.error(f"{option_string} wants {self.metavar}, got {value!r}")
        if self.dest == "policy_arg":
            policies[-1].args[key] = option_value(rest)
        else:
            policies[-1].obs_map[key] = rest or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    parser.add_argument("--host", default=d.host, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=d.port, help="port (default %(default)s; 0 picks a free one)")
    parser.add_argument("--model", action="append", default=None, metavar="NAME[=ALIAS]",
                        help="model to serve (listed below), repeatable: the first is served at / and "
                             "/v1/policy, others at ?model=NAME; NAME=ALIAS serves it as ALIAS "
                             "(default: standin, which is not a trained policy)")
    parser.add_argument("--policy", action=_PolicyAction, default=None, metavar="MODULE:FACTORY[=ALIAS]",
                        help="serve your own policy: the object FACTORY(**args) of MODULE (found from the "
                             "working directory too) implementing Headway's chunk-policy interface "
                             "(docs/own-policy.md), or lerobot:PATH, a LeRobot policy saved with save_pretrained; "
                             "repeatable; policies come before --model ones, the first at / and /v1/policy")
    parser.add_argument("--policy-arg", action=_PolicyOptionAction, metavar="K=V",
                        help="keyword argument of the --policy before it (V read as JSON where it parses, "
                             "else a string), repeatable")
    parser.add_argument("--obs-map", action=_PolicyOptionAction, metavar="CLIENT=POLICY",
                        help="observation key CLIENT that clients send is the policy's key POLICY (CLIENT= : "
                             "accepted and dropped); for the --policy before it, repeatable")
    parser.add_argument("--llm", action="append", default=[], metavar="PATH[=ALIAS]|none",
                        help="serve the transformers causal LM in the local directory PATH for chat at /v1/chat "
                             "(repeatable; nothing is downloaded); with --llm and no --model, no policy is served; "
                             "without --llm the embedded world-lm (headway train lm) is served there; 'none' serves none")
    parser.add_argument("--chat-slots", type=int, default=8,
                        help="chat sessions per LM (each holds a KV-cache slot); more are refused with 1013 "
                             "(default %(default)s)")
    parser.add_argument("--chat-context", type=int, default=None,
                        help="tokens a chat session's cache holds (default: the model's context length)")
    parser.add_argument("--prefill-slice", type=int, default=32,
                        help="most prompt tokens one prefill request carries: a decode step of another session "
                             "waits for at most one batch of such slices (default %(default)s)")
    parser.add_argument("--llm-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the dtype chat LMs compute in; auto: bfloat16 where the CPU (AVX512-BF16, AMX) or "
                             "GPU computes in it natively, else float32 (default %(default)s)")
    parser.add_argument("--asr", default="shipped", metavar="PATH|none",
                        help="speech recogniser served at /v1/asr and /api/asr-streaming: a checkpoint directory "
                             "(or its .json/.safetensors) written by headway train asr; default: the shipped "
                             "models/checkpoints/dsm_asr when it is there; 'none' serves none")
    parser.add_argument("--asr-slots", type=int, default=32,
                        help="concurrent speech streams (each holds a slot); more are refused with 1013 "
                             "(default %(default)s); --max-batch also caps the streams stepped together")
    parser.add_argument("--asr-buffer-s", type=float, default=10.0,
                        help="seconds of audio a speech stream may have waiting before it is refused "
                             "(buffer_full, 1009); reading pauses at half of it (default %(default)s)")
    parser.add_argument("--tts", default="shipped", metavar="DIR|none",
                        help="speech synthesiser served at /v1/tts and /api/tts_streaming: a directory holding "
                             "dsm_tts.* and tts_codec.* (headway train codec, headway train tts); default: the shipped "
                             "models/checkpoints ones when they are there; 'none' serves none")
    parser.add_argument("--tts-slots", type=int, default=16,
                        help="concurrent synthesis streams (each holds a slot); more are refused with 1013 "
                             "(default %(default)s)")
    parser.add_argument("--standin-ms", type=float, default=20.0,
                        help="duration of every batched call of the stand-in policy (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch per model call (default %(default)s)")
    parser.add_argument("--device", default="cpu",
                        help="torch device handed to the model factories (default %(default)s); the shipped "
                             "policies and the stand-in run on the CPU whatever it says")
    parser.add_argument("--token", default=os.environ.get("HEADWAY_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (or openpi's 'Api-Key TOKEN'); "
                             "default $HEADWAY_TOKEN, unset = no auth")
    parser.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                        help="browser origin allowed to connect (repeatable; '*' = any). "
                             "Clients without an Origin header are always allowed")
    parser.add_argument("--budget-ms", type=float, default=d.budget_s * 1000,
                        help="default per-request latency budget (default %(default)s)")
    parser.add_argument("--capacity", type=int, default=d.capacity,
                        help="sessions per model; more are refused with close code 1013 (default %(default)s)")
    parser.add_argument("--batch-window-ms", type=float, default=d.batch_window_s * 1000,
                        help="how long an idle worker may wait to grow a batch (default %(default)s)")
    parser.add_argument("--max-size", type=int, default=d.max_size,
                        help="largest frame accepted, bytes; larger closes with 1009 (default %(default)s)")
    parser.add_argument("--send-timeout-s", type=float, default=d.send_timeout_s,
                        help="close a session whose reply could not be written for this long (default %(default)s)")
    parser.add_argument("--executor-host", default=d.executor_host, choices=("thread", "process"),
                        help="where each model's batched call runs: the engine's worker thread, or a child "
                             "process per model reached by typed messages (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="least severe log messages shown on stderr (default %(default)s)")


def epilog() -> str:
    """The models ``--model`` accepts, for ``headway serve --help`` (reads the checkpoint folder)."""
    return ("models (--model NAME):\n" + registry.describe_models() + "\n\n"
            "Plain 'headway serve' serves the stand-in (and the shipped speech recogniser at /v1/asr and\n"
            "/api/asr-streaming when models/checkpoints/dsm_asr is there; --asr none: not);\n"
            "'headway serve --model whack' serves the trained whack policy;\n"
            "'headway serve --policy my_policy:make_policy' serves your own (docs/own-policy.md).")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port, token=args.token or None,
        allowed_origins=tuple(args.allowed_origin), budget_s=args.budget_ms / 1000.0,
        capacity=args.capacity, batch_window_s=args.batch_window_ms / 1000.0, max_size=args.max_size,
        send_timeout_s=args.send_timeout_s, executor_host=args.executor_host,
    )


def load_models(args: argparse.Namespace) -> list[registry.LoadedModel]:
    """The ``--policy`` models, then the ``--model`` ones (the stand-in when there are none).

    Raises ``KeyError`` for an unknown ``--model`` and ``ValueError`` or ``ImportError`` for a
    ``--policy`` that cannot be served, each with a message for the user."""
    options = registry.ModelOptions(standin_ms=args.standin_ms, max_batch_size=args.max_batch, device=args.device,
                                    chat_slots=args.chat_slots, chat_context=args.chat_context,
                                    prefill_slice=args.prefill_slice, chat_dtype=getattr(args, "llm_dtype", "auto"),
                                    asr_slots=getattr(args, "asr_slots", 32),
                                    asr_buffer_s=getattr(args, "asr_buffer_s", 10.0),
                                    tts_slots=getattr(args, "tts_slots", 16))
    models = []
    for choice in getattr(args, "policy", None) or []:
        from stream.policy_models import plugin_model  # imports torch: only when a policy is served

        try:
            models.append(plugin_model(choice.target, choice.args, options, alias=choice.alias,
                                       obs_map=choice.obs_map))
        except (ValueError, ImportError) as exc:
            raise type(exc)(f"--policy {choice.target}: {exc}") from exc
    llms = [spec for spec in args.llm if spec != "none"]
    for spec in args.model or ([] if models or llms else ["standin"]):
        name, _, alias = spec.partition("=")
        models.append(registry.load(name, options, alias=alias or None))
    for spec in llms:
        path, _, alias = spec.partition("=")
        models.append(registry.load("llm:" + path, options, alias=alias or None))
    if not args.llm and not any(m.chat is not None for m in models):  # the embedded chat model, when it is there
        from stream import chat_models

        if chat_models.shipped_checkpoint_present():
            models.append(registry.load(chat_models.SHIPPED_NAME, options))
    for kind in ("asr", "tts"):
        choice = getattr(args, kind, "none")
        if choice == "shipped":  # served when it is there, unless a --model already serves it
            shipped = importlib.import_module(f"stream.{kind}_models")
            if shipped.shipped_checkpoint_present() and all(m.name != shipped.SHIPPED_NAME for m in models):
                models.append(registry.load(shipped.SHIPPED_NAME, options))
        elif choice != "none":
            models.append(registry.load(f"{kind}:{choice}", options))
    return models


async def serve(models: list[registry.LoadedModel], config: ServerConfig, ready=None) -> None:
    """Serve until SIGTERM/SIGINT, then drain. ``ready(port)`` is called once listening."""
    # The worker threads must get the GIL back quickly after their model call returns;
    # the default 5 ms switch interval would add up to 5 ms to a busy loop's replies.
    sys.setswitchinterval(0.0005)
    server = HeadwayServer(models, config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.drain()))
    log.info("listening on ws://%s:%d (models: %s)", config.host, server.port, ", ".join(server.served))
    if ready is not None:
        ready(server.port)
    await server.wait_closed()


def run(models: list[registry.LoadedModel], config: ServerConfig, ready=None) -> None:
    """Run :func:`serve` on uvloop (without touching the global event-loop policy)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(models, config, ready))


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs every connection at INFO; keep the log for what matters.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        models = load_models(args)
    except KeyError as exc:
        print(f"headway serve: {exc.args[0]} ('headway serve --help' says what each is)", file=sys.stderr)
        return 2
    except (ValueError, ImportError) as exc:
        print(f"headway serve: {exc} (docs/own-policy.md says what a policy provides)", file=sys.stderr)
        return 2
    config = config_from_args(args)
    try:
        run(models, config)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"headway serve: {port_in_use_message(config.host, config.port)}", file=sys.stderr)
        return 1
    return 0


def port_in_use_message(host: str, port: int) -> str:
    return (f"port {port} on {host} is already in use (another 'headway serve' or 'make demo' still running?); "
            f"stop it with Ctrl-C, or serve on another port: --port {port + 1} (--port 0 picks a free one)")

"""``onellm serve CHECKPOINT``: the OpenAI-compatible server (mounted by ``onellm.cli`` via :func:`add_serve_command`).

Also runnable alone: ``python -m onellm.serving serve CHECKPOINT [...]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from onellm.serving.engines import Engine, default_engine, engine_names
from onellm.serving.media import MediaPolicy, MiB

if TYPE_CHECKING:  # the service imports the processor and the chat parser: not needed to build the parser
    from onellm.serving.service import ChatService


def _lora(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--lora expects NAME=PATH, got {value!r}")
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"--lora {name}: {path!r} is not a folder")
    return name, Path(path)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint and the flags the engine is built from (shared by ``onellm serve`` and ``onellm ui``)."""
    parser.add_argument("checkpoint", type=Path, help="a onellm checkpoint folder (save_pretrained output)")
    parser.add_argument("--engine", choices=engine_names(), default=None, help="default: vllm when installed, else hf")
    parser.add_argument(
        "--lora",
        type=_lora,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a PEFT LoRA adapter; requests select it by NAME (repeatable)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto | float32 | bfloat16 | float16 (auto, the default: a float32 checkpoint runs in bfloat16, except on "
        "CPUs without AVX512-BF16/AMX, where it stays float32; a bf16/fp16 checkpoint as stored; both engines)",
    )
    parser.add_argument("--max-model-len", type=int, default=None, help="context length (default: the LLM's)")
    parser.add_argument("--seed", type=int, default=0)


def add_input_limit_arguments(group: argparse._ArgumentGroup) -> None:
    """Caps on one media input and on inputs per request (shared by ``onellm serve`` and ``onellm ui``)."""
    group.add_argument("--max-media-mb", type=float, default=20.0, help="size cap of one input, MiB")
    group.add_argument("--max-image-pixels", type=int, default=16_000_000)
    group.add_argument("--max-audio-seconds", type=float, default=120.0)
    group.add_argument("--max-inputs-per-request", type=int, default=8, help="media inputs in one request")


def usage_error(command: str, message: str) -> NoReturn:
    """One line on stderr naming ``onellm COMMAND``, exit status 2 (a user's mistake, as argparse reports them)."""
    print(f"onellm {command}: {message}", file=sys.stderr)
    raise SystemExit(2)


def checkpoint_from_args(args: argparse.Namespace, command: str) -> Path:
    """The resolved checkpoint folder; exits naming ``onellm COMMAND`` when it is not one."""
    checkpoint = args.checkpoint.resolve()
    if not (checkpoint / "config.json").is_file():
        usage_error(
            command,
            f"{checkpoint} is not a checkpoint folder (no config.json); pass a folder written by `onellm train` "
            "(e.g. runs/demo/train/instruct/merged) or `onellm build`",
        )
    return checkpoint


def reserve_port(args: argparse.Namespace, command: str) -> socket.socket:
    """``--host``:``--port`` bound now, before the (minutes-long) engine start, and handed to uvicorn by
    :func:`run_server`: the port is held for the server from the start, so nothing (e.g. a port vLLM picks for its
    own processes while it starts) can take it in between. One line and exit when it cannot be bound."""
    try:
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        usage_error(command, f"--host {args.host!r} does not resolve ({exc.strerror}); use e.g. --host 127.0.0.1")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        usage_error(
            command,
            f"cannot listen on {args.host}:{args.port} ({exc.strerror}); stop what holds it or pick another "
            "port with --port N",
        )
    logging.getLogger(f"onellm.{command}").info("holding %s:%d; the engine starts", args.host, args.port)
    return sock


def check_adapter_names(served: str, adapters: tuple[str, ...], command: str) -> None:
    """Exit when an adapter is named like the served model: a request's ``model`` must select one of them."""
    if served in adapters:
        usage_error(command, f"adapter name {served!r} equals the served model name; rename it (--lora NAME=PATH)")


def run_server(app: Any, service: ChatService, args: argparse.Namespace, command: str, sock: socket.socket) -> None:
    """uvicorn on ``sock`` (:func:`reserve_port`'s ``--host``:``--port``) until interrupted, or until the engine fails
    (its worker process died): then the server stops, as vLLM's own server does, and the process exits with status 1
    so that a supervisor restarts it (docs/api.md, Faults). Status 3 (uvicorn's) when the app did not start."""
    import uvicorn

    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level.lower(), timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    service.on_failure = lambda: setattr(server, "should_exit", True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it stopped on, once it has shut down
        pass
    if service.failure is not None:
        raise SystemExit(f"onellm {command}: the engine failed: {service.failure}; exiting with status 1")
    if not server.started:
        raise SystemExit(3)


def engine_from_args(args: argparse.Namespace, command: str) -> Engine:
    """The engine :func:`add_engine_arguments` describes (not started). ``command`` names the caller in errors."""
    from onellm.serving.engines import EngineSettings, build_engine

    checkpoint = checkpoint_from_args(args, command)
    return build_engine(
        args.engine or default_engine(),
        EngineSettings(
            checkpoint=checkpoint,
            adapters=dict(args.lora),
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            max_inputs_per_request=args.max_inputs_per_request,
            seed=args.seed,
        ),
    )


def media_policy_from_args(args: argparse.Namespace, **fetching: object) -> MediaPolicy:
    """The :class:`MediaPolicy` of :func:`add_input_limit_arguments`' flags; ``fetching``: its URL-fetching fields."""
    return MediaPolicy(
        max_bytes=int(args.max_media_mb * MiB),
        max_image_pixels=args.max_image_pixels,
        max_audio_seconds=args.max_audio_seconds,
        **fetching,
    )


def add_serve_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to an ``argparse`` sub-parser group; it runs :func:`serve`."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over an OpenAI-compatible HTTP API",
        description="Serve a onellm checkpoint: POST /v1/chat/completions, GET /v1/models, /health, /metrics.",
    )
    add_engine_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="the 'model' clients send (default: folder name)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ONELLM_API_KEY"),
        help="require 'Authorization: Bearer KEY' (env ONELLM_API_KEY)",
    )
    media = parser.add_argument_group("media")
    media.add_argument(
        "--allowed-media-domains",
        nargs="*",
        default=[],
        metavar="HOST",
        help="hosts http(s) media may come from (default: none, data: URLs only)",
    )
    media.add_argument(
        "--allowed-local-media-path", type=Path, default=None, help="folder file: URLs may read from (default: none)"
    )
    media.add_argument(
        "--allow-private-media-addresses",
        action="store_true",
        help="let allowlisted hosts resolve to private addresses (internal networks)",
    )
    media.add_argument("--media-fetch-timeout", type=float, default=10.0, help="seconds per http(s) download")
    limits = parser.add_argument_group("limits")
    add_input_limit_arguments(limits)
    limits.add_argument("--max-body-mb", type=float, default=64.0, help="request body cap, MiB")
    limits.add_argument("--max-queue", type=int, default=64, help="requests admitted at once; more get HTTP 429")
    limits.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--log-level", default="info")
    parser.set_defaults(func=serve)
    return parser


def serve(args: argparse.Namespace) -> None:
    """Build the engine and the app from parsed arguments and run uvicorn until interrupted."""
    import onellm  # noqa: F401  (Auto-class registration)
    from onellm.serving.app import ServerSettings, build_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    checkpoint = checkpoint_from_args(args, "serve")
    sock = reserve_port(args, "serve")
    adapters = dict(args.lora)
    served = args.served_model_name or checkpoint.name
    check_adapter_names(served, tuple(adapters), "serve")
    engine = engine_from_args(args, "serve")
    policy = media_policy_from_args(
        args,
        fetch_timeout=args.media_fetch_timeout,
        allowed_domains=frozenset(h.lower() for h in args.allowed_media_domains),
        allowed_local_path=args.allowed_local_media_path.resolve() if args.allowed_local_media_path else None,
        allow_private_addresses=args.allow_private_media_addresses,
    )
    settings = ServerSettings(
        served_model_name=served,
        adapters=tuple(adapters),
        api_key=args.api_key or None,
        max_body_bytes=int(args.max_body_mb * MiB),
        max_inputs_per_request=args.max_inputs_per_request,
        max_queue=args.max_queue,
        request_timeout=args.request_timeout,
        media=policy,
    )
    app = build_app(engine, load_processor(checkpoint), settings)
    run_server(app, app.state.service, args, "serve", sock)


def load_processor(checkpoint: Path) -> Any:
    """``checkpoint``'s processor; a warning when its saved chat template reads a text-first message in the client's
    order (a checkpoint saved before 2026-12-06), which the trained model answers as if blind (docs/api.md)."""
    from transformers import AutoProcessor

    from onellm.processing import puts_inputs_first

    processor = AutoProcessor.from_pretrained(str(checkpoint))
    if not puts_inputs_first(processor):
        logging.getLogger("onellm.serve").warning(
            "%s: its chat template renders a message's text before its inputs when a client sends the text part "
            "first, a layout no training stage uses (the small demo's model then answered image QA 0.14 instead "
            "of 0.50); to serve it as trained, save onellm.processing.CHAT_TEMPLATE as its chat_template.jinja",
            checkpoint,
        )
    return processor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m onellm.serving")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_command(subparsers)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":  # vLLM spawns worker processes: starting an engine must be guarded
    main()

"""``edgeasr serve``: the streaming websocket server (see edgeasr.serve.server and docs/SERVING.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from edgeasr.commands._decode_args import add_search_arguments, search_options
from edgeasr.decoding.modes import MODE_NAMES
from edgeasr.errors import EdgeAsrError


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="streaming recognition server (websocket) with a browser demo page",
        description=(
            "Serve a model over websockets. Protocol: a JSON start message ({\"type\": \"start\", "
            "\"sample_rate\": 16000}, optionally \"hotwords\": [\"phrase\", \"phrase :BOOST\"]), binary 16-bit PCM frames, a JSON end message ({\"type\": \"end\"}); "
            "the server answers with JSON partial and final results (word times in seconds from the stream "
            "start). Endpointing cuts a long stream into utterances. http://HOST:PORT/ is a browser page that "
            "streams the microphone; /health reports sessions."
        ),
    )
    serve.add_argument("--model", default="default", help="model directory, ONNX export, or 'default'")
    serve.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    serve.add_argument("--int8", action="store_true", help="ONNX backend: int8 graphs")
    serve.add_argument("--int4", action="store_true", help="ONNX backend: 4-bit decoder graphs, int8 encoder")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=6006, help="port (default: 6006; 0 = any free port)")
    serve.add_argument("--chunk-size", type=int, help="encoder frames per chunk (default: the model's)")
    serve.add_argument("--mode", default="attention_rescoring", choices=MODE_NAMES,
                       help="final results' decoding mode (default: attention_rescoring)")
    serve.add_argument("--workers", type=int, default=2, help="compute threads shared by all sessions (default: 2)")
    serve.add_argument("--max-sessions", type=int, default=32, help="open sessions at most (default: 32)")
    serve.add_argument("--max-message-kb", type=int, default=256, help="largest message accepted (default: 256 KB)")
    serve.add_argument("--max-session-seconds", type=float, default=3600.0, help="audio per session at most")
    serve.add_argument("--idle-timeout", type=float, default=30.0, help="close a session silent this long (s)")
    serve.add_argument("--endpoint-silence", type=float, default=0.8,
                       help="trailing silence after speech that ends an utterance (s, default 0.8)")
    serve.add_argument("--max-utterance", type=float, default=20.0, help="longest utterance before a cut (s)")
    serve.add_argument("--min-audio-rate", type=float, default=0.5, metavar="R",
                       help="after 10 s, close streams that sent less than R s of audio per second (default: 0.5; "
                            "0 = off): slow tricklers cannot hold sessions")
    serve.add_argument("--max-load", type=float, default=0.8, metavar="F",
                       help="refuse new sessions while the workers were busier than F of their capacity over "
                            "the last 10 s, or would be with one more session at the recent cost per audio "
                            "second (default: 0.8, measured: workers share the GIL and the "
                            "cores; 0 = off): the open sessions stay real-time")
    serve.add_argument("--max-queue-wait", type=float, default=0.2, metavar="S",
                       help="also refuse new sessions while work waited more than S seconds for a worker "
                            "(90th percentile over the last 10 s; default: 0.2; 0 = off)")
    serve.add_argument("--allowed-origins", default="", metavar="LIST",
                       help="comma-separated web origins (e.g. https://app.example.com) allowed to stream besides "
                            "the server's own page; '*' = any. Clients without an Origin (CLI tools) always are.")
    add_search_arguments(serve)
    serve.set_defaults(func=run_serve)


def build_server(args: argparse.Namespace):
    from edgeasr.api import load_model
    from edgeasr.decoding.endpoint import EndpointRules
    from edgeasr.serve.server import ServerLimits, StreamingServer

    if not args.min_audio_rate >= 0 or not args.max_load >= 0 or not args.max_queue_wait >= 0:
        raise EdgeAsrError("--min-audio-rate, --max-load and --max-queue-wait must be 0 or more")
    if not 0 <= args.port <= 65535:
        raise EdgeAsrError(f"--port must be from 0 to 65535, got {args.port}")
    for name in ("workers", "max_sessions", "max_message_kb"):
        if getattr(args, name) < 1:
            raise EdgeAsrError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_session_seconds <= 0 or args.idle_timeout <= 0 or args.endpoint_silence <= 0 or args.max_utterance <= 0:
        raise EdgeAsrError("durations must be positive")
    recognizer = load_model(args.model, args.backend, mode=args.mode, chunk_size=args.chunk_size,
                            int8=args.int8, int4=args.int4, threads=1, **search_options(args))
    limits = ServerLimits(workers=args.workers, max_sessions=args.max_sessions,
                          max_message_bytes=args.max_message_kb * 1024,
                          max_session_seconds=args.max_session_seconds, idle_timeout=args.idle_timeout,
                          endpoint=EndpointRules(silence_after_speech=args.endpoint_silence,
                                                 max_utterance=args.max_utterance),
                          min_audio_rate=args.min_audio_rate, max_load=args.max_load,
                          max_queue_wait=args.max_queue_wait,
                          allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()))
    return StreamingServer(recognizer, limits)


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = build_server(args)

    async def main() -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(server.run(args.host, args.port, ready))
        waiting = asyncio.create_task(ready.wait())
        # a port that is busy or invalid fails the server task before it is ready: report it
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiting.cancel()
            task.result()  # raises the listening error
            return
        print(f"edgeasr serve: ws://{args.host}:{server.port} (browser page: http://{args.host}:{server.port}/)",
              flush=True)
        await task

    try:
        asyncio.run(main())
    except OSError as error:
        raise EdgeAsrError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})") from None
    return 0

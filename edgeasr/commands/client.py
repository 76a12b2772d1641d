"""``edgeasr client``: stream an audio file to a running ``edgeasr serve``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from edgeasr.errors import EdgeAsrError


def register(subparsers: argparse._SubParsersAction) -> None:
    client = subparsers.add_parser(
        "client", help="stream an audio file to an edgeasr server",
        description="Stream FILE to a running `edgeasr serve` at real-time speed (or --speed times faster; "
                    "0 = as fast as possible); print final results (and partials with --partials).",
    )
    client.add_argument("file", metavar="FILE")
    client.add_argument("--url", default="ws://127.0.0.1:6006", help="server URL (default: ws://127.0.0.1:6006)")
    client.add_argument("--speed", type=float, default=1.0, help="x real time (default: 1; 0 = no pacing)")
    client.add_argument("--chunk-ms", type=float, default=100.0, help="audio per message (default: 100 ms)")
    client.add_argument("--partials", action="store_true", help="print partial results to stderr")
    client.add_argument("--json", action="store_true", help="print every event as a JSON line")
    client.add_argument("--hotwords", metavar="FILE",
                        help="phrases to bias this stream towards (one a line, optional ' :BOOST')")
    client.set_defaults(func=run_client)


def run_client(args: argparse.Namespace) -> int:
    from edgeasr.audio.io import load_audio
    from edgeasr.serve.client import stream_audio

    samples = load_audio(args.file)
    hotwords = None
    if args.hotwords:
        from edgeasr.decoding.fusion import read_hotwords

        hotwords = [f"{text} :{boost:g}" for text, boost in read_hotwords(args.hotwords, 1.5)]

    def show(event: dict) -> None:
        if args.json:
            print(json.dumps({k: v for k, v in event.items() if k != "received_at"}), flush=True)
        elif event["type"] == "final":
            print(f"[{event['start']:.2f}-{event['end']:.2f}] {event['text']}", flush=True)
        elif event["type"] == "partial" and args.partials:
            print(f"  ... {event['text']}", file=sys.stderr, flush=True)
        elif event["type"] == "error":
            print(f"edgeasr: server error: {event['message']}", file=sys.stderr, flush=True)

    try:
        events = asyncio.run(stream_audio(args.url, samples, 16000, args.speed, args.chunk_ms, on_event=show,
                                         hotwords=hotwords))
    except (OSError, asyncio.TimeoutError) as error:
        raise EdgeAsrError(f"cannot reach {args.url} ({error})") from None
    except Exception as error:
        if type(error).__module__.startswith("websockets"):
            raise EdgeAsrError(f"{args.url}: {error}") from None
        raise
    return 2 if any(e["type"] == "error" for e in events) else 0

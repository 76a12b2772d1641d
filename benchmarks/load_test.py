"""Load test of `edgeasr serve`: N concurrent real-time streams over loopback.

    python benchmarks/load_test.py --model default --manifest data/synth/test.jsonl \
        --sessions 1,4,8,16 --seconds 20 --out benchmarks/results/load_test.json

The server runs as its own process (`edgeasr serve --port 0`, 1 torch thread per worker, the
given number of workers). For each concurrency level, that many clients each stream ``--seconds``
of held-out speech (test utterances joined) at real-time pace in 100 ms messages, asking for a
reply to every message (``every_chunk``). Per level:
- per-chunk latency p50/p95/max: the reply's arrival minus the message's send time, over every
  chunk of every session (it includes queueing for a worker: what a user would see);
- RTF: worker compute time over audio time, from the server's /health counters;
- sessions held at once (sampled from /health) and the server's resident memory before, after
  and at its peak (VmRSS / VmHWM of the process), to show memory stays flat.
Then BENCHMARKS.md is regenerated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.report import save_result
from edgeasr.serve.client import stream_audio

ROOT = Path(__file__).resolve().parents[1]


def memory_kb(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    values = {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}
    return {"rss_kb": values["VmRSS"], "peak_kb": values["VmHWM"]}


def health(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_level(port: int, audio: list[np.ndarray], sessions: int, speed: float) -> dict:
    held = []

    async def watch(done: asyncio.Event) -> None:
        while not done.is_set():
            held.append(health(port)["sessions_open"])
            await asyncio.sleep(0.25)

    async def client(index: int) -> list[float]:
        sent: list[float] = []
        events = await stream_audio(f"ws://127.0.0.1:{port}", audio[index % len(audio)], speed=speed,
                                    every_chunk=True, sent_at=sent)
        if any(e["type"] == "error" for e in events):
            raise RuntimeError(f"session {index}: {[e for e in events if e['type'] == 'error']}")
        replies = [e["received_at"] for e in events if e["type"] == "partial"]
        return [1000 * (r - s) for r, s in zip(replies, sent)]

    done = asyncio.Event()
    watcher = asyncio.create_task(watch(done))
    before = health(port)
    started = time.perf_counter()
    latencies = [x for lat in await asyncio.gather(*(client(i) for i in range(sessions))) for x in lat]
    wall = time.perf_counter() - started
    done.set()
    await watcher
    after = health(port)
    audio_s = after["audio_seconds"] - before["audio_seconds"]
    compute_s = after["compute_seconds"] - before["compute_seconds"]
    return {
        "sessions": sessions,
        "chunks": len(latencies),
        "latency_ms": {"p50": round(percentile(latencies, 0.5), 2), "p95": round(percentile(latencies, 0.95), 2),
                       "max": round(max(latencies), 2), "mean": round(statistics.fmean(latencies), 2)},
        "rtf": round(compute_s / audio_s, 4) if audio_s else None,
        "audio_seconds": round(audio_s, 1),
        "wall_seconds": round(wall, 1),
        "sessions_held_max": max(held) if held else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--sessions", default="1,4,8,16", help="concurrency levels, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--speed", type=float, default=1.0, help="x real time per session (default 1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load_test.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    levels = [int(n) for n in args.sessions.split(",")]
    utts = read_manifest(args.manifest)
    audio, current, index = [], [], 0
    while len(audio) < max(levels):  # distinct streams of --seconds each, from consecutive utterances
        samples = load_audio(utts[index % len(utts)].audio)
        current.append(samples)
        index += 1
        if sum(len(c) for c in current) >= args.seconds * 16000:
            audio.append(np.concatenate(current)[: int(args.seconds * 16000)])
            current = []
        if index > 10 * len(utts):
            break
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "edgeasr", "serve", "--model", args.model, "--backend",
                               args.backend, "--port", "0", "--workers", str(args.workers),
                               "--max-sessions", str(max(levels) + 4)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = server.stdout.readline()
        match = re.search(r"ws://[^:]+:(\d+)", line)
        if not match:
            raise SystemExit(f"server did not start: {line!r}")
        port = int(match.group(1))
        memory_start = memory_kb(server.pid)
        rows = []
        for sessions in levels:
            row = asyncio.run(one_level(port, audio, sessions, args.speed))
            row["memory_after_kb"] = memory_kb(server.pid)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        memory_end = memory_kb(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    result = {
        "benchmark": "load_test",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {args.workers} worker threads, 1 torch thread each",
        "model": args.model,
        "backend": args.backend,
        "seconds_per_session": args.seconds,
        "speed": args.speed,
        "chunk_ms": 100,
        "levels": rows,
        "memory_kb": {"start": memory_start, "end": memory_end},
    }
    save_result(result, args.out, args.report)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

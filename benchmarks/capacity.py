"""Capacity, overload, trickle and soak test of `edgeasr serve` (the reliability targets).

    python benchmarks/capacity.py --model default --manifest ../shared/data/realdev/realdev.jsonl \
        --soak-minutes 30 --out benchmarks/results/capacity.json

The server runs as its own process (``edgeasr serve --port 0``, 1 torch thread per worker). Clients
stream held-out speech at real-time pace in 100 ms messages and ask for a reply to every message,
so each message's latency (send to reply, queueing included) is measured. Four phases:

1. **capacity**: 1, 2, 3, ... concurrent sessions until one level misses "served at real time"
   (every session served and p95 latency <= 500 ms); the capacity is the last level that met it;
2. **overload**: twice that many sessions arriving 0.5 s apart: each must be served or refused
   with a reason (close 1013), never dropped with 1011, and the served ones keep their latency;
3. **trickle**: 32 clients each sending 2 bytes every 20 s hold every slot; a new client must be
   served or refused with a reason within 1 s, and once the pace limit has closed the tricklers a
   new client is served again;
4. **soak**: ``capacity`` sessions streaming back to back for ``--soak-minutes``; the server's
   resident memory sampled every 15 s must stay flat.

Between phases the server's load window (10 s) is let run out, so one phase's load does not
refuse the next one's sessions. Then BENCHMARKS.md is regenerated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import health, memory_kb, percentile  # noqa: E402

from edgeasr.audio.io import load_audio  # noqa: E402
from edgeasr.data.manifest import read_manifest  # noqa: E402
from edgeasr.evaluate.report import run_facts, save_result  # noqa: E402
from edgeasr.serve.client import StreamClosed, stream_audio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
P95_LIMIT_MS = 500.0


async def one_session(port: int, samples: np.ndarray) -> dict:
    """One real-time session: how it ended (served / refused / closed) and its chunk latencies."""
    sent: list[float] = []
    try:
        events = await stream_audio(f"ws://127.0.0.1:{port}", samples, every_chunk=True, sent_at=sent)
    except StreamClosed as error:
        return {"outcome": "closed", "reason": str(error), "latencies": []}
    except OSError as error:
        return {"outcome": "closed", "reason": str(error), "latencies": []}
    errors = [e["message"] for e in events if e["type"] == "error"]
    if errors:
        refused = any(("busy" in m or "capacity" in m) for m in errors)
        return {"outcome": "refused" if refused else "error", "reason": errors[0], "latencies": []}
    replies = [e["received_at"] for e in events if e["type"] == "partial"]
    return {"outcome": "served", "latencies": [1000 * (r - s) for r, s in zip(replies, sent)]}


def summarize(sessions: list[dict]) -> dict:
    latencies = [x for s in sessions for x in s["latencies"]]
    outcomes = {k: sum(s["outcome"] == k for s in sessions) for k in ("served", "refused", "closed", "error")}
    row = {"sessions": len(sessions), **outcomes, "chunks": len(latencies)}
    if latencies:
        row["latency_ms"] = {"p50": round(percentile(latencies, 0.5), 1), "p95": round(percentile(latencies, 0.95), 1),
                             "max": round(max(latencies), 1), "mean": round(statistics.fmean(latencies), 1)}
    reasons = sorted({s["reason"][:120] for s in sessions if s.get("reason")})
    if reasons:
        row["reasons"] = reasons
    return row


def real_time(row: dict) -> bool:
    return row["served"] == row["sessions"] and row.get("latency_ms", {}).get("p95", 1e9) <= P95_LIMIT_MS


async def level(port: int, audio: list[np.ndarray], sessions: int, stagger: float = 0.0) -> dict:
    async def delayed(index: int) -> dict:
        await asyncio.sleep(index * stagger)
        return await one_session(port, audio[index % len(audio)])

    before = health(port)
    rows = await asyncio.gather(*(delayed(i) for i in range(sessions)))
    after = health(port)
    row = summarize(list(rows))
    audio_s = after["audio_seconds"] - before["audio_seconds"]
    row["rtf"] = round((after["compute_seconds"] - before["compute_seconds"]) / audio_s, 4) if audio_s else None
    return row


async def trickle(port: int, audio: np.ndarray, clients: int) -> dict:
    """``clients`` tricklers take every slot; then a newcomer is timed twice (while they hold the
    slots, and after the pace limit has closed them)."""
    from websockets.asyncio.client import connect

    closes: list[str] = []

    async def trickler() -> None:
        try:
            async with connect(f"ws://127.0.0.1:{port}", ping_timeout=None) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
                while True:
                    await ws.send(b"\0\0")
                    try:  # a close arrives as an error event, then the close itself
                        message = await asyncio.wait_for(ws.recv(), 20)
                        if '"error"' in message:
                            closes.append(json.loads(message)["message"][:60])
                    except asyncio.TimeoutError:
                        pass
        except Exception as error:  # closed by the server: the reason is what we measure
            rcvd = getattr(error, "rcvd", None)
            closes.append(f"{rcvd.code} {rcvd.reason}" if rcvd is not None else type(error).__name__)

    async def newcomer() -> tuple[float, str]:
        started = time.perf_counter()
        first: dict = {}

        def on_event(event: dict) -> None:
            if not first:
                first.update(event)
                first["after"] = time.perf_counter() - started

        result = await one_session_with_events(port, audio, on_event)
        return round(first.get("after", float("nan")), 3), result

    opened = time.perf_counter()
    tasks = [asyncio.create_task(trickler()) for _ in range(clients)]
    await asyncio.sleep(2.0)  # every trickler connected and started
    held = health(port)["sessions_open"]
    blocked_after, blocked = await newcomer()
    # the pace limit closes a trickler once its grace has passed and it is under the minimum rate
    deadline = time.perf_counter() + 60
    while health(port)["sessions_open"] > 0 and time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
    freed_in = round(time.perf_counter() - opened, 1)
    served_after, served = await newcomer()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"tricklers": clients, "slots_held": held, "newcomer_while_held": {"first_reply_s": blocked_after, **blocked},
            "tricklers_closed_after_s": freed_in, "trickler_closes": sorted(set(closes)),
            "newcomer_after": {"first_reply_s": served_after, **served}}


async def one_session_with_events(port: int, samples: np.ndarray, on_event) -> dict:
    try:
        events = await stream_audio(f"ws://127.0.0.1:{port}", samples, on_event=on_event)
    except StreamClosed as error:
        return {"outcome": "closed", "reason": str(error)}
    errors = [e["message"] for e in events if e["type"] == "error"]
    if errors:
        return {"outcome": "refused" if any("busy" in m or "capacity" in m for m in errors) else "error",
                "reason": errors[0]}
    return {"outcome": "served", "text": " ".join(e["text"] for e in events if e["type"] == "final")[:80]}


async def soak(port: int, pid: int, audio: list[np.ndarray], sessions: int, minutes: float) -> dict:
    """``sessions`` streams back to back for ``minutes``; resident memory sampled every 15 s."""
    end = time.perf_counter() + 60 * minutes
    results: list[dict] = []
    samples: list[dict] = []
    started = time.perf_counter()

    async def runner(index: int) -> None:
        k = index
        while time.perf_counter() < end:
            results.append(await one_session(port, audio[k % len(audio)]))
            if results[-1]["outcome"] != "served":
                await asyncio.sleep(2.0)  # refused: try again later, as the server asks
            k += sessions

    async def sampler() -> None:
        while time.perf_counter() < end:
            samples.append({"minute": round((time.perf_counter() - started) / 60, 2), **memory_kb(pid)})
            await asyncio.sleep(15)

    await asyncio.gather(sampler(), *(runner(i) for i in range(sessions)))
    samples.append({"minute": round((time.perf_counter() - started) / 60, 2), **memory_kb(pid)})
    rss = [s["rss_kb"] for s in samples]
    third = max(1, len(rss) // 3)
    row = summarize(results)
    row.update({"minutes": round((time.perf_counter() - started) / 60, 1), "concurrent": sessions,
                "rss_mb": {"first": round(rss[0] / 1024), "after_first_third": round(statistics.median(rss[third:2 * third] or rss) / 1024),
                           "last_third_median": round(statistics.median(rss[-third:]) / 1024),
                           "max": round(max(rss) / 1024), "last": round(rss[-1] / 1024)},
                "memory_samples": samples})
    return row


def settle(port: int) -> None:
    """Let the server's load window run out so earlier load does not refuse the next sessions."""
    time.sleep(11)
    while health(port)["sessions_open"]:
        time.sleep(1)


def streams(manifest: str, count: int, seconds: float) -> list[np.ndarray]:
    utts = read_manifest(manifest)
    out, current, index = [], [], 0
    while len(out) < count:  # distinct streams from consecutive utterances
        current.append(load_audio(utts[index % len(utts)].audio))
        index += 1
        if sum(len(c) for c in current) >= seconds * 16000:
            out.append(np.concatenate(current)[: int(seconds * 16000)])
            current = []
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--precision", default="float", choices=("float", "int8", "int4"),
                        help="ONNX backend: the graphs the server runs (int4: 4-bit decoder, int8 encoder)")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-level", type=int, default=16)
    parser.add_argument("--soak-minutes", type=float, default=30.0)
    parser.add_argument("--tricklers", type=int, default=32)
    parser.add_argument("--phases", default="capacity,overload,trickle,soak",
                        help="phases to run (comma-separated); the others are kept from --out when it exists "
                             "(the soak is long: re-measure capacity on a quiet machine without redoing it)")
    parser.add_argument("--soak-sessions", type=int,
                        help="concurrent sessions in the soak (default: the capacity found)")
    parser.add_argument("--soak-note", help="a remark printed with the soak (e.g. what else ran meanwhile)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "capacity.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    unknown = phases - {"capacity", "overload", "trickle", "soak"}
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    audio = streams(args.manifest, 2 * args.max_level, args.seconds)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "edgeasr", "serve", "--model", args.model, "--backend",
                               args.backend, "--port", "0", "--workers", str(args.workers),
                               "--max-sessions", str(args.tricklers),
                               *([f"--{args.precision}"] if args.precision != "float" else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    result = {**run_facts("capacity", "benchmarks/capacity.py", sys.argv[1:]), "model": args.model,
              "backend": args.backend, "precision": args.precision, "workers": args.workers,
              "seconds_per_session": args.seconds,
              "p95_limit_ms": P95_LIMIT_MS}
    try:
        match = re.search(r"ws://[^:]+:(\d+)", server.stdout.readline())
        if not match:
            raise SystemExit("server did not start")
        port = int(match.group(1))
        result["memory_start_kb"] = memory_kb(server.pid)
        stamp = {"date": result["date"], "load_average": result["load_average"]}
        capacity = previous.get("capacity_sessions", 0)
        if "capacity" in phases:
            levels, capacity = [], 0
            for sessions in range(1, args.max_level + 1):
                row = asyncio.run(level(port, audio, sessions))
                levels.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                settle(port)
                if not real_time(row):
                    break
                capacity = sessions
            result["levels"], result["capacity_sessions"], result["capacity_run"] = levels, capacity, stamp
        if "overload" in phases:
            result["overload"] = {**asyncio.run(level(port, audio, max(2, 2 * capacity), stagger=0.5)), **stamp}
            print(json.dumps(result["overload"]), file=sys.stderr, flush=True)
            settle(port)
        if "trickle" in phases:
            result["trickle"] = {**asyncio.run(trickle(port, audio[0], args.tricklers)), **stamp}
            print(json.dumps(result["trickle"]), file=sys.stderr, flush=True)
            settle(port)
        soak_sessions = args.soak_sessions or capacity
        if "soak" in phases and args.soak_minutes > 0 and soak_sessions:
            result["soak"] = {**asyncio.run(soak(port, server.pid, audio, soak_sessions, args.soak_minutes)), **stamp}
            print(json.dumps({k: v for k, v in result["soak"].items() if k != "memory_samples"}), file=sys.stderr)
        result["memory_end_kb"] = memory_kb(server.pid)
        if args.soak_note and "soak" in phases:
            result["soak_note"] = args.soak_note
        for key in ("levels", "capacity_sessions", "capacity_run", "overload", "trickle", "soak", "soak_note"):
            if key not in result and key in previous:  # a phase not run this time: its last measurement
                result[key] = previous[key]
    finally:
        server.terminate()
        server.wait(10)
    save_result(result, args.out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

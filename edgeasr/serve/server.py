"""The streaming websocket server behind ``edgeasr serve``.

Protocol (one websocket per audio stream):

1. client -> ``{"type": "start", "sample_rate": 16000}`` (any rate from 8 to 48 kHz; resampled;
   optionally ``"hotwords": ["phrase", "phrase :BOOST"]`` to bias this stream's recognition);
2. client -> binary frames of 16-bit little-endian mono PCM, any size up to the message limit;
   server -> ``{"type": "partial", "segment": n, "text", "words", "start"}`` as text changes (or
   after every audio message when the start message says ``"every_chunk": true``, which lets a
   client time each chunk);
3. when the endpointer cuts an utterance (trailing silence after speech, or its maximum length),
   server -> ``{"type": "final", "segment": n, "text", "words", "start", "end", "confidence",
   "decoded_by"}`` (``decoded_by``: the pass that wrote it, "first_pass" or the second pass's
   kind: "whisper", "attention", "cascade") and recognition goes on with segment n + 1 in the same stream;
4. client -> ``{"type": "end"}``; server -> the last ``final`` (if any speech) and
   ``{"type": "done"}``, then closes.

Times are seconds from the start of the stream. Any problem (a malformed message, audio before
``start``, an odd byte count, a session over its length limit, an idle client) gets
``{"type": "error", "message": ...}`` and a close of that connection only; other sessions never
notice. Model compute runs on a bounded pool of worker threads (``workers``), the number of open
sessions is capped (``max_sessions``), and each session's state is freed when it closes, so memory
stays flat over a long run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeasr.decoding.endpoint import EndpointRules
from edgeasr.errors import EdgeAsrError

log = logging.getLogger("edgeasr.serve")
STATIC = Path(__file__).with_name("static")


@dataclass
class ServerLimits:
    workers: int = 2
    max_sessions: int = 32
    max_message_bytes: int = 256 * 1024
    max_session_seconds: float = 3600.0
    idle_timeout: float = 30.0
    endpoint: EndpointRules = field(default_factory=EndpointRules)
    #: web origins allowed to open streams besides the server's own page ("*" = any); clients
    #: that send no Origin (command-line tools) are always allowed. Without this check any web
    #: page a user visits could stream to (and listen through) a server on their machine.
    allowed_origins: tuple[str, ...] = ()
    #: after ``rate_grace_seconds``, a session must have sent at least this many seconds of audio
    #: per second of wall time, or it is closed: a client trickling a few bytes now and then
    #: would otherwise hold a slot forever (real-time clients send 1 s per second)
    min_audio_rate: float = 0.5
    rate_grace_seconds: float = 10.0
    #: admission control: new sessions are refused while the workers were busier than this share
    #: of their capacity over the last ``load_window`` seconds, or would be with one more session
    #: (the open ones would fall behind real time if more came in); 0 = off. Not 0.9: worker
    #: seconds overstate what the workers can deliver together, because they share the GIL (the
    #: searches and glue are Python) and the cores with the event loop and the clients. Measured
    #: on 2 workers and 2 cores (benchmarks/results/capacity.json): 5 sessions were real time, and
    #: a 6th was predicted at 94% of the workers (about 0.31 worker seconds per audio second each).
    max_load: float = 0.8
    load_window: float = 10.0
    #: admission control: new sessions are also refused while the 90th percentile of the time
    #: work waited for a worker over the load window exceeds this (seconds); 0 = off
    max_queue_wait: float = 0.2


class ProtocolError(Exception):
    """A client mistake: reported to that client, then its connection is closed."""


@dataclass
class Stats:
    sessions_open: int = 0
    sessions_total: int = 0
    sessions_rejected: int = 0
    errors: int = 0
    finals: int = 0
    #: audio received and worker time spent on it, over all sessions (RTF = compute / audio)
    audio_seconds: float = 0.0
    compute_seconds: float = 0.0
    sessions_refused_load: int = 0
    #: worker seconds per second over the load window, divided by the number of workers
    load: float = 0.0
    #: 90th percentile of the seconds work waited for a worker, over the load window
    queue_wait_p90: float = 0.0
    #: worker seconds per audio second over about the last minute of audio (once 2 s came)
    window_rtf: float = 0.0
    #: the same over about the last ten minutes of audio: slower to move, so it does not dip while
    #: new sessions' audio arrives before the second passes it will cost (they run at segment ends)
    long_rtf: float = 0.0
    #: the load one more real-time session would bring: (open + 1) x the larger of the two RTFs
    #: / workers
    predicted_load: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class StreamingServer:
    """Serves one recognizer (torch or ONNX) to many websocket clients."""

    def __init__(self, recognizer, limits: ServerLimits | None = None) -> None:
        self.recognizer = recognizer
        self.limits = limits or ServerLimits()
        self.pool = ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="edgeasr-worker")
        self.stats = Stats()
        self._lock = threading.Lock()
        self.port: int | None = None
        self._work: deque = deque()  # (finished at, worker seconds) over the load window
        self._waits: deque = deque()  # (started at, seconds queued for a worker) over the window
        self._cost = (0.0, 0.0)  # decayed (worker seconds, audio seconds): see _record_work
        self._cost_long = (0.0, 0.0)

    def _record_work(self, seconds: float, audio_seconds: float = 0.0) -> None:
        now = time.monotonic()
        with self._lock:
            self._work.append((now, seconds))
            # worker seconds per audio second, over about the last minute of audio (a half-life of
            # 30 audio seconds): what one more real-time session costs. Counted per audio, not per
            # wall second, so it neither fades while the server idles nor jumps as a window drains.
            decay = 0.5 ** (audio_seconds / 30.0)
            self._cost = (self._cost[0] * decay + seconds, self._cost[1] * decay + audio_seconds)
            if self._cost[1] >= 2.0:
                self.stats.window_rtf = round(self._cost[0] / self._cost[1], 4)
            # Sessions arriving together bring their audio seconds before the second passes they
            # will cost, so the one-minute figure dips just when admissions happen (measured: 7
            # admitted where 5 were the capacity); a ten-minute figure (half-life 300 audio s)
            # holds the cost of whole sessions.
            decay = 0.5 ** (audio_seconds / 300.0)
            self._cost_long = (self._cost_long[0] * decay + seconds, self._cost_long[1] * decay + audio_seconds)
            if self._cost_long[1] >= 2.0:
                self.stats.long_rtf = round(self._cost_long[0] / self._cost_long[1], 4)
            self._update_load(now)

    def _update_load(self, now: float) -> None:
        window = self.limits.load_window
        while self._work and self._work[0][0] < now - window:
            self._work.popleft()
        while self._waits and self._waits[0][0] < now - window:
            self._waits.popleft()
        self.stats.load = round(sum(s for _, s in self._work) / (window * self.limits.workers), 3)
        waits = sorted(w for _, w in self._waits)
        self.stats.queue_wait_p90 = round(waits[int(0.9 * (len(waits) - 1))], 3) if waits else 0.0

    def _queued(self, function):
        """``function``, recording how long it waited for a worker when it runs: the backlog that
        admission control watches (busy workers alone understate it: the GIL and the clients
        share the cores)."""
        enqueued = time.monotonic()

        def run(*args):
            now = time.monotonic()
            with self._lock:
                self._waits.append((now, now - enqueued))
            return function(*args)

        return run

    def _overloaded(self) -> bool:
        """Whether one more session would overload the workers (call with the lock held).

        Predicted: the open sessions plus this one, each costing what audio has cost lately;
        measured: the workers' recent busy share and how long work waits for one. The prediction
        refuses before the backlog shows (latency lags admissions by seconds)."""
        self._update_load(time.monotonic())
        limits, stats = self.limits, self.stats
        cost = max(stats.window_rtf, stats.long_rtf)
        stats.predicted_load = round((stats.sessions_open + 1) * cost / limits.workers, 3)
        overloaded = limits.max_load > 0 and (stats.load > limits.max_load or stats.predicted_load > limits.max_load)
        return overloaded or (limits.max_queue_wait > 0 and stats.queue_wait_p90 > limits.max_queue_wait)

    # -- one connection -------------------------------------------------------------------------

    async def handle(self, websocket) -> None:
        with self._lock:
            overloaded = self._overloaded()
            if overloaded and self.stats.sessions_open > 0:
                self.stats.sessions_refused_load += 1
                rejected = "load"
            elif self.stats.sessions_open >= self.limits.max_sessions:
                self.stats.sessions_rejected += 1
                rejected = True
            else:
                self.stats.sessions_open += 1
                self.stats.sessions_total += 1
                rejected = False
        if rejected == "load":
            await self._send(websocket, {"type": "error", "message": "server at capacity: the open sessions use "
                                         f"{100 * self.stats.load:.0f}% of its workers (one more: "
                                         f"{100 * self.stats.predicted_load:.0f}%) and wait "
                                         f"{1000 * self.stats.queue_wait_p90:.0f} ms for one, try again later"})
            await websocket.close(1013, "server at capacity")
            return
        if rejected:
            await self._send(websocket, {"type": "error", "message": f"server busy: {self.limits.max_sessions} "
                                                                     "sessions open, try again later"})
            await websocket.close(1013, "server busy")
            return
        try:
            await self._serve(websocket)
        except ProtocolError as error:
            with self._lock:
                self.stats.errors += 1
            await self._send(websocket, {"type": "error", "message": str(error)})
            await websocket.close(1008, str(error)[:120])
        except Exception as error:  # a disconnect mid-stream, or a bug: this session only
            if type(error).__name__.startswith("ConnectionClosed"):
                log.info("client went away: %s", error)
            else:
                log.exception("session failed")
                with self._lock:
                    self.stats.errors += 1
                await self._send(websocket, {"type": "error", "message": f"internal error: {type(error).__name__}"})
        finally:
            with self._lock:
                self.stats.sessions_open -= 1

    async def _receive(self, websocket, pace: "_Pace | None" = None):
        """The next message; closes a session that is idle, too slow, or open too long."""
        idle = self.limits.idle_timeout
        timeout = idle if pace is None else max(0.05, min(idle, pace.seconds_left()))
        try:
            return await asyncio.wait_for(websocket.recv(), timeout=timeout)
        except asyncio.TimeoutError:
            if pace is not None:
                pace.check()
            if timeout < idle:  # the pace deadline passed but the session caught up since
                return await self._receive(websocket, pace)
            raise ProtocolError(f"idle for {idle:g} s: closing") from None

    async def _serve(self, websocket) -> None:
        start = _parse_json(await self._receive(websocket))
        if start.get("type") != "start":
            raise ProtocolError('the first message must be {"type": "start", "sample_rate": ...}')
        unknown = sorted(set(start) - START_KEYS)
        if unknown:
            raise ProtocolError(f"unknown start option(s) {', '.join(unknown)[:80]} "
                                f"(known: {', '.join(sorted(START_KEYS - {'type'}))})")
        rate = start.get("sample_rate", 16000)
        if not isinstance(rate, int) or not 8000 <= rate <= 48000:
            raise ProtocolError("sample_rate must be an integer from 8000 to 48000")
        every_chunk = start.get("every_chunk", False)
        if not isinstance(every_chunk, bool):
            raise ProtocolError("every_chunk must be true or false")
        hotwords = _hotwords(start.get("hotwords"))
        try:
            stream = _Utterances(self.recognizer, rate, self.limits.endpoint, every_chunk, hotwords)
        except EdgeAsrError as error:  # unusable hotwords
            raise ProtocolError(str(error)) from None
        loop = asyncio.get_running_loop()
        await self._send(websocket, {"type": "ready", "sample_rate": rate})
        pace = _Pace(self.limits, stream)
        finals_task: asyncio.Task | None = None
        try:
            while True:
                message = await self._receive(websocket, pace)
                pace.check()
                if websocket.close_code is not None:
                    return  # the client is gone: its buffered audio is not worth decoding
                if isinstance(message, (bytes, bytearray)):
                    if len(message) % 2:
                        raise ProtocolError("binary frames must hold whole 16-bit samples (even byte count)")
                    samples = np.frombuffer(message, dtype="<i2").astype(np.float32) / 32768.0
                    if stream.seconds_received + len(samples) / rate > self.limits.max_session_seconds:
                        raise ProtocolError(f"session longer than {self.limits.max_session_seconds:g} s")
                    events, seconds = await loop.run_in_executor(self.pool, _timed, self._queued(stream.accept),
                                                                 samples)
                    self._record_work(seconds, len(samples) / rate)
                    with self._lock:
                        self.stats.audio_seconds += len(samples) / rate
                        self.stats.compute_seconds += seconds
                    for event in events:
                        await self._send(websocket, event)
                    if stream.finals_owed() and (finals_task is None or finals_task.done()):
                        # the closed segment's second pass runs beside the next chunks' first pass
                        finals_task = asyncio.create_task(self._send_finals(websocket, stream))
                    continue
                request = _parse_json(message)
                if request.get("type") != "end":
                    raise ProtocolError(f"unexpected message type {request.get('type')!r} (expected audio or end)")
                if finals_task is not None:
                    await finals_task
                _, seconds = await loop.run_in_executor(self.pool, _timed, self._queued(stream.session.finish))
                self._record_work(seconds)
                with self._lock:
                    self.stats.compute_seconds += seconds
                await self._send_events(websocket, stream.take_finals())
                await self._send(websocket, {"type": "done"})
                await websocket.close()
                return
        finally:
            if finals_task is not None and not finals_task.done():
                finals_task.cancel()

    async def _send_finals(self, websocket, stream: "_Utterances") -> None:
        """Finalize a stream's closed segments on a worker and send their finals, in order (the
        only sender of finals until the stream ends)."""
        loop = asyncio.get_running_loop()
        while stream.finals_owed():
            if stream.session.pending_finals:
                _, seconds = await loop.run_in_executor(self.pool, _timed, self._queued(stream.session.finalize_pending))
                self._record_work(seconds)
                with self._lock:
                    self.stats.compute_seconds += seconds
            await self._send_events(websocket, stream.take_finals())

    async def _send_events(self, websocket, events: list[dict]) -> None:
        for event in events:
            if event["type"] == "final":
                with self._lock:
                    self.stats.finals += 1
            await self._send(websocket, event)

    @staticmethod
    async def _send(websocket, event: dict) -> None:
        try:
            await websocket.send(json.dumps(event))
        except Exception:  # the client is gone; nothing left to tell it
            pass

    # -- the HTTP side: the browser demo page and a health check ----------------------------------

    def process_request(self, connection, request):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        if request.headers.get("Upgrade", "").lower() == "websocket":
            origin = request.headers.get("Origin")
            if origin is not None and not self._origin_allowed(origin, request.headers.get("Host", "")):
                log.info("refused a stream from origin %s", origin[:100])
                return Response(403, "Forbidden", Headers([("Content-Type", "text/plain")]),
                                b"origin not allowed (edgeasr serve --allowed-origins)\n")
            return None
        path = request.path.split("?")[0]
        if path == "/health":
            body = json.dumps({"status": "ok", **self.stats.to_dict()}).encode()
            return Response(200, "OK", Headers([("Content-Type", "application/json")]), body)
        files = {"/": ("index.html", "text/html; charset=utf-8"), "/worklet.js": ("worklet.js", "text/javascript"),
                 "/app.js": ("app.js", "text/javascript")}
        if path not in files or not (STATIC / files[path][0]).exists():
            return Response(404, "Not Found", Headers([("Content-Type", "text/plain")]), b"not found\n")
        name, kind = files[path]
        return Response(200, "OK", Headers([("Content-Type", kind), ("Cache-Control", "no-store")]),
                        (STATIC / name).read_bytes())

    def _origin_allowed(self, origin: str, host: str) -> bool:
        allowed = self.limits.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        return origin in (f"http://{host}", f"https://{host}")  # the server's own page

    async def run(self, host: str, port: int, ready: asyncio.Event | None = None,
                  stop: asyncio.Event | None = None) -> None:
        from websockets.asyncio.server import serve

        # No keepalive timeout: under load a client's pong waits in TCP behind the audio the server
        # has not read yet (the per-connection queue applies back-pressure), and a ping timeout
        # then killed healthy sessions with 1011. Dead clients are caught by the idle and pace
        # limits instead.
        async with serve(self.handle, host, port, max_size=self.limits.max_message_bytes,
                         process_request=self.process_request, ping_interval=20, ping_timeout=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready.set()
            if stop is None:
                await asyncio.Future()  # until cancelled
            else:
                await stop.wait()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


#: hotwords one start message may carry, and their length: biasing lists, not documents
MAX_HOTWORDS, MAX_HOTWORD_CHARS = 1000, 200


def _hotwords(value) -> list[str] | None:
    """The start message's "hotwords": a list of phrases (each may end in " :BOOST"), or absent."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError('hotwords must be a list of strings, e.g. ["edgeasr", "kubernetes :3"]')
    if len(value) > MAX_HOTWORDS or any(len(v) > MAX_HOTWORD_CHARS for v in value):
        raise ProtocolError(f"hotwords: at most {MAX_HOTWORDS} phrases of at most {MAX_HOTWORD_CHARS} characters")
    return value or None


#: the keys a start message may carry
START_KEYS = frozenset({"type", "sample_rate", "every_chunk", "hotwords"})
#: a control message's size and nesting at most (a hotword list fits; a JSON bomb does not)
MAX_CONTROL_CHARS, MAX_JSON_DEPTH = 300_000, 8


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings, found without parsing (so a 100,000-deep
    array is refused before the parser recurses into it)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _parse_json(message) -> dict:
    if isinstance(message, (bytes, bytearray)):
        raise ProtocolError('expected a JSON text message first: {"type": "start", "sample_rate": ...}')
    if len(message) > MAX_CONTROL_CHARS:
        raise ProtocolError(f"control message longer than {MAX_CONTROL_CHARS} characters")
    if _json_depth(message) > MAX_JSON_DEPTH:
        raise ProtocolError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(message)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError("malformed JSON message") from None
    except ValueError:  # e.g. an integer of thousands of digits
        raise ProtocolError("JSON message with an out-of-range number") from None
    if not isinstance(value, dict):
        raise ProtocolError("a JSON message must be an object with a 'type'")
    return value


class _Pace:
    """Wall-clock limits of one session: a minimum audio rate after a grace period, and a total
    wall time (the audio limit plus the grace), so no client holds a slot by sending slowly."""

    def __init__(self, limits: ServerLimits, stream: "_Utterances") -> None:
        self.limits = limits
        self.stream = stream
        self.opened = time.monotonic()

    def seconds_left(self) -> float:
        """Wall seconds until the session falls below the minimum rate (or its wall limit)."""
        limits = self.limits
        elapsed = time.monotonic() - self.opened
        wall = limits.max_session_seconds + limits.rate_grace_seconds - elapsed
        if limits.min_audio_rate <= 0:
            return wall
        due = limits.rate_grace_seconds + self.stream.seconds_received / limits.min_audio_rate
        return min(wall, due - elapsed)

    def check(self) -> None:
        limits = self.limits
        elapsed = time.monotonic() - self.opened
        if elapsed > limits.max_session_seconds + limits.rate_grace_seconds:
            raise ProtocolError(f"session open longer than {limits.max_session_seconds:g} s")
        if limits.min_audio_rate > 0 and elapsed > limits.rate_grace_seconds:
            expected = limits.min_audio_rate * (elapsed - limits.rate_grace_seconds)
            if self.stream.seconds_received < expected:
                raise ProtocolError(f"too slow: {self.stream.seconds_received:.1f} s of audio in {elapsed:.0f} s "
                                    f"(a stream must send at least {limits.min_audio_rate:g} s of audio per second)")


class _Utterances:
    """One client's audio: resampling, one streaming session (whose endpointer, with the server's
    rules, cuts the stream into finalized segments), and the events it owes the client.

    Runs on a worker thread (one call at a time per client, in arrival order).
    """

    def __init__(self, recognizer, sample_rate: int, rules: EndpointRules, every_chunk: bool = False,
                 hotwords: list[str] | None = None) -> None:
        self.recognizer = recognizer
        self.hotwords = hotwords
        self.every_chunk = every_chunk
        self.rules = rules
        self.seconds_received = 0.0
        # One session for the whole connection: its endpointer (with the server's rules) cuts
        # the stream into segments, each finalized (second pass) as soon as it ends.
        self.session = recognizer.stream(hotwords, endpoint_rules=rules, defer_finals=True)
        self.sent_finals = 0
        self.last_partial = ""
        self.input_rate = sample_rate

    @staticmethod
    def _words(result, offset: float) -> list[dict]:
        return [{"word": w.word, "start": round(offset + w.start, 3), "end": round(offset + w.end, 3),
                 "confidence": w.confidence} for w in result.words]

    def finals_owed(self) -> bool:
        """Closed segments with speech whose final has not been taken yet (queued or ready)."""
        return self.sent_finals < self.session.speech_segments

    def take_finals(self) -> list[dict]:
        """A "final" event for every segment with speech finalized since the last call, numbered
        as its partials were (its text is empty only where the second pass found no words)."""
        events = []
        for start, end, result in self.session.finals[self.sent_finals:]:
            events.append({"type": "final", "segment": self.sent_finals, "text": result.text,
                           "words": self._words(result, start), "start": round(start, 3), "end": round(end, 3),
                           "confidence": result.confidence, "decoded_by": result.decoded_by})
            self.sent_finals += 1
        return events

    def accept(self, samples: np.ndarray) -> list[dict]:
        self.seconds_received += len(samples) / self.input_rate
        # (the session resamples; the whole-stream result is not needed: finals + open segment)
        self.session.feed(samples, self.input_rate)
        if self.session.is_endpoint():
            self.last_partial = ""  # a new segment: its partials start from nothing
        events = []
        partial = self.session.open_segment()
        if partial.text != self.last_partial or self.every_chunk:
            self.last_partial = partial.text
            start = self.session.segment_start
            events.append({"type": "partial", "segment": self.session.speech_segments, "text": partial.text,
                           "words": self._words(partial, start), "start": round(start, 3)})
        return events

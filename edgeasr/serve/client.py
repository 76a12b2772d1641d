"""A websocket client for ``edgeasr serve``: streams audio at real-time speed (or faster).

``stream_audio(url, samples, ...)`` sends the start message, 16-bit PCM chunks paced at
``speed`` x real time (0 = as fast as possible), then the end message, and returns every event the
server sent, in order, each stamped with its arrival time and the audio time sent by then, so
latency can be measured from the client's side.
"""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from edgeasr.errors import EdgeAsrError


async def stream_audio(url: str, samples: np.ndarray, sample_rate: int = 16000, speed: float = 1.0,
                       chunk_ms: float = 100.0, on_event=None, open_timeout: float = 10.0,
                       every_chunk: bool = False, sent_at: list[float] | None = None,
                       hotwords: list[str] | None = None) -> list[dict]:
    """Stream ``samples``; returns the server's events. With ``every_chunk`` the server answers
    every audio message with a partial, and ``sent_at`` (if given) collects each message's send
    time, so the k-th partial's ``received_at`` minus ``sent_at[k]`` is that chunk's latency.
    ``hotwords`` (phrases, each may end in " :BOOST") bias this stream's recognition."""
    from websockets.asyncio.client import connect

    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    step = max(1, int(sample_rate * chunk_ms / 1000))
    events: list[dict] = []
    sent = {"seconds": 0.0}
    # the server may be slow to answer a ping while it works through our audio: no keepalive timeout
    async with connect(url, open_timeout=open_timeout, max_size=2**22, ping_timeout=None) as websocket:
        start = {"type": "start", "sample_rate": sample_rate, "every_chunk": every_chunk}
        if hotwords:
            start["hotwords"] = list(hotwords)

        async def receive() -> None:
            async for message in websocket:
                event = json.loads(message)
                event["received_at"] = time.perf_counter()
                event["audio_sent"] = round(sent["seconds"], 3)
                events.append(event)
                if on_event is not None:
                    on_event(event)
                if event.get("type") in ("done", "error"):
                    return

        # listening before the start message goes out: a server that refuses the stream (busy,
        # at capacity) says why and closes at once, and that reason must reach the caller
        receiver = asyncio.create_task(receive())
        started = time.perf_counter()
        closed = None
        try:
            await websocket.send(json.dumps(start))
            for index, begin in enumerate(range(0, len(pcm), step)):
                if receiver.done():
                    break  # the server closed the session (an error event says why)
                if sent_at is not None:
                    sent_at.append(time.perf_counter())
                await websocket.send(pcm[begin : begin + step].tobytes())
                sent["seconds"] = min(len(pcm), begin + step) / sample_rate
                if speed > 0:
                    due = started + sent["seconds"] / speed
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if not receiver.done():
                await websocket.send(json.dumps({"type": "end"}))
        except Exception as error:  # the server closed the connection while we were sending
            if not type(error).__module__.startswith("websockets"):
                receiver.cancel()
                raise
            closed = error
        try:
            await receiver  # always awaited: no "Task exception was never retrieved" on a close
        except asyncio.CancelledError:
            pass
        except Exception as error:
            if not type(error).__module__.startswith("websockets"):
                raise
            closed = closed or error
    if closed is not None and not any(e.get("type") in ("done", "error") for e in events):
        raise StreamClosed(f"the server closed the stream{_reason(closed)}")
    return events


class StreamClosed(EdgeAsrError):
    """The server ended a stream without a result or an error event (overload, a restart)."""


def _reason(error) -> str:
    received = getattr(error, "rcvd", None)
    if received is None:
        return f" ({error})" if str(error) else ""
    return f" (code {received.code}{': ' + received.reason if received.reason else ''})"

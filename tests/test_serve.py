"""The streaming websocket server: protocol, endpointing, limits, isolation, and the client."""

import asyncio
import gc
import json
import threading
import urllib.request

import numpy as np
import pytest

from edgeasr.api import load_model
from edgeasr.audio.io import load_audio
from edgeasr.cli import main
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.endpoint import BlankTracker, EndpointRules, endpoint_reached
from edgeasr.serve.client import stream_audio
from edgeasr.serve.server import ServerLimits
from serve_helpers import RunningServer


@pytest.fixture(scope="module")
def recognizer(tiny_model):
    return load_model(str(tiny_model))


@pytest.fixture(scope="module")
def speech(tiny_corpus):
    utts = read_manifest(tiny_corpus / "test.jsonl")
    return [np.round(load_audio(u.audio) * 32767) / 32767 for u in utts[:2]]  # what 16-bit PCM carries


def serve(recognizer, **limits):
    limits.setdefault("endpoint", EndpointRules(silence_after_speech=30, silence_without_speech=30, max_utterance=600))
    return RunningServer(recognizer, ServerLimits(**limits))


def wait_until_idle(server, seconds: float = 10.0) -> None:
    for _ in range(int(seconds * 20)):
        if server.server.stats.sessions_open == 0:
            return
        threading.Event().wait(0.05)


class _SlowSession:
    def __init__(self, inner, seconds):
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def feed(self, samples, sample_rate=None):
        import time

        time.sleep(self.seconds)
        return self.inner.feed(samples, sample_rate)


class Slowed:
    """A recognizer whose every feed costs ``seconds`` more of a worker: overload on demand."""

    def __init__(self, inner, seconds):
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, hotwords=None, **options):
        return _SlowSession(self.inner.stream(hotwords, **options), self.seconds)


def run(coroutine):
    return asyncio.run(coroutine)


async def raw_session(url, messages, wait_for=("done", "error")):
    """Send raw messages, return the server's events until one of ``wait_for`` (or close)."""
    from websockets.asyncio.client import connect

    events = []
    async with connect(url) as ws:
        try:
            for message in messages:
                await ws.send(message)
        except Exception:  # the server may already have closed: read what it said
            pass
        try:
            async for message in ws:
                events.append(json.loads(message))
                if events[-1]["type"] in wait_for:
                    break
        except Exception:
            pass
    return events


def test_a_streamed_file_gives_the_recognizer_text(recognizer, speech):
    server = serve(recognizer)
    try:
        events = run(stream_audio(server.url, speech[0], speed=0))
    finally:
        server.close()
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done" and "final" in kinds and "partial" in kinds
    final = [e for e in events if e["type"] == "final"]
    assert len(final) == 1 and final[0]["segment"] == 0
    assert final[0]["text"] == recognizer.transcribe(speech[0].astype(np.float32)).text
    # which pass wrote it: the mode's second pass (attention rescoring here) where it has one
    assert final[0]["decoded_by"] == (recognizer.mode_spec.second_pass or "first_pass")
    assert all(w["start"] <= w["end"] <= final[0]["end"] + 1e-6 for w in final[0]["words"])


def test_endpointing_cuts_a_long_stream_into_finalized_utterances(recognizer, speech):
    server = serve(recognizer, endpoint=EndpointRules(max_utterance=1.0))
    audio = np.concatenate([speech[0], speech[1]])
    try:
        events = run(stream_audio(server.url, audio, speed=0, chunk_ms=50))
    finally:
        server.close()
    finals = [e for e in events if e["type"] == "final"]
    assert len(finals) >= 3  # a cut at least every second of audio
    assert [f["segment"] for f in finals] == list(range(len(finals)))
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(finals, finals[1:]))
    assert finals[-1]["end"] <= len(audio) / 16000 + 0.05


def test_blank_tracker_and_rules():
    rules = EndpointRules(silence_after_speech=0.8, silence_without_speech=2.0, max_utterance=10.0)
    tracker = BlankTracker(threshold=0.9)
    speech_frames = np.log(np.full((5, 4), 0.25))  # blank 0.25: speech
    silence = np.log(np.array([[0.97, 0.01, 0.01, 0.01]] * 10))
    tracker.update(speech_frames)
    tracker.update(silence[:19 // 2])
    assert tracker.trailing_silence == 9 and tracker.frames == 14
    assert not endpoint_reached(rules, tracker, 0.04, has_text=True)  # 0.36 s of silence
    tracker.update(np.concatenate([silence, silence]))
    assert endpoint_reached(rules, tracker, 0.04, has_text=True)  # 1.16 s
    assert not endpoint_reached(rules, tracker, 0.04, has_text=False)  # without speech wait 2 s
    tracker.update(speech_frames[:1])
    assert tracker.trailing_silence == 0


@pytest.mark.parametrize("messages,expected", [
    ([b"\x00\x00"], "JSON text message first"),
    (["{not json"], "malformed JSON"),
    (['{"type": "hello"}'], "first message must be"),
    (['{"type": "start", "sample_rate": 100}'], "sample_rate"),
    (['{"type": "start"}', b"\x00\x00\x00"], "even byte count"),
    (['{"type": "start"}', '{"type": "pause"}'], "unexpected message type"),
    (['{"type": "start", "hotwords": "edgeasr"}'], "hotwords must be a list"),
    (['{"type": "start", "hotwords": ["# nothing"]}'], "no hotwords"),
    (['{"type": "start", "hotwords": ["x :many"]}'], "boost"),
    (['{"type": "start", "chunk_size": 0}'], "unknown start option"),
    (['{"type": "start", "hotwords": ' + "[" * 100_000 + "]" * 100_000 + "}"], "nested deeper"),
    (['{"type": "start", "sample_rate": ' + "9" * 5000 + "}"], "out-of-range number"),
])
def test_malformed_messages_get_a_clear_error_and_do_not_disturb_others(recognizer, speech, messages, expected):
    server = serve(recognizer)
    try:
        async def both():
            good = asyncio.create_task(stream_audio(server.url, speech[1], speed=0))
            bad = await raw_session(server.url, messages)
            return bad, await good

        bad, good = run(both())
    finally:
        server.close()
    assert bad[-1]["type"] == "error" and expected in bad[-1]["message"]
    finals = [e for e in good if e["type"] == "final"]
    assert good[-1]["type"] == "done" and finals[0]["text"] == recognizer.transcribe(speech[1].astype(np.float32)).text


def test_limits_idle_session_length_message_size_and_sessions(recognizer, speech):
    server = serve(recognizer, idle_timeout=0.5, max_session_seconds=1.0, max_message_bytes=64 * 1024, max_sessions=1)
    try:
        idle = run(raw_session(server.url, ['{"type": "start"}']))
        assert idle[-1]["type"] == "error" and "idle" in idle[-1]["message"]
        long = run(stream_audio(server.url, np.zeros(16000 * 3, np.float32), speed=0))
        assert long[-1]["type"] == "error" and "longer than 1 s" in long[-1]["message"]
        big = run(raw_session(server.url, ['{"type": "start"}', b"\x00" * (100 * 1024)]))
        assert not any(e["type"] in ("final", "done") for e in big)  # refused, connection closed

        async def two_at_once():
            from websockets.asyncio.client import connect

            async with connect(server.url) as first:
                await first.send('{"type": "start"}')
                await first.recv()  # ready: the one session slot is taken
                return await raw_session(server.url, ['{"type": "start"}'])

        wait_until_idle(server)  # the refused sessions above have been let go
        busy = run(two_at_once())
        assert busy[0]["type"] == "error" and "busy" in busy[0]["message"]

        async def client_refused():  # the client library, not a raw socket: the reason reaches it
            from websockets.asyncio.client import connect

            async with connect(server.url) as first:
                await first.send('{"type": "start"}')
                await first.recv()
                return await stream_audio(server.url, speech[1], speed=0)

        wait_until_idle(server)
        refused = run(client_refused())
        assert refused[-1]["type"] == "error" and "busy" in refused[-1]["message"]
    finally:
        server.close()


def test_abrupt_disconnects_free_their_sessions(recognizer, speech):
    from edgeasr.serve import server as server_module

    server = serve(recognizer)
    try:
        async def vanish():
            from websockets.asyncio.client import connect

            async with connect(server.url) as ws:
                await ws.send('{"type": "start"}')
                await ws.send((speech[0][:8000] * 32767).astype("<i2").tobytes())
            # closed without an end message

        for _ in range(5):
            run(vanish())
        events = run(stream_audio(server.url, speech[1], speed=0))
        assert events[-1]["type"] == "done"
        wait_until_idle(server)
        assert server.server.stats.sessions_open == 0 and server.server.stats.sessions_total == 6
        gc.collect()
        assert not [o for o in gc.get_objects() if type(o) is server_module._Utterances]
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.server.port}/health").read())
        assert health["status"] == "ok" and health["sessions_total"] == 6
    finally:
        server.close()


def test_client_command_and_resampled_input(recognizer, speech, tmp_path, capsys):
    import soundfile as sf

    server = serve(recognizer)
    path = tmp_path / "speech.wav"
    sf.write(path, speech[0], 16000, subtype="PCM_16")
    try:
        assert main(["client", "--url", server.url, "--speed", "0", str(path)]) == 0
        out = capsys.readouterr().out
        assert recognizer.transcribe(speech[0].astype(np.float32)).text in out
        async def at_8k():
            import soxr

            return await stream_audio(server.url, soxr.resample(speech[0], 16000, 8000), sample_rate=8000, speed=0)

        events = run(at_8k())
        assert events[-1]["type"] == "done"
    finally:
        server.close()
    assert main(["client", "--url", "ws://127.0.0.1:9", str(path)]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_hotwords_in_the_start_message_reach_that_stream_only(recognizer, speech):
    """Each stream's sessions are built with its own start message's hotwords (the biasing itself
    is tested in test_fusion.py), and a stream without them gets none."""
    seen = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def stream(self, hotwords=None, **options):
            seen.append(hotwords)
            return self.inner.stream(hotwords, **options)

    phrases = ["hello world :4", "streaming"]
    server = serve(Recording(recognizer))
    try:
        async def both():
            return await asyncio.gather(stream_audio(server.url, speech[0], speed=0, hotwords=phrases),
                                        stream_audio(server.url, speech[0], speed=0))

        with_hotwords, without = run(both())
    finally:
        server.close()
    assert with_hotwords[-1]["type"] == "done" and without[-1]["type"] == "done"
    assert phrases in seen and None in seen
    final = " ".join(e["text"] for e in with_hotwords if e["type"] == "final")
    assert final == recognizer.transcribe(speech[0].astype(np.float32), hotwords=phrases).text


def test_web_origins_other_than_the_servers_own_are_refused(recognizer, speech):
    from websockets.asyncio.client import connect

    server = serve(recognizer)
    port = server.server.port

    async def try_origin(origin):
        try:
            async with connect(server.url, origin=origin) as ws:
                await ws.send('{"type": "start"}')
                return json.loads(await ws.recv())["type"]
        except Exception as error:
            return type(error).__name__

    try:
        assert run(try_origin(f"http://127.0.0.1:{port}")) == "ready"  # the demo page itself
        assert run(try_origin("https://evil.example")) == "InvalidStatus"  # HTTP 403
        events = run(stream_audio(server.url, speech[1], speed=0))  # no Origin: a CLI client
        assert events[-1]["type"] == "done"
        wait_until_idle(server)
        finals = sum(e["type"] == "final" for e in events)
        assert server.server.stats.finals == finals >= 1  # end-of-stream finals are counted too
    finally:
        server.close()
    allowed = serve(recognizer, allowed_origins=("https://app.example",))
    try:
        async def app():
            async with connect(allowed.url, origin="https://app.example") as ws:
                await ws.send('{"type": "start"}')
                return json.loads(await ws.recv())["type"]

        assert run(app()) == "ready"
    finally:
        allowed.close()


def test_trickling_clients_are_closed_and_cannot_lock_others_out(recognizer, speech):
    """Two bytes now and then used to hold a slot forever; now a stream must keep up a minimum
    audio rate after a grace period, so tricklers are closed with a reason and a real client
    gets in."""
    from websockets.asyncio.client import connect

    server = serve(recognizer, max_sessions=2, idle_timeout=30, min_audio_rate=0.5, rate_grace_seconds=0.5)

    async def trickle():
        events = []
        async with connect(server.url) as ws:
            await ws.send('{"type": "start"}')
            try:
                for _ in range(40):
                    await ws.send(b"\x00\x00")
                    await asyncio.sleep(0.1)
            except Exception:
                pass
            try:
                async for message in ws:
                    events.append(json.loads(message))
            except Exception:
                pass
        return events

    async def scenario():
        tricklers = [asyncio.create_task(trickle()) for _ in range(2)]
        await asyncio.sleep(0.3)
        busy = await raw_session(server.url, ['{"type": "start"}'])  # both slots held: refused, with a reason
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(*tricklers)
        closed_after = asyncio.get_running_loop().time() - started
        served = await stream_audio(server.url, speech[1], speed=0)
        return busy, results, closed_after, served

    try:
        busy, results, closed_after, served = run(scenario())
    finally:
        server.close()
    assert busy[-1]["type"] == "error" and "busy" in busy[-1]["message"]
    for events in results:
        assert events[-1]["type"] == "error" and "too slow" in events[-1]["message"]
    assert closed_after < 3.0
    assert served[-1]["type"] == "done"


def test_client_command_reports_a_server_side_close_in_one_line(recognizer, speech, tmp_path, capsys):
    import soundfile as sf

    path = tmp_path / "long.wav"
    sf.write(path, np.tile(speech[1], 4), 16000)
    server = serve(recognizer, max_session_seconds=1.0)
    try:
        status = main(["client", "--url", server.url, "--speed", "0", str(path)])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert status == 2
    assert "longer than 1 s" in err and "Traceback" not in err and "never retrieved" not in err


def test_new_sessions_are_refused_while_the_workers_are_saturated(recognizer, speech):
    """Admission control: when the open sessions keep the workers busier than max_load, a new
    session is refused at once with a reason (instead of everyone falling behind)."""

    # compute-bound: a worker is busy for longer than the audio lasts
    server = serve(Slowed(recognizer, 0.05), workers=1, max_load=0.5, load_window=1.0)
    try:
        async def scenario():
            busy = asyncio.create_task(stream_audio(server.url, np.tile(speech[1], 3), speed=0, chunk_ms=20))
            await asyncio.sleep(1.0)
            late = await raw_session(server.url, ['{"type": "start"}'])
            health = json.loads(urllib.request.urlopen(server.url.replace("ws://", "http://") + "/health").read())
            await busy
            return late, health

        late, health = run(scenario())
    finally:
        server.close()
    assert late[-1]["type"] == "error" and "at capacity" in late[-1]["message"]
    assert health["sessions_refused_load"] >= 1 and health["load"] > 0.5


def test_a_segments_second_pass_does_not_hold_up_the_next_segments_partials(recognizer, speech, monkeypatch):
    """Finals are computed beside the stream: while a closed segment's second pass runs on a
    worker, the next chunks still get their partials; every segment with speech still gets one
    final, in order, with the text a plain session gives."""
    import time as clock

    rules = EndpointRules(max_utterance=1.0)
    audio = np.concatenate([speech[0], speech[1]])
    step = 800  # the client's 50 ms messages
    local = recognizer.stream(endpoint_rules=rules)
    for start in range(0, len(audio), step):
        local.feed(audio[start : start + step])
    local.finish()
    expected = [r.text for _, _, r in local.finals]

    inner = recognizer.finalize

    def slow_finalize(*args, **kwargs):
        clock.sleep(0.4)
        return inner(*args, **kwargs)

    monkeypatch.setattr(recognizer, "finalize", slow_finalize)
    server = serve(recognizer, endpoint=rules, workers=2)
    try:
        events = run(stream_audio(server.url, audio, speed=0, chunk_ms=50, every_chunk=True))
    finally:
        server.close()
    finals = [e for e in events if e["type"] == "final"]
    assert [f["segment"] for f in finals] == list(range(len(finals))) and len(finals) >= 3
    assert [f["text"] for f in finals] == expected
    first_final = events.index(finals[0])
    later_segment = [e for e in events[:first_final] if e["type"] == "partial" and e["segment"] >= 1]
    assert later_segment, "the second segment's partials waited for the first segment's final"
    assert events[-1]["type"] == "done"


def test_new_sessions_are_refused_while_work_waits_for_a_worker(recognizer, speech):
    """The backlog itself (how long work waits for a worker) refuses newcomers, with the
    utilisation rule off: busy workers alone understate overload on shared cores."""

    # each job longer than the wait limit: the other stream's job queues behind it
    server = serve(Slowed(recognizer, 0.1), workers=1, max_load=0, max_queue_wait=0.05, load_window=2.0)
    try:
        async def scenario():
            streams = [asyncio.create_task(stream_audio(server.url, speech[1], speed=0, chunk_ms=100))
                       for _ in range(2)]
            await asyncio.sleep(1.0)
            late = await raw_session(server.url, ['{"type": "start"}'])
            health = json.loads(urllib.request.urlopen(server.url.replace("ws://", "http://") + "/health").read())
            await asyncio.gather(*streams)
            return late, health

        late, health = run(scenario())
    finally:
        server.close()
    assert late[-1]["type"] == "error" and "at capacity" in late[-1]["message"]
    assert health["queue_wait_p90"] > 0.05 and health["sessions_refused_load"] >= 1


def test_flooding_clients_are_served_or_refused_never_dropped(recognizer, speech):
    """The issue's repro: clients sending as fast as they can in 1 s messages to a server that
    cannot keep up used to die with 1011 (keepalive ping timeout). Each must now end with its
    results or a refusal that says why; none may be cut off without a reason."""

    # each second of audio costs 0.3 s of a single worker: 4 clients overload it
    server = serve(Slowed(recognizer, 0.3), workers=1, load_window=2.0)
    audio = np.tile(speech[0], 4)
    try:
        async def flood():
            async def one(delay):
                await asyncio.sleep(delay)
                return await stream_audio(server.url, audio, speed=0, chunk_ms=1000)

            return await asyncio.gather(*(one(0.3 * i) for i in range(6)), return_exceptions=True)

        outcomes = run(flood())
    finally:
        server.close()
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes  # no StreamClosed, no 1011
    ends = [o[-1]["type"] for o in outcomes]
    assert set(ends) <= {"done", "error"} and "done" in ends
    refusals = [o[-1]["message"] for o in outcomes if o[-1]["type"] == "error"]
    assert all("at capacity" in m or "busy" in m for m in refusals), refusals


def test_the_admission_cost_does_not_dip_while_new_sessions_bring_audio_first(recognizer):
    """New sessions' audio arrives before the second passes it will cost (they run at segment
    ends), so the one-minute cost per audio second dips exactly when a crowd arrives; the
    prediction reads the ten-minute figure too and still refuses (measured: 7 admitted where 5
    were the capacity before this)."""
    from edgeasr.serve.server import ServerLimits, StreamingServer

    server = StreamingServer(recognizer, ServerLimits(workers=2, max_load=0.8))
    try:
        for _ in range(300):  # ten minutes of audio at 0.32 worker seconds per audio second
            server._record_work(0.64, 2.0)
        for _ in range(30):  # then a minute of fresh sessions' first-pass chunks, at 0.1
            server._record_work(0.2, 2.0)
        assert server.stats.window_rtf < 0.2 < 0.27 < server.stats.long_rtf
        server._work.clear()  # no measured busy share: the prediction alone decides
        server.stats.sessions_open = 4
        assert not server._overloaded()  # a fifth is admitted: 5 x 0.28 / 2 < 0.8
        server.stats.sessions_open = 5
        assert server._overloaded()  # a sixth is refused, not admitted on the dip
    finally:
        server.pool.shutdown(wait=False)

"""The browser demo page, driven in headless Chromium with a WAV file as its microphone.

Chromium (Debian's package, installed by scripts/setup.sh) is started with a fake audio capture
device that plays a held-out sample clip; the page (served by `edgeasr serve` at /) captures it
through its AudioWorklet, resamples to 16 kHz, streams it over the websocket and shows the
results. The test reads the page's text through the DevTools protocol and checks the transcript
appears and resembles the clip's reference.
"""

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from edgeasr.api import load_model
from edgeasr.decoding.endpoint import EndpointRules
from edgeasr.evaluate.metrics import char_errors
from edgeasr.serve.server import ServerLimits
from serve_helpers import RunningServer

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "samples" / "kokoro-female.wav"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed (scripts/system-packages.txt; `make setup` installs it)"
    return path


class DevTools:
    """Just enough of the Chrome DevTools protocol to evaluate JavaScript in the page."""

    def __init__(self, port: int) -> None:
        from websockets.sync.client import connect

        for _ in range(100):
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2).read())
                page = next(t for t in targets if t.get("type") == "page")
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise AssertionError("Chromium's DevTools endpoint never came up")
        self.connection = connect(page["webSocketDebuggerUrl"], max_size=2**24)
        self.socket = self.connection.__enter__()
        self.next_id = 0

    def close(self) -> None:
        self.connection.__exit__(None, None, None)

    def evaluate(self, expression: str):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": "Runtime.evaluate",
                                     "params": {"expression": expression, "returnByValue": True}}))
        while True:
            reply = json.loads(self.socket.recv(timeout=10))
            if reply.get("id") == self.next_id:
                return reply["result"]["result"].get("value")


def test_the_page_streams_a_microphone_and_shows_the_transcript():
    # the clip loops without a pause long enough to end an utterance: cut every 5 s instead
    server = RunningServer(load_model("default"), ServerLimits(endpoint=EndpointRules(max_utterance=5.0)))
    profile = tempfile.mkdtemp(prefix="edgeasr-chromium-")
    process = subprocess.Popen([
        chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={CLIP}", "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-port=0", f"--user-data-dir={profile}",
        f"http://127.0.0.1:{server.server.port}/?autostart=1",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.time() + 30
        while port is None and time.time() < deadline:
            line = process.stderr.readline()
            if "DevTools listening on ws://" in line:
                port = int(line.split("ws://127.0.0.1:")[1].split("/")[0])
        assert port, "Chromium did not start its DevTools endpoint"
        page = DevTools(port)
        text, status = "", ""
        deadline = time.time() + 60
        while time.time() < deadline:
            status = page.evaluate("document.getElementById('status').textContent") or ""
            text = page.evaluate("Array.from(document.querySelectorAll('#finals .final'))"
                                 ".map(p => p.lastChild.textContent).join(' ')") or ""
            if len(text.split()) >= 6:
                break
            time.sleep(0.5)
        page.close()
        print(f"status {status!r}; transcript {text!r}")
        assert "listening" in status, status
        reference = (ROOT / "samples" / "kokoro-female.txt").read_text().strip()
        first = text.split()[: len(reference.split())]
        assert first, f"no final transcript appeared (status: {status!r})"
        # the clip loops; its first utterance must resemble the reference (the model is weak)
        assert char_errors(reference, " ".join(first)).rate < 60, (reference, text)
        assert server.server.stats.finals >= 1
    finally:
        process.kill()
        process.wait(10)
        server.close()
        shutil.rmtree(profile, ignore_errors=True)

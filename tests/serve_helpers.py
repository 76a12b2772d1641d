"""A streaming server on a free port in a background thread, for the server and browser tests."""

import asyncio
import threading

from edgeasr.serve.server import ServerLimits, StreamingServer


class RunningServer:
    """A server on a free port in a background thread with its own event loop."""

    def __init__(self, recognizer, limits: ServerLimits) -> None:
        self.server = StreamingServer(recognizer, limits)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(20)
        self.url = f"ws://127.0.0.1:{self.server.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop = asyncio.Event()
        ready = asyncio.Event()

        async def main():
            task = asyncio.create_task(self.server.run("127.0.0.1", 0, ready, self.stop))
            await ready.wait()
            self.ready.set()
            await task

        self.loop.run_until_complete(main())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)

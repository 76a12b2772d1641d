"""One-line progress reports on standard error for long commands (eval, transcribe, calibrate).

On a terminal they are on by default (``auto``); in pipes and logs only when asked for
(``--progress``), so scripted output stays clean. A line at most every few seconds:
``edgeasr: eval: 120/216 utterances (56%), 1.4 min left``.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: float, unit: str, enabled: bool, every: float = 3.0,
                 show=None) -> None:
        self.label, self.total, self.unit, self.enabled, self.every = label, total, unit, enabled, every
        self.show = show or (lambda value: f"{value:g}")
        self.started = self.last = time.monotonic()

    @classmethod
    def auto(cls, label: str, total: float, unit: str, forced: bool = False, **options) -> "Progress":
        """On when ``forced`` (``--progress``) or when standard error is a terminal."""
        return cls(label, total, unit, forced or sys.stderr.isatty(), **options)

    def update(self, done: float) -> None:
        now = time.monotonic()
        if not self.enabled or done <= 0 or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        left = (now - self.started) * (self.total - done) / done
        print(f"edgeasr: {self.label}: {self.show(done)}/{self.show(self.total)} {self.unit} "
              f"({100 * done / max(self.total, 1e-9):.0f}%), {left / 60:.1f} min left", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """m:ss, for audio positions."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"

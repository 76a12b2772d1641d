"""Regenerate BENCHMARKS.md from the JSON files in benchmarks/results/.

Tables in the docs are never edited by hand: every number comes from a result file written by a
benchmark script that anyone can re-run.

    python benchmarks/make_report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgeasr.evaluate.report import write_report

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    out = write_report(ROOT / "benchmarks" / "results", ROOT / "BENCHMARKS.md")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

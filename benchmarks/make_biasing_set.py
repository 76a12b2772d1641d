"""Synthesize the hotword biasing set: sentences with rare names and terms, spoken by held-out voices.

Contextual biasing is judged on phrases the recognizer would otherwise miss: people's and places'
names, product and technical terms — words no training sentence and no LM text holds. Each
sentence below carries one phrase (the hotword); the voices are the test split's (held out from
training) of the natural-sounding engines, assigned round-robin, at the corpus's normal rate.

    python benchmarks/make_biasing_set.py --test data/synth4/test.jsonl --out data/biasing

writes DIR/wav/*.wav, DIR/biasing.jsonl (a manifest with a "hotword" field per utterance) and
DIR/hotwords.txt (every phrase, one a line). Resumes: existing WAVs are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeasr.data.corpus.base import get_engine  # noqa: E402
from edgeasr.text.normalize import normalize_text  # noqa: E402

#: (sentence, phrase): invented or rare names and terms, in everyday sentences
SENTENCES = [
    ("Please send the invoice to Anneliese Okonkwo before Friday.", "Anneliese Okonkwo"),
    ("Our new office is next to the Bexhill station.", "Bexhill"),
    ("Can you ask Thaddeus about the budget?", "Thaddeus"),
    ("The meeting with Priyanka Raghunathan moved to noon.", "Priyanka Raghunathan"),
    ("We deploy everything with Kubernetes now.", "Kubernetes"),
    ("My flight to Ljubljana leaves early tomorrow.", "Ljubljana"),
    ("The dashboard runs on Grafana and Prometheus.", "Grafana"),
    ("Tell Siobhan that the package arrived.", "Siobhan"),
    ("He bought a Pomeranian puppy last week.", "Pomeranian"),
    ("The Quetzalcoatl exhibit opens in the spring.", "Quetzalcoatl"),
    ("Doctor Nakamura will see you at three.", "Nakamura"),
    ("We had dinner at the Zanzibar cafe.", "Zanzibar"),
    ("Add the Varga report to the shared folder.", "Varga"),
    ("Gwendolyn is leading the design review.", "Gwendolyn"),
    ("The train stops at Wolverhampton and Crewe.", "Wolverhampton"),
    ("Install the Postgres driver first.", "Postgres"),
    ("Call Mister Abernathy about the lease.", "Abernathy"),
    ("The kids love the Tyrannosaurus skeleton.", "Tyrannosaurus"),
    ("Our supplier in Guadalajara sent the samples.", "Guadalajara"),
    ("Ingrid Bergstrom joined the team in June.", "Ingrid Bergstrom"),
    ("The Okavango delta floods every year.", "Okavango"),
    ("Please book a table for Ezekiel at eight.", "Ezekiel"),
    ("The laptop runs Debian with a custom kernel.", "Debian"),
    ("We hiked near Kilimanjaro last summer.", "Kilimanjaro"),
    ("Rosalind found the bug in the parser.", "Rosalind"),
    ("The Marrakesh trip is still on.", "Marrakesh"),
    ("Ask Florian to review the pull request.", "Florian"),
    ("The chemist measured the chlorophyll levels.", "chlorophyll"),
    ("Cornelius will drive us to the airport.", "Cornelius"),
    ("The Saskatchewan office closes at five.", "Saskatchewan"),
]

#: engines whose test voices speak the set (natural ones first; espeak is least like people)
ENGINES = ("kokoro", "piper", "hibari", "festival", "flite")


def test_voices(test_manifest: Path) -> list[tuple[str, str]]:
    voices = []
    for line in test_manifest.read_text().splitlines():
        entry = json.loads(line)
        pair = (entry["engine"], entry["voice"])
        if entry["engine"] in ENGINES and pair not in voices:
            voices.append(pair)
    return voices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=Path, default=ROOT / "data/synth4/test.jsonl",
                        help="the corpus test manifest whose (held-out) voices speak the set")
    parser.add_argument("--out", type=Path, default=ROOT / "data/biasing")
    args = parser.parse_args()
    voices = test_voices(args.test)
    if not voices:
        raise SystemExit(f"{args.test}: no test voices of {', '.join(ENGINES)}")
    engines = {name: get_engine(name) for name in {engine for engine, _ in voices}}
    by_id = {v.id: v for name, engine in engines.items() for v in engine.voices()}
    (args.out / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, (sentence, phrase) in enumerate(SENTENCES):
        engine_name, voice_id = voices[index % len(voices)]
        path = args.out / "wav" / f"bias-{index:03d}.wav"
        if not path.exists():
            audio = engines[engine_name].synthesize(sentence, by_id[voice_id], seed=index)
            samples = audio.samples
            if audio.sample_rate != 16000:
                import soxr

                samples = soxr.resample(samples, audio.sample_rate, 16000)
            sf.write(path, np.asarray(samples, dtype=np.float32), 16000, subtype="PCM_16")
        rows.append({"audio": f"wav/{path.name}", "text": normalize_text(sentence),
                     "duration": round(sf.info(path).duration, 3), "speaker": voice_id, "engine": engine_name,
                     "hotword": normalize_text(phrase)})
    (args.out / "biasing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "hotwords.txt").write_text("".join(r["hotword"] + "\n" for r in rows))
    print(json.dumps({"utterances": len(rows), "voices": sorted({r["speaker"] for r in rows}), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

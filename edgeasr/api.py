"""The Python API: ``edgeasr.load_model`` picks a runtime and returns a recognizer.

    import edgeasr
    asr = edgeasr.load_model("default")                  # torch
    result = asr.transcribe("some.wav")                   # or a float32 numpy array at 16 kHz
    print(result.text, result.words, result.confidence, result.nbest)
    session = asr.stream()
    partial = session.accept(samples)                     # any number of samples, any times
    final = session.finish()

Both runtimes return the same ``Result`` (text, tokens, token times, words with start/end/confidence,
utterance confidence, n-best) and stream through the same ``accept``/``finish`` session API.

- ``backend="torch"``: the model directory through ``Recognizer``.
- ``backend="onnx"``: ONNX Runtime only (``OnnxRecognizer``, no torch at run time). Given an
  exported directory (``edgeasr export``) it is used as is; given a model directory, the model is
  exported once into a cache (``$EDGEASR_CACHE`` or ``~/.cache/edgeasr``), keyed by the model
  file and the export settings, and reused afterwards.
An exported directory always runs on ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgeasr.errors import EdgeAsrError

BACKENDS = ("torch", "onnx")


def is_onnx_export(path: str | os.PathLike[str]) -> bool:
    directory = Path(path)
    return (directory / "metadata.json").exists() and (directory / "encoder.onnx").exists()


def cache_root() -> Path:
    return Path(os.environ.get("EDGEASR_CACHE") or Path.home() / ".cache" / "edgeasr")


def load_model(
    model: str | os.PathLike[str] = "default",
    backend: str = "torch",
    *,
    mode: str = "attention_rescoring",
    chunk_size: int | None = None,
    num_left_chunks: int | None = None,
    beam_size: int = 10,
    ctc_weight: float = 0.5,
    int8: bool = False,
    threads: int = 1,
    int4: bool = False,
    **options,
):
    """A recognizer for ``model`` ("default", a model directory or an ONNX export directory).

    ``int8`` selects the int8 graphs of the ONNX backend, ``int4`` its 4-bit decoder graphs
    (beside the int8 encoder; a model trained to 4 bits runs 4-bit encoder graphs too);
    ``chunk_size`` / ``num_left_chunks``
    override the model's streaming defaults (an existing export keeps the ones it was made with).
    ``options`` are further ``DecodeOptions`` fields, the same for both backends, e.g.
    ``lm="path/to/lm"`` (default "auto": the model directory's lm/), ``lm_weight``,
    ``hotwords=["edgeasr", "kubernetes :3"]``, ``hotword_boost``, ``token_threshold``.
    """
    from edgeasr.decoding.core import DecodeOptions

    unknown = sorted(set(options) - set(DecodeOptions.__dataclass_fields__))
    if unknown:
        raise EdgeAsrError(f"unknown decoding option(s): {', '.join(unknown)}")
    check_threads(threads)
    if backend not in BACKENDS:
        raise EdgeAsrError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if is_onnx_export(model):
        return _onnx(Path(model), chunk_size, num_left_chunks, mode, beam_size, ctc_weight, int8, threads, options,
                     int4)
    if backend == "onnx":
        _check_first_pass(options)  # before the model's export, so a wrong path costs no time
        directory = export_cached(model, chunk_size, num_left_chunks)
        return _onnx(directory, None, None, mode, beam_size, ctc_weight, int8, threads, options, int4)
    if int8 or int4:
        raise EdgeAsrError("int8 / int4 select the ONNX backend's quantized graphs; use backend='onnx' "
                           "(or --dynamic-int8 / a quantized model with torch)")
    from edgeasr.decoding.recognizer import Recognizer

    set_compute_threads(threads)
    decode = DecodeOptions(mode=mode, chunk_size=chunk_size, num_left_chunks=num_left_chunks,
                           beam_size=beam_size, ctc_weight=ctc_weight, **options)
    return Recognizer.load(model, decode)


#: more compute threads than this is a typo, not a machine (and a thread storm can crash the process)
MAX_THREADS = 256


def check_threads(threads) -> int:
    """``threads`` as a whole number from 1 to MAX_THREADS, or a one-line error."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise EdgeAsrError(f"threads must be a whole number from 1 to {MAX_THREADS}, got {threads!r} "
                           f"(this machine has {os.cpu_count()} cores)")
    return threads


def set_compute_threads(threads, torch_too: bool = True) -> int:
    """Cap the compute thread pools of this process at ``threads`` (checked): numpy's BLAS, and
    torch's intra-op pool unless ``torch_too`` is False (the ONNX Runtime path never imports torch;
    its sessions get ``threads`` themselves).

    numpy's OpenBLAS keeps its own pool, sized to the machine, which torch's setting does not
    reach; Whisper's log-mel front end multiplies by the mel filters through it on every chunk.
    With the other cores busy, those BLAS threads waited on each other: the front end took 10 ms
    per 640 ms chunk instead of 1.4, and ``--threads 1`` streamed the default's first pass at
    RTF 0.08 instead of 0.048 (its two passes 0.35 instead of 0.30; measured beside two training
    jobs on 2 cores). Like ``torch.set_num_threads``, the cap is process-wide.
    """
    from threadpoolctl import threadpool_limits

    threads = check_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    if torch_too:
        import torch

        torch.set_num_threads(threads)
    return threads


def _onnx(directory: Path, chunk_size, num_left_chunks, mode, beam_size, ctc_weight, int8, threads, options,
          int4=False):
    from edgeasr.decoding.core import DecodeOptions
    from edgeasr.export.runtime import OnnxRecognizer

    if chunk_size is not None or num_left_chunks is not None:
        raise EdgeAsrError(f"{directory}: an ONNX export streams with the chunk size and left context it was "
                           "exported with (re-export to change them)")
    _check_first_pass(options)
    if options.get("first_pass") is not None and not is_onnx_export(options["first_pass"]):
        # a model directory: exported once (cached) at the chunk size and left context of this export
        meta = json.loads((directory / "metadata.json").read_text())
        left = -1 if meta["max_left_frames"] < 0 else max(0, meta["max_left_frames"] // meta["chunk_size"])
        options = {**options, "first_pass": str(export_cached(options["first_pass"], meta["chunk_size"], left))}
    decode = DecodeOptions(mode=mode, beam_size=beam_size, ctc_weight=ctc_weight, **options)
    set_compute_threads(threads, torch_too=False)
    return OnnxRecognizer.load(directory, int8=int8, options=decode, threads=threads, int4=int4)


#: bumped when an export gains graphs, so cached exports made by an older edgeasr are redone
#: (2: the Whisper second pass on ONNX Runtime; 3: 4-bit decoder graphs; 4: 4-bit encoder graphs of
#: 4-bit models; 5: one shared weights file per precision; 6: each entry names its source, so
#: stale entries are removed)
EXPORT_LAYOUT = 6

#: the file in each cached export that says what it was made from (``_stale_exports``)
CACHE_SOURCE = "cache_source.json"


def _check_first_pass(options: dict) -> None:
    """A separate first pass for the ONNX backend (``first_pass``) is an export or a model
    directory to export, else a one-line error."""
    first_pass = options.get("first_pass")
    if first_pass is not None and not is_onnx_export(first_pass):
        try:
            exportable_model_dir(first_pass)
        except EdgeAsrError as error:
            raise EdgeAsrError(f"--first-pass {error}") from None


def exportable_model_dir(model: str | os.PathLike[str]) -> Path:
    """``model``'s directory when it holds a model to export, else a one-line error (checked
    before any export starts, so a wrong path costs no time)."""
    from edgeasr.model.package import resolve_model_dir

    directory = resolve_model_dir(model)
    if not (directory / "model.pt").is_file():
        problem = "not found" if not directory.is_dir() else "neither an ONNX export nor a model directory (no model.pt)"
        raise EdgeAsrError(f"{directory}: {problem}")
    return directory


def export_cached(model: str | os.PathLike[str], chunk_size: int | None, num_left_chunks: int | None) -> Path:
    """Export ``model`` for ONNX Runtime once; later calls with the same file and settings reuse it."""
    from edgeasr.export.onnx import export_onnx

    directory = exportable_model_dir(model)
    weights = directory / "model.pt"
    stat = weights.stat()
    calibration = directory / "calibration.json"  # copied into the export: a new one means a new export
    calibration_stamp = calibration.stat().st_mtime_ns if calibration.is_file() else None
    source = {"weights": str(weights.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "chunk_size": chunk_size, "num_left_chunks": num_left_chunks, "calibration": calibration_stamp,
              "layout": EXPORT_LAYOUT, "calibration_file": str(calibration.absolute())}
    key = json.dumps([source[k] for k in ("weights", "size", "mtime_ns", "chunk_size", "num_left_chunks",
                                          "calibration", "layout")])
    out = cache_root() / "onnx" / f"{directory.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if is_onnx_export(out) and (out / "encoder.int8.onnx").exists():
        return out
    import shutil
    import tempfile

    import sys
    import time

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    # the first load exports (tens of seconds): say so once, rather than seem to hang
    print(f"edgeasr: exporting {directory.name} to ONNX once (cached in {out}) ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:  # export beside the cache entry, then rename: a concurrent reader never sees half a graph
        export_onnx(directory, staging, chunk_size=chunk_size, num_left_chunks=num_left_chunks, int8=True, int4=True)
        (staging / CACHE_SOURCE).write_text(json.dumps(source, indent=1) + "\n")
        try:
            staging.rename(out)
        except OSError:  # another process finished the same export first
            if not is_onnx_export(out):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"edgeasr: export cached in {time.monotonic() - started:.0f} s; later loads reuse it", file=sys.stderr,
          flush=True)
    for stale in _stale_exports(out.parent, keep=out):
        shutil.rmtree(stale, ignore_errors=True)
    return out


def _stale_exports(onnx_cache: Path, keep: Path) -> list[Path]:
    """Cached exports no load can reuse, removed after each new export so the cache stays the size
    of the models in use (a retrained model, or a model directory that is gone, such as a test's,
    would otherwise leave hundreds of MB behind each time): entries made by an older edgeasr
    (no source file, or an older layout), entries whose model file (or its calibration) is gone
    or has changed since, and the hidden staging directory of an export killed half-way (older
    than a day: another process's export in progress is left alone)."""
    import time

    stale = []
    for entry in sorted(onnx_cache.iterdir()):
        if entry == keep or not entry.is_dir():
            continue
        if entry.name.startswith("."):
            if time.time() - entry.stat().st_mtime > 86400:
                stale.append(entry)
            continue
        try:
            source = json.loads((entry / CACHE_SOURCE).read_text())
            weights = Path(source["weights"])
            current = weights.stat() if weights.is_file() else None
            calibration = Path(source["calibration_file"])
            stamp = calibration.stat().st_mtime_ns if calibration.is_file() else None
            fresh = (source.get("layout") == EXPORT_LAYOUT and current is not None
                     and (current.st_size, current.st_mtime_ns) == (source["size"], source["mtime_ns"])
                     and stamp == source["calibration"])
        except (OSError, ValueError, KeyError, TypeError):
            fresh = False  # no readable source file: made before entries named their source
        if not fresh:
            stale.append(entry)
    return stale

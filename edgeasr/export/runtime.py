"""Streaming recognition with ONNX Runtime from an exported model directory, without torch.

``OnnxRecognizer.load(dir)`` reads ``encoder.onnx`` (or ``encoder.int8.onnx`` with
``int8=True``), ``decoder.onnx``, ``metadata.json`` and the tokenizer written by
``edgeasr.export.onnx.export_onnx``. It streams exactly like ``Recognizer``: the same streaming
fbank, the same searches and result building, with the encoder chunk and the rescoring decoder run
by onnxruntime. Softmax attention caches are trimmed to the exported left context after every
chunk, so memory stays bounded when the left context is limited.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeasr.audio.fbank import FbankOptions, StreamingFbank
from edgeasr.audio.io import load_audio
from edgeasr.decoding.ctc import GreedySearch, Hypothesis, PrefixBeamSearch
from edgeasr.decoding.endpoint import BlankTracker
from edgeasr.decoding.result import Result, build_result
from edgeasr.errors import EdgeAsrError
from edgeasr.text.tokenizer import Tokenizer


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRecognizer:
    def __init__(self, directory: str | os.PathLike[str], int8: bool = False, mode: str = "attention_rescoring",
                 beam_size: int = 10, ctc_weight: float = 0.5, threads: int = 1) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "metadata.json"
        if not meta_path.exists():
            raise EdgeAsrError(f"{self.directory}: not an exported ONNX model (missing metadata.json)")
        self.meta = json.loads(meta_path.read_text())
        suffix = ".int8.onnx" if int8 else ".onnx"
        encoder_path = self.directory / f"encoder{suffix}"
        if not encoder_path.exists():
            raise EdgeAsrError(f"{self.directory}: missing {encoder_path.name} (export with --int8 for int8 graphs)")
        self.encoder = _session(encoder_path, threads)
        decoder_path = self.directory / f"decoder{suffix}"
        self.decoder = _session(decoder_path, threads) if decoder_path.exists() else None
        if mode == "attention_rescoring" and self.decoder is None:
            mode = "ctc_prefix_beam"
        self.mode = mode
        self.beam_size = beam_size
        self.ctc_weight = ctc_weight
        self.tokenizer = Tokenizer.load(self.directory / "tokenizer")
        self.features = FbankOptions.from_dict(self.meta["features"])
        self.sample_rate = self.features.sample_rate
        self.frame_seconds = self.meta["subsampling_rate"] * self.meta["frame_shift_ms"] / 1000.0
        self.cache_inputs = [i.name for i in self.encoder.get_inputs()][1:]

    @property
    def chunk_size(self) -> int:
        """Fixed at export (the ``Recognizer`` property of the same name, for shared callers)."""
        return self.meta["chunk_size"]

    @classmethod
    def load(cls, directory, **options) -> "OnnxRecognizer":
        return cls(directory, **options)

    def initial_caches(self) -> list[np.ndarray]:
        caches = []
        for entry in self.meta["layers"]:
            if "att" in entry:
                caches.append(np.zeros([0 if s == -1 else s for s in entry["att"]["shape"]], dtype=np.float32))
            if "cnn" in entry:
                caches.append(np.zeros(entry["cnn"]["shape"], dtype=np.float32))
        return caches

    def stream(self) -> "OnnxStreamingSession":
        return OnnxStreamingSession(self)

    def transcribe(self, audio) -> Result:
        samples = audio if isinstance(audio, np.ndarray) else load_audio(audio, sample_rate=self.features.sample_rate)
        session = self.stream()
        session.accept(samples)
        return session.finish()

    def rescore(self, hyps: list[Hypothesis], encoded: np.ndarray) -> list[tuple[Hypothesis, float]]:
        """Attention rescoring with decoder.onnx, as ``edgeasr.decoding.rescoring`` does in torch."""
        sos, eos = self.meta["sos_id"], self.meta["eos_id"]
        width = max(1, max(len(h.tokens) for h in hyps)) + 1
        tokens = np.full((len(hyps), width), eos, dtype=np.int64)
        targets = np.full((len(hyps), width), -1, dtype=np.int64)
        for i, hyp in enumerate(hyps):
            tokens[i, 0] = sos
            tokens[i, 1 : len(hyp.tokens) + 1] = hyp.tokens
            targets[i, : len(hyp.tokens)] = hyp.tokens
            targets[i, len(hyp.tokens)] = eos
        lengths = np.array([len(h.tokens) + 1 for h in hyps], dtype=np.int64)
        memory = np.repeat(encoded[None], len(hyps), axis=0)
        (log_probs,) = self.decoder.run(None, {
            "tokens": tokens, "token_lengths": lengths, "memory": memory,
            "memory_lengths": np.full(len(hyps), encoded.shape[0], dtype=np.int64),
        })
        picked = np.take_along_axis(log_probs, np.maximum(targets, 0)[..., None], axis=2)[..., 0]
        scores = np.where(targets >= 0, picked, 0.0).sum(axis=1)
        ranked = [(hyp, float(att) + self.ctc_weight * hyp.score) for hyp, att in zip(hyps, scores)]
        return sorted(ranked, key=lambda item: item[1], reverse=True)


class OnnxStreamingSession:
    """One utterance through the ONNX encoder, chunk by chunk (the ``StreamingSession`` API)."""

    def __init__(self, recognizer: OnnxRecognizer) -> None:
        self.rec = recognizer
        meta = recognizer.meta
        self.window, self.stride = meta["window"], meta["stride"]
        self.max_left = meta["max_left_frames"]
        self.grows = [entry["att"]["grows"] for entry in meta["layers"] if "att" in entry]
        self.fbank = StreamingFbank(recognizer.features)
        self.pending = np.zeros((0, meta["features"].get("num_mel_bins", 80)), dtype=np.float32)
        self.caches = recognizer.initial_caches()
        self.greedy = recognizer.mode == "ctc_greedy"
        self.search = GreedySearch() if self.greedy else PrefixBeamSearch(beam_size=recognizer.beam_size)
        self.keep_encoded = recognizer.mode == "attention_rescoring"
        self.encoded: list[np.ndarray] = []
        self.blank_tracker = BlankTracker(blank=recognizer.meta["blank_id"])
        self.samples_seen = 0
        self.finished = False

    def _run(self, window: np.ndarray) -> None:
        outputs = self.rec.encoder.run(None, {"feats": window[None], **dict(zip(self.rec.cache_inputs, self.caches))})
        encoded, log_probs, new_caches = outputs[0][0], outputs[1][0], outputs[2:]
        if self.max_left >= 0:
            att_index = 0
            for position, name in enumerate(self.rec.cache_inputs):
                if name.startswith("att_cache"):
                    if self.grows[att_index]:
                        cache = new_caches[position]
                        new_caches[position] = cache[:, :, max(0, cache.shape[2] - self.max_left) :]
                    att_index += 1
        self.caches = list(new_caches)
        if self.keep_encoded:
            self.encoded.append(encoded)
        self.search.step(log_probs)
        self.blank_tracker.update(log_probs)

    def _consume(self, feats: np.ndarray, final: bool) -> None:
        self.pending = np.concatenate([self.pending, feats])
        while self.pending.shape[0] >= self.window:
            self._run(self.pending[: self.window])
            self.pending = self.pending[self.stride :]
        if final:
            if self.pending.shape[0] >= self.rec.meta["right_context"] + 1:
                self._run(self.pending)
            self.pending = self.pending[:0]

    def accept(self, samples: np.ndarray) -> Result:
        if self.finished:
            raise EdgeAsrError("this stream is finished; start a new one")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size and not np.all(np.isfinite(samples)):
            raise EdgeAsrError("audio chunk contains NaN or Inf samples")
        self.samples_seen += samples.size
        self._consume(self.fbank.accept(samples), final=False)
        best = self.search.nbest(1)
        if not best:
            return Result(text="", is_final=False)
        return build_result(best[0], self.rec.tokenizer, self.rec.frame_seconds, is_final=False)

    def finish(self) -> Result:
        if self.finished:
            raise EdgeAsrError("this stream is already finished")
        self.finished = True
        self._consume(self.fbank.finish(), final=True)
        rec = self.rec
        seconds = self.samples_seen / rec.features.sample_rate
        hyps = self.search.nbest()
        if not hyps:
            return Result(text="")
        if self.greedy:
            return build_result(hyps[0], rec.tokenizer, rec.frame_seconds, audio_seconds=seconds)
        if rec.mode == "attention_rescoring" and self.encoded:
            ranked = rec.rescore(hyps, np.concatenate(self.encoded))
        else:
            ranked = [(h, h.score) for h in hyps]
        return build_result(ranked[0][0], rec.tokenizer, rec.frame_seconds, ranked, audio_seconds=seconds)

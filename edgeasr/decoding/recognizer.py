"""Audio in, text out: offline and streaming recognition with one model.

``Recognizer.stream()`` returns a session fed with audio chunks of any size. Each chunk goes
through the streaming fbank, then the encoder chunk by chunk with caches, then the incremental
CTC prefix beam search; ``finish`` flushes the last partial chunk (so the last words are never
dropped) and, in attention-rescoring mode, rescores the n-best with the attention decoder over
the whole utterance's encoder output.

Offline recognition runs the same model over the whole utterance under the same chunk mask, and
gives the same text (the streaming encoder equals the masked full-sequence encoder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from edgeasr.audio.features import StreamingFbank, compute_fbank
from edgeasr.audio.io import load_audio
from edgeasr.decoding.ctc import GreedySearch, PrefixBeamSearch, ctc_greedy
from edgeasr.decoding.endpoint import BlankTracker
from edgeasr.decoding.rescoring import attention_rescore
from edgeasr.decoding.result import Result, build_result
from edgeasr.errors import EdgeAsrError
from edgeasr.model.encoder import EncoderStream
from edgeasr.model.package import PackagedModel, load_model_dir

MODES = ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring")


@dataclass
class DecodeOptions:
    mode: str = "attention_rescoring"
    #: encoder frames per chunk; 0 = full context (offline only); None = the model's default
    chunk_size: int | None = None
    num_left_chunks: int | None = None
    beam_size: int = 10
    ctc_weight: float = 0.5
    reverse_weight: float = 0.0
    #: run Linear layers as torch dynamic int8 (edgeasr.quant.dynamic); float model files only
    dynamic_int8: bool = False
    #: dynamic-compute models: the probability at which a gate opens (None = the model's own);
    #: higher skips more modules, trading accuracy for compute without retraining
    gate_threshold: float | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise EdgeAsrError(f"unknown decoding mode '{self.mode}' (choose from {', '.join(MODES)})")
        if self.chunk_size is not None and self.chunk_size < 0:
            raise EdgeAsrError("--chunk-size must be 0 (full context) or a positive number of frames")
        if self.beam_size < 1:
            raise EdgeAsrError("--beam-size must be at least 1")
        if self.gate_threshold is not None and not 0.0 < self.gate_threshold < 1.0:
            raise EdgeAsrError("--gate-threshold must be between 0 and 1")


class Recognizer:
    def __init__(self, packaged: PackagedModel, options: DecodeOptions | None = None) -> None:
        self.packaged = packaged
        self.model = packaged.model.eval()
        self.model.fuse()  # FusionFormer BatchNorms fold into their layers; a no-op otherwise
        self.tokenizer = packaged.tokenizer
        self.options = options or DecodeOptions()
        self.options.validate()
        if self.options.dynamic_int8:
            if self.model.config.quantization is not None:
                raise EdgeAsrError("--dynamic-int8 applies to float models; this one is already quantized")
            from edgeasr.quant.dynamic import dynamic_int8

            self.model = dynamic_int8(self.model)
        if self.options.gate_threshold is not None:
            if self.model.encoder.dynamic is None:
                raise EdgeAsrError("--gate-threshold applies to dynamic-compute models (I3D, amortized); this one has no gates")
            self.model.encoder.dynamic.config.threshold = self.options.gate_threshold
        if self.options.mode == "attention_rescoring" and self.model.decoder is None:
            self.options.mode = "ctc_prefix_beam"
        encoder = self.model.encoder
        self.frame_seconds = (
            encoder.subsampling.rate * packaged.features.frame_shift_ms / 1000.0
        )

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] = "default", options: DecodeOptions | None = None) -> "Recognizer":
        return cls(load_model_dir(name_or_path), options)

    @property
    def directory(self):
        return self.packaged.directory

    @property
    def sample_rate(self) -> int:
        return self.packaged.features.sample_rate

    @property
    def chunk_size(self) -> int:
        size = self.options.chunk_size
        return self.packaged.streaming.chunk_size if size is None else size

    @property
    def num_left_chunks(self) -> int:
        left = self.options.num_left_chunks
        return self.packaged.streaming.num_left_chunks if left is None else left

    def _audio(self, audio: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
        if isinstance(audio, np.ndarray):
            return audio.astype(np.float32, copy=False)
        return load_audio(audio, sample_rate=self.packaged.features.sample_rate)

    def stream(self) -> "StreamingSession":
        if self.chunk_size <= 0:
            raise EdgeAsrError("streaming needs a chunk size of at least 1 (got 0 = full context)")
        return StreamingSession(self)

    @torch.no_grad()
    def transcribe(self, audio, streaming: bool | None = None) -> Result:
        """Recognize a whole file or array; streams by default when the chunk size allows."""
        samples = self._audio(audio)
        if streaming is None:
            streaming = self.chunk_size > 0
        if streaming:
            session = self.stream()
            session.accept(samples)
            return session.finish()
        return self.transcribe_offline(samples)

    @torch.no_grad()
    def transcribe_offline(self, samples: np.ndarray) -> Result:
        feats = compute_fbank(samples, self.packaged.features)
        encoded, _ = self.model.encode(
            feats.unsqueeze(0), torch.tensor([feats.size(0)]), self.chunk_size, self.num_left_chunks
        )
        return self._decode(encoded, len(samples) / self.packaged.features.sample_rate)

    @torch.no_grad()
    def transcribe_batch(self, batch: list[np.ndarray]) -> list[Result]:
        """Offline recognition of several utterances in one padded encoder pass.

        Padding never reaches real frames (masked attention, masked convolution), so each result
        equals ``transcribe_offline`` of that utterance alone.
        """
        if not batch:
            return []
        feats = [compute_fbank(samples, self.packaged.features) for samples in batch]
        lengths = torch.tensor([f.size(0) for f in feats])
        padded = torch.zeros(len(feats), int(lengths.max()), feats[0].size(1))
        for i, f in enumerate(feats):
            padded[i, : f.size(0)] = f
        encoded, enc_lengths = self.model.encode(padded, lengths, self.chunk_size, self.num_left_chunks)
        rate = self.packaged.features.sample_rate
        return [
            self._decode(encoded[i : i + 1, : int(enc_lengths[i])], len(samples) / rate)
            for i, samples in enumerate(batch)
        ]

    def _decode(self, encoded: torch.Tensor, audio_seconds: float) -> Result:
        log_probs = self.model.ctc_log_probs(encoded)[0]
        if self.options.mode == "ctc_greedy":
            return build_result(ctc_greedy(log_probs), self.tokenizer, self.frame_seconds, audio_seconds=audio_seconds)
        search = PrefixBeamSearch(beam_size=self.options.beam_size)
        search.step(log_probs)
        return self._finalize(search, encoded, audio_seconds)

    def _finalize(self, search: PrefixBeamSearch, encoded: torch.Tensor, audio_seconds: float) -> Result:
        hyps = search.nbest()
        if self.options.mode == "attention_rescoring" and hyps and encoded.size(1) > 0:
            ranked = attention_rescore(
                self.model, hyps, encoded, self.options.ctc_weight, self.options.reverse_weight
            )
        else:
            ranked = [(h, h.score) for h in hyps]
        if not ranked:
            return Result(text="")
        return build_result(ranked[0][0], self.tokenizer, self.frame_seconds, ranked, audio_seconds=audio_seconds)


class StreamingSession:
    """One utterance being recognized as its audio arrives."""

    def __init__(self, recognizer: Recognizer) -> None:
        self.recognizer = recognizer
        model = recognizer.model
        self.fbank = StreamingFbank(recognizer.packaged.features)
        self.encoder = EncoderStream(model.encoder, recognizer.chunk_size, recognizer.num_left_chunks)
        self.greedy = recognizer.options.mode == "ctc_greedy"
        self.search = GreedySearch() if self.greedy else PrefixBeamSearch(beam_size=recognizer.options.beam_size)
        # Only attention rescoring needs the whole utterance's encoder output; the CTC modes keep
        # nothing per frame, so an endless stream with limited left context has bounded memory.
        self.keep_encoded = recognizer.options.mode == "attention_rescoring"
        self.encoded: list[torch.Tensor] = []
        #: trailing silence and frames decoded, for endpointing (edgeasr.decoding.endpoint)
        self.blank_tracker = BlankTracker(blank=model.blank_id)
        self.samples_seen = 0
        self.finished = False

    def _consume(self, feats: torch.Tensor, final: bool) -> None:
        model = self.recognizer.model
        feats = torch.from_numpy(feats)
        out = self.encoder.accept(model.normalize(feats)) if feats.numel() else torch.zeros(0, model.encoder.output_dim)
        if final:
            out = torch.cat([out, self.encoder.finish()])
        if out.size(0):
            if self.keep_encoded:
                self.encoded.append(out)
            log_probs = model.ctc_log_probs(out)
            self.search.step(log_probs)
            self.blank_tracker.update(log_probs)

    @torch.no_grad()
    def accept(self, samples: np.ndarray) -> Result:
        """Feed audio (float32 mono at the model's rate); returns the partial result so far."""
        if self.finished:
            raise EdgeAsrError("this stream is finished; start a new one with recognizer.stream()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size and not np.all(np.isfinite(samples)):
            raise EdgeAsrError("audio chunk contains NaN or Inf samples")
        self.samples_seen += samples.size
        self._consume(self.fbank.accept(samples), final=False)
        best = self.search.nbest(1)
        hyp = best[0] if best else None
        if hyp is None:
            return Result(text="", is_final=False)
        return build_result(hyp, self.recognizer.tokenizer, self.recognizer.frame_seconds, is_final=False)

    @torch.no_grad()
    def finish(self) -> Result:
        """No more audio: flush everything and return the final (rescored) result."""
        if self.finished:
            raise EdgeAsrError("this stream is already finished")
        self.finished = True
        self._consume(self.fbank.finish(), final=True)
        rec = self.recognizer
        seconds = self.samples_seen / rec.packaged.features.sample_rate
        encoded = torch.cat(self.encoded).unsqueeze(0) if self.encoded else torch.zeros(1, 0, rec.model.encoder.output_dim)
        if self.greedy:
            return build_result(self.search.nbest()[0], rec.tokenizer, rec.frame_seconds, audio_seconds=seconds)
        return rec._finalize(self.search, encoded, seconds)

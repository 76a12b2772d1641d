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

from edgeasr.audio.io import load_audio
from edgeasr.decoding.ctc import GreedySearch, PrefixBeamSearch, ctc_greedy
from edgeasr.decoding.endpoint import BlankTracker, EndpointRules, endpoint_reached
from edgeasr.decoding.rescoring import attention_rescore
from edgeasr.decoding.result import Result, Word, build_result
from edgeasr.errors import EdgeAsrError
from edgeasr.model.package import PackagedModel, load_model_dir

MODES = ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring", "whisper_rescoring")


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
    #: whisper_rescoring: CTC's weight against Whisper's decoder (tuned on dev: 0.2)
    whisper_ctc_weight: float = 0.2
    #: whisper_rescoring: score bonus per character of a hypothesis; CTC and decoder scores
    #: fall with every character, so without it an unsure head ends hypotheses early
    whisper_length_bonus: float = 0.5
    #: whisper_rescoring: "joint" (Whisper's decoder writes, CTC scores every prefix) or
    #: "rescore" (pick among the CTC n-best and one free Whisper decode)
    second_pass_search: str = "joint"
    #: cut the stream into segments at endpoints, each decoded (and rescored) on its own, so
    #: memory and time stay bounded on endless audio; None = automatic (on for encoders whose
    #: positions end, such as Whisper's 30 s, and for whisper_rescoring)
    segment: bool | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise EdgeAsrError(f"unknown decoding mode '{self.mode}' (choose from {', '.join(MODES)})")
        if self.chunk_size is not None and self.chunk_size < 0:
            raise EdgeAsrError("--chunk-size must be 0 (full context) or a positive number of frames")
        if self.beam_size < 1:
            raise EdgeAsrError("--beam-size must be at least 1")
        if not 0.0 <= self.whisper_ctc_weight <= 1.0:
            raise EdgeAsrError("--whisper-ctc-weight must be between 0 and 1")
        if self.second_pass_search not in ("joint", "rescore"):
            raise EdgeAsrError("--second-pass must be 'joint' or 'rescore'")
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
            if getattr(self.model.encoder, "dynamic", None) is None:
                raise EdgeAsrError("--gate-threshold applies to dynamic-compute models (I3D, amortized); this one has no gates")
            self.model.encoder.dynamic.config.threshold = self.options.gate_threshold
        self.frontend = packaged.features
        self.frame_seconds = self.model.encoder.subsampling_rate * self.frontend.frame_shift
        self.mode = self.options.mode
        if self.mode == "attention_rescoring" and self.model.decoder is None:
            # "rescore with the model's own attention decoder": Whisper's, when that is the one it has
            self.mode = "whisper_rescoring" if self.model.whisper_decoder is not None else "ctc_prefix_beam"
        if self.mode == "whisper_rescoring" and self.model.whisper_decoder is None:
            raise EdgeAsrError("whisper_rescoring needs a model with a Whisper decoder (edgeasr import whisper)")
        self.second_pass = None
        if self.mode == "whisper_rescoring":
            from edgeasr.decoding.whisper_rescoring import WhisperSecondPass

            self.second_pass = WhisperSecondPass(
                self.model, packaged.tokenizer, packaged.whisper_tokenizer, packaged.whisper_prompt,
                ctc_weight=self.options.whisper_ctc_weight, length_bonus=self.options.whisper_length_bonus,
                beam_size=self.options.beam_size, search=self.options.second_pass_search)
        #: encoder frames a segment may hold (Whisper's positions end at 30 s); None = unlimited
        self.max_segment_frames = getattr(self.model.encoder, "max_frames", None)
        segment = self.options.segment
        if segment is None:
            segment = self.max_segment_frames is not None or self.second_pass is not None
        self.endpoint_rules = None
        if segment:
            limit = 20.0
            if self.max_segment_frames is not None:
                limit = min(limit, 0.9 * self.max_segment_frames * self.frame_seconds)
            self.endpoint_rules = EndpointRules(max_utterance=limit)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike[str] = "default", options: DecodeOptions | None = None) -> "Recognizer":
        return cls(load_model_dir(name_or_path), options)

    @property
    def directory(self):
        return self.packaged.directory

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

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
        return load_audio(audio, sample_rate=self.frontend.sample_rate)

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
        feats = self.model.normalize(self.frontend.compute(samples))
        self._check_segment_length(feats.size(0))
        encoded, _ = self.model.encoder(  # features are normalized above
            feats.unsqueeze(0), torch.tensor([feats.size(0)]), self.chunk_size, self.num_left_chunks
        )
        return self._decode(encoded, len(samples) / self.frontend.sample_rate, feats)

    def _check_segment_length(self, feature_frames: int) -> None:
        limit = self.max_segment_frames
        if limit is not None and (feature_frames + 1) // self.model.encoder.subsampling_rate > limit:
            seconds = limit * self.frame_seconds
            raise EdgeAsrError(f"this model's encoder sees at most {seconds:.0f} s at once; stream longer audio "
                               "(a chunk size above 0) so it is cut into segments at endpoints")

    @torch.no_grad()
    def transcribe_batch(self, batch: list[np.ndarray]) -> list[Result]:
        """Offline recognition of several utterances in one padded encoder pass.

        Padding never reaches real frames (masked attention, masked convolution), so each result
        equals ``transcribe_offline`` of that utterance alone.
        """
        if not batch:
            return []
        feats = [self.model.normalize(self.frontend.compute(samples)) for samples in batch]
        for f in feats:
            self._check_segment_length(f.size(0))
        lengths = torch.tensor([f.size(0) for f in feats])
        padded = torch.zeros(len(feats), int(lengths.max()), feats[0].size(1))
        for i, f in enumerate(feats):
            padded[i, : f.size(0)] = f
        # normalize() was applied per utterance above; encode the batch without a second one
        encoded, enc_lengths = self.model.encoder(padded, lengths, self.chunk_size, self.num_left_chunks)
        rate = self.frontend.sample_rate
        return [
            self._decode(encoded[i : i + 1, : int(enc_lengths[i])], len(samples) / rate, feats[i])
            for i, samples in enumerate(batch)
        ]

    def _decode(self, encoded: torch.Tensor, audio_seconds: float, feats: torch.Tensor | None = None) -> Result:
        log_probs = self.model.ctc_log_probs(encoded)[0]
        if self.mode == "ctc_greedy":
            return build_result(ctc_greedy(log_probs), self.tokenizer, self.frame_seconds, audio_seconds=audio_seconds)
        search = PrefixBeamSearch(beam_size=self.options.beam_size)
        search.step(log_probs)
        return self._finalize(search, encoded, audio_seconds, feats)

    def _finalize(self, search: PrefixBeamSearch, encoded: torch.Tensor, audio_seconds: float,
                  feats: torch.Tensor | None = None) -> Result:
        """The final result of one segment: its n-best, rescored by the mode's second pass.

        ``feats`` (the segment's normalized features) feed the Whisper second pass, which
        re-encodes them with full context.
        """
        hyps = search.nbest()
        if self.mode == "whisper_rescoring" and feats is not None and feats.size(0) > 0:
            ranked, _ = self.second_pass.rescore(feats, hyps)
        elif self.mode == "attention_rescoring" and hyps and encoded.size(1) > 0:
            ranked = attention_rescore(
                self.model, hyps, encoded, self.options.ctc_weight, self.options.reverse_weight
            )
        else:
            ranked = [(h, h.score) for h in hyps]
        if not ranked:
            return Result(text="")
        return build_result(ranked[0][0], self.tokenizer, self.frame_seconds, ranked, audio_seconds=audio_seconds)


def join_segments(segments: list[tuple[float, Result]], is_final: bool) -> Result:
    """One result from the results of consecutive segments, each with its start time (seconds).

    Words and token times are shifted by their segment's start; confidence is the word-weighted
    mean; the n-best of a multi-segment result is the joined best paths (one entry).
    """
    if len(segments) == 1 and segments[0][0] == 0.0:
        result = segments[0][1]
        result.is_final = is_final
        return result
    texts = [r.text for _, r in segments if r.text]
    words, tokens, times = [], [], []
    for offset, result in segments:
        words += [Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence) for w in result.words]
        tokens += result.tokens
        times += [round(t + offset, 3) for t in result.token_times]
    confidence = (sum(w.confidence for w in words) / len(words)) if words else 0.0
    text = " ".join(texts)
    return Result(text=text, tokens=tokens, token_times=times, words=words, confidence=confidence,
                  nbest=[{"text": text, "score": sum(r.nbest[0]["score"] for _, r in segments if r.nbest)}] if text else [],
                  is_final=is_final)


class StreamingSession:
    """One stream being recognized as its audio arrives.

    With endpoint segmentation (``Recognizer.endpoint_rules``), the stream is cut into segments
    at endpoints: each segment is finalized (second pass included) as soon as it ends, and the
    encoder, search and endpointer start afresh for the next one, so memory and compute stay flat
    however long the stream runs. ``is_endpoint()`` tells whether the last ``accept`` closed a
    segment; results always cover the whole stream.
    """

    def __init__(self, recognizer: Recognizer) -> None:
        self.recognizer = recognizer
        model = recognizer.model
        self.fbank = recognizer.frontend.stream()
        self.encoder = model.encoder.stream(recognizer.chunk_size, recognizer.num_left_chunks)
        self.greedy = recognizer.mode == "ctc_greedy"
        # The joint second pass decodes each segment anew and never reads the first pass's
        # n-best, so its partials come from the best path: a prefix beam would only cost time.
        self.greedy_partials = self.greedy or (recognizer.mode == "whisper_rescoring"
                                               and recognizer.options.second_pass_search == "joint")
        # Only rescoring needs the segment's encoder output (attention) or features (Whisper);
        # the CTC modes keep nothing per frame, so an endless stream has bounded memory.
        self.keep_encoded = recognizer.mode == "attention_rescoring"
        self.keep_feats = recognizer.mode == "whisper_rescoring"
        self.rules = recognizer.endpoint_rules
        #: finalized segments: (start seconds, result)
        self.segments: list[tuple[float, Result]] = []
        self.segment_start_frames = 0
        self.samples_seen = 0
        self.finished = False
        self.endpoint = False
        self._new_segment()

    def _new_segment(self) -> None:
        model = self.recognizer.model
        self.search = (GreedySearch() if self.greedy_partials
                       else PrefixBeamSearch(beam_size=self.recognizer.options.beam_size))
        self.encoded: list[torch.Tensor] = []
        self.feats: list[torch.Tensor] = []
        #: trailing silence and frames decoded, for endpointing (edgeasr.decoding.endpoint)
        self.blank_tracker = BlankTracker(blank=model.blank_id)

    def _consume(self, feats: torch.Tensor, final: bool) -> None:
        model = self.recognizer.model
        feats = model.normalize(torch.from_numpy(feats))
        if self.keep_feats and feats.numel():
            self.feats.append(feats)
        out = self.encoder.accept(feats) if feats.numel() else torch.zeros(0, model.encoder.output_dim)
        if final:
            out = torch.cat([out, self.encoder.finish()])
        self._decode_frames(out)

    def _decode_frames(self, out: torch.Tensor) -> None:
        """Encoder frames of this segment into the search, the endpointer and (rescoring) the store."""
        if not out.size(0):
            return
        if self.keep_encoded:
            self.encoded.append(out)
        log_probs = self.recognizer.model.ctc_log_probs(out)
        self.search.step(log_probs)
        self.blank_tracker.update(log_probs)

    def _segment_result(self, start: float, final: bool) -> Result:
        rec = self.recognizer
        # The last segment runs to the end of the audio; earlier ones to their last frame.
        seconds = (self.samples_seen / rec.frontend.sample_rate - start if final
                   else self.blank_tracker.frames * rec.frame_seconds)
        if self.greedy:
            return build_result(self.search.nbest()[0], rec.tokenizer, rec.frame_seconds, audio_seconds=seconds)
        encoded = torch.cat(self.encoded).unsqueeze(0) if self.encoded else torch.zeros(1, 0, rec.model.encoder.output_dim)
        feats = torch.cat(self.feats) if self.feats else None
        return rec._finalize(self.search, encoded, seconds, feats)

    def _close_segment(self, final: bool) -> None:
        """Flush the encoder into this segment, finalize it, and start the next one."""
        if not final:
            self._decode_frames(self.encoder.finish())
        start = self.segment_start_frames * self.recognizer.frame_seconds
        result = self._segment_result(start, final)
        self.segment_start_frames += self.blank_tracker.frames
        if result.text or not self.segments:
            self.segments.append((start, result))
        if not final:
            self.encoder.reset()
            self._new_segment()

    def is_endpoint(self) -> bool:
        """True when the last ``accept`` ended a segment (its text is final from now on)."""
        return self.endpoint

    def _current(self, best: list, is_final: bool) -> Result:
        """The whole stream so far: finished segments and ``best``, the open segment's best path."""
        rec = self.recognizer
        parts = [(s, r) for s, r in self.segments if r.text]
        if best and best[0].tokens:
            start = self.segment_start_frames * rec.frame_seconds
            parts.append((start, build_result(best[0], rec.tokenizer, rec.frame_seconds, is_final=False)))
        if not parts:
            return Result(text="", is_final=is_final)
        return join_segments(parts, is_final=is_final)

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
        self.endpoint = False
        best = self.search.nbest(1)  # one sort of the beams per call, shared below
        if self.rules is not None:
            has_text = bool(best and best[0].tokens)
            if endpoint_reached(self.rules, self.blank_tracker, self.recognizer.frame_seconds, has_text):
                self._close_segment(final=False)
                self.endpoint = True
                best = self.search.nbest(1)  # the new, empty segment's
        return self._current(best, is_final=False)

    @torch.no_grad()
    def finish(self) -> Result:
        """No more audio: flush everything and return the final (rescored) result."""
        if self.finished:
            raise EdgeAsrError("this stream is already finished")
        self.finished = True
        self._consume(self.fbank.finish(), final=True)
        self._close_segment(final=True)
        parts = [(s, r) for s, r in self.segments if r.text] or self.segments[-1:]
        return join_segments(parts, is_final=True)

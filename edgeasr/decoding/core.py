"""The decoding core shared by every backend: encoder frames in, results out.

``DecodingCore`` holds everything between a backend's encoder and a ``Result``: the mode (from
the ``edgeasr.decoding.modes`` registry), the CTC search with its fused LM and hotwords, the
endpointer, the second pass. A backend (torch ``Recognizer``, ONNX Runtime ``OnnxRecognizer``)
supplies only a chunk runner (``accept(feats) -> (encoded, log_probs)``, ``finish``, ``reset``)
and its attention rescorer, so ``StreamingSession`` — segments, partials, ``is_endpoint()``,
``reset()`` — is written once. Nothing here imports torch: the ONNX path runs without it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from edgeasr.audio.io import array_samples, check_sample_rate, iter_audio_blocks
from edgeasr.audio.vad import EnergyVad
from edgeasr.decoding.confidence import load_calibration
from edgeasr.decoding.ctc import GreedySearch, Hypothesis, PrefixBeamSearch
from edgeasr.decoding.transducer_search import TransducerBeamSearch, TransducerGreedySearch
from edgeasr.decoding.endpoint import BlankTracker, EndpointRules, endpoint_reached, speech_frames
from edgeasr.decoding.fusion import build_scorer, piece_texts, read_hotwords
from edgeasr.decoding.modes import MODE_NAMES, resolve_mode
from edgeasr.decoding.result import Result, Word, build_result, shift_segments
from edgeasr.errors import AudioError, EdgeAsrError

#: kept for callers that list the modes (``edgeasr.decoding.modes`` is the registry)
MODES = MODE_NAMES
#: where a model directory keeps its language model (``edgeasr lm train --out DIR/lm``)
MODEL_LM_DIR = "lm"


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
    #: whisper_rescoring: CTC's weight against Whisper's decoder (chosen on dev with the window
    #: below, benchmarks/second_pass_window.py: the TTS-trained head pulls Whisper towards
    #: misspellings on real speech at 0.2)
    whisper_ctc_weight: float = 0.1
    #: whisper_rescoring: score bonus per character of a hypothesis; CTC and decoder scores
    #: fall with every character, so without it an unsure head ends hypotheses early
    whisper_length_bonus: float = 0.3
    #: whisper_rescoring: seconds of Whisper's window the second pass re-encodes each segment in,
    #: the segment followed by silence as Whisper was trained (0 = the segment alone: cheapest,
    #: but Whisper's decoder then leans on the CTC head to stop; 30 = Whisper's own window).
    #: 10 s was best on dev (synthesized and real speech together) at 1.3x the time of none.
    second_pass_window: float = 10.0
    #: what fills that window: "floor" (digital silence at Whisper's floor, as in its training)
    #: or "quietest" (each mel bin at the segment's own quietest value: the recording's
    #: background continued; better on realdev, worse on the TTS test: second_pass_window_pad.json)
    second_pass_pad: str = "floor"
    #: whisper_rescoring: "joint" (Whisper's decoder writes, CTC scores every prefix) or
    #: "rescore" (pick among the CTC n-best and one free Whisper decode)
    second_pass_search: str = "joint"
    #: transducer_whisper: the transducer's share of the joint search's first-pass score; the
    #: rest is the CTC head's (1: the transducer alone). 0.5 was best on the TTS dev set
    #: (synth4 dev, 207 utterances: WER 18.1 against 19.1 at 1, 18.4 at 0.25; whisper_rescoring 18.8)
    second_pass_transducer_weight: float = 0.5
    #: cut the stream into segments at endpoints, each decoded (and rescored) on its own, so
    #: memory and time stay bounded on endless audio; None = automatic: on wherever a stream
    #: would keep something per frame (a second pass, unlimited left context, Whisper's 30 s)
    segment: bool | None = None
    #: skip blocks of audio that an energy VAD (edgeasr.audio.vad) hears as silence while no
    #: speech is open: the encoder never runs on them, so long pauses cost next to nothing
    vad: bool = False
    #: close segments where the model's segmenter (edgeasr.model.segmenter) predicts the end of
    #: speech, before the blank rules would: None = whenever the model has one; False = rules only
    segmenter: bool | None = None
    #: the segmenter's probability at a chunk's last frame that closes the segment ...
    segmenter_threshold: float = 0.9
    #: ... once at least this much trailing silence (CTC blanks) is heard (benchmarks/segmenter.py
    #: with the default's two passes: at 0.9 and 0.5 s, streams of TTS-test utterances read at the
    #: rules' WER or better, finals ~0.2 s sooner, and realdev's conversational streams too; at
    #: 0.3 s realdev lost 3 WER points to sentences cut at their pauses)
    segmenter_min_silence: float = 0.5
    #: word n-gram LM: "auto" = the model directory's lm/ when it has one; None = none; or a
    #: path (an `edgeasr lm train` directory or an ARPA file)
    lm: str | None = "auto"
    #: shallow-fusion weight of the LM's ln-probabilities in the CTC prefix beam (tuned on dev)
    lm_weight: float = 0.8
    #: score added per unit the LM scores (a word, or a character for a character LM): pays
    #: back what its probabilities take per unit, which would otherwise favour short output
    lm_bonus: float = 1.5
    #: word LMs: extra penalty (nats) for a word outside the LM's vocabulary
    unk_penalty: float = 4.0
    #: the LM's weight in the Whisper joint second pass; 0 = leave Whisper's wording alone (its
    #: decoder is a far stronger LM than an n-gram: fusing one there measured no gain)
    whisper_lm_weight: float = 0.0
    whisper_lm_bonus: float = 0.5
    #: density-ratio fusion: an LM of the acoustic model's training transcripts (a path, as
    #: ``lm``), subtracted from the fused LM's score in the first pass with this weight
    source_lm: str | None = None
    source_lm_weight: float = 0.3
    #: phrases to bias towards: a file (one a line, optional ":BOOST") or a list of phrases
    hotwords: str | list[str] | None = None
    #: boost per character of a hotword (nats), unless its line gives one
    hotword_boost: float = 1.5
    #: prefix beam: tokens more than this many nats below a frame's best are not expanded
    token_threshold: float = 4.0
    #: prefix beam: prefixes this many nats below the frame's best are dropped
    score_threshold: float = 6.0
    #: another model directory whose encoder and CTC head run the streaming first pass (partials,
    #: endpoints) in place of this model's, e.g. a small student distilled from it
    #: (configs/whisper/practical_first_pass.yaml); this model's second pass still re-encodes
    #: each segment. Same front end, tokenizer and frame rate required (torch backend).
    first_pass: str | None = None
    #: whisper_rescoring: another Whisper whose encoder and decoder write the finals, e.g. the
    #: larger ``whisper:base`` (imported once from its packages into the cache) or a directory
    #: from `edgeasr import whisper`; this model's CTC head still scores the joint search, so
    #: the writer needs no training. Same front end and frame rate required (torch backend).
    second_pass_model: str | None = None
    #: cascade_rescoring with a dynamic cascade (``model.cascade.exits``): the sub-model of this
    #: many layers gives the finals (None: the full depth); a smaller one costs less
    cascade_layers: int | None = None

    def validate(self) -> None:
        if self.mode not in MODES:
            raise EdgeAsrError(f"unknown decoding mode '{self.mode}' (choose from {', '.join(MODES)})")
        for name in ("lm_weight", "unk_penalty", "whisper_lm_weight", "hotword_boost", "token_threshold",
                     "score_threshold", "source_lm_weight"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise EdgeAsrError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
        if self.chunk_size is not None and self.chunk_size < 0:
            raise EdgeAsrError("--chunk-size must be 0 (full context) or a positive number of frames")
        if self.beam_size < 1:
            raise EdgeAsrError("--beam-size must be at least 1")
        if not 0.0 < self.segmenter_threshold < 1.0:
            raise EdgeAsrError("--segmenter-threshold must be between 0 and 1")
        if not self.segmenter_min_silence >= 0:
            raise EdgeAsrError("--segmenter-min-silence must be 0 or more")
        if not 0.0 <= self.whisper_ctc_weight <= 1.0:
            raise EdgeAsrError("--whisper-ctc-weight must be between 0 and 1")
        if not 0.0 <= self.second_pass_transducer_weight <= 1.0:
            raise EdgeAsrError("--second-pass-transducer-weight must be between 0 and 1")
        if not 0.0 <= self.second_pass_window <= 30.0:
            raise EdgeAsrError("--second-pass-window must be between 0 and 30 seconds (Whisper's window)")
        if self.second_pass_pad not in ("floor", "quietest"):
            raise EdgeAsrError("--second-pass-pad must be 'floor' or 'quietest'")
        if self.second_pass_search not in ("joint", "rescore"):
            raise EdgeAsrError("--second-pass must be 'joint' or 'rescore'")
        if self.cascade_layers is not None and self.cascade_layers < 1:
            raise EdgeAsrError("--cascade-layers must be at least 1")
        if self.gate_threshold is not None and not 0.0 < self.gate_threshold < 1.0:
            raise EdgeAsrError("--gate-threshold must be between 0 and 1")


def segmenter_left_out(options: DecodeOptions) -> bool:
    """True when a separate first pass (``--first-pass``) streams: the model's segmenter reads
    this model's own encoder frames, which are then never made, so the blank rules close the
    segments (reading the stand-in's blanks). Asking for the segmenter there is a one-line error."""
    if options.first_pass is None:
        return False
    if options.segmenter:
        raise EdgeAsrError("--segmenter on: the segmenter reads this model's own first pass, which --first-pass "
                           "replaces (use --segmenter auto or off)")
    return True


class DecodingCore:
    """Encoder frames to results, for any backend: mode, search, LM and hotwords, endpointing,
    second pass. A backend sets ``tokenizer``, ``frame_seconds``, ``options`` and calls
    ``_setup_decoding``; it provides ``chunk_runner()``, ``rescore_attention`` and (for
    ``whisper_rescoring``) ``second_pass``."""

    second_pass = None
    calibrator = None

    def _setup_decoding(self, options: "DecodeOptions", has_attention: bool, has_whisper: bool,
                        model_directory, blank_id: int, max_segment_frames: int | None = None,
                        transducer=None, cascade=None, segmenter=None) -> None:
        """``transducer``: the backend's transducer runner (``edgeasr.decoding.transducer_search``:
        the torch head's or the ONNX graphs'), for the transducer modes;
        ``cascade``: a callable from a segment's first-pass encoder frames [1, T, D] to the
        cascaded second pass's CTC log-probs [T, V] (numpy), for ``cascade_rescoring``;
        ``segmenter``: a callable from a chunk's encoder frames [T, D] to the segmenter's
        probability that the segment's speech has ended by the last one (None: rules only)."""
        self.options = options
        options.validate()
        self.mode_spec = resolve_mode(options.mode, has_attention, has_whisper, transducer is not None,
                                      cascade is not None)
        self.transducer = transducer
        self.cascade = cascade
        if options.segmenter and segmenter is None:
            raise EdgeAsrError("--segmenter needs a model with a segmenter (model.segmenter in its config)")
        self.segmenter = segmenter if options.segmenter is not False else None
        self.mode = self.mode_spec.name
        self.blank_id = blank_id
        self.piece_texts = piece_texts(self.tokenizer)
        self.lm = _resolve_lm(options.lm, model_directory)
        self.source_lm = None
        if options.source_lm not in (None, "none"):
            if self.lm is None:
                raise EdgeAsrError("--source-lm (density-ratio fusion) needs an LM to fuse (--lm)")
            self.source_lm = _cached_lm(str(options.source_lm))
        self.calibrator = load_calibration(model_directory)
        self.hotwords = self._phrases(options.hotwords)
        #: encoder frames a segment may hold (Whisper's positions end at 30 s); None = unlimited
        self.max_segment_frames = max_segment_frames
        segment = options.segment
        if segment is None:
            # On wherever a stream would otherwise keep something per frame: a rescoring pass
            # keeps the encoder output, unlimited left context keeps attention caches.
            segment = (max_segment_frames is not None or self.mode_spec.second_pass is not None
                       or self.num_left_chunks < 0)
        self.endpoint_rules = None
        if segment:
            limit = 20.0
            if max_segment_frames is not None:
                limit = min(limit, 0.9 * max_segment_frames * self.frame_seconds)
            self.endpoint_rules = EndpointRules(max_utterance=limit)

    def _phrases(self, hotwords) -> list[tuple[str, float]] | None:
        if hotwords is None or (isinstance(hotwords, (list, tuple)) and not hotwords):
            return None
        return read_hotwords(hotwords, self.options.hotword_boost)

    def scorers(self, hotwords=None) -> tuple[object, object]:
        """(first-pass scorer, second-pass scorer): the LM and the hotwords (``hotwords`` replaces
        the recognizer's own for one stream). The second pass weighs the LM apart: Whisper's
        decoder already writes fluent English."""
        if hotwords is None and getattr(self, "_own_scorers", None) is not None:
            return self._own_scorers  # shared by the streams: their caches stay warm
        phrases = self._phrases(hotwords) if hotwords is not None else self.hotwords
        o = self.options
        first = build_scorer(self.lm, o.lm_weight, o.lm_bonus, o.unk_penalty, phrases,
                             source_lm=self.source_lm, source_weight=o.source_lm_weight)
        second = build_scorer(self.lm, o.whisper_lm_weight, o.whisper_lm_bonus, o.unk_penalty, phrases)
        if hotwords is None:
            self._own_scorers = (first, second)
        return first, second

    def new_search(self, scorer=None, greedy: bool = False, native: bool | None = None):
        """The mode's search; ``native`` picks the CTC prefix search's implementation (None: the
        compiled one where built, False: the Python reference)."""
        if self.mode_spec.head == "transducer":  # reads encoder frames: see search_input
            if greedy:
                return TransducerGreedySearch(self.transducer)
            return TransducerBeamSearch(self.transducer, beam_size=self.options.beam_size, scorer=scorer,
                                        piece_texts=self.piece_texts)
        if greedy:
            return GreedySearch(blank=self.blank_id)
        return PrefixBeamSearch(beam_size=self.options.beam_size, blank=self.blank_id, scorer=scorer,
                                piece_texts=self.piece_texts, token_threshold=self.options.token_threshold,
                                score_threshold=self.options.score_threshold, native=native)

    def search_input(self, encoded, log_probs):
        """What the mode's search reads per frame: CTC log-probs [T, V], or encoder frames [T, D]
        for the transducer."""
        return encoded if self.mode_spec.head == "transducer" else log_probs

    def rescore_attention(self, hyps: list[Hypothesis], encoded) -> list[tuple[Hypothesis, float]]:
        raise NotImplementedError

    def decode_frames(self, log_probs, encoded, audio_seconds: float, feats=None, scorers=None) -> Result:
        """One whole segment's CTC log-probs [T, V] (and encoder output, model input) to its result."""
        first, second = scorers if scorers is not None else self.scorers()
        if not speech_frames(log_probs, self.blank_id):
            return Result(text="")  # best-path CTC hears nothing: no search may write text here
        search = self.new_search(first, greedy=not self.mode_spec.beam)
        search.step(self.search_input(encoded[0] if encoded is not None else None, log_probs))
        return self.finalize(search, encoded, audio_seconds, feats, second)

    def finalize(self, search, encoded, audio_seconds: float, feats=None, second_scorer=None) -> Result:
        """The final result of one segment: its n-best, rescored by the mode's second pass.

        ``feats`` (the segment's normalized features) feed the Whisper second pass, which
        re-encodes them with full context; ``encoded`` [1, T, D] feeds attention rescoring."""
        hyps = search.nbest()
        second = self.mode_spec.second_pass
        if not self.mode_spec.beam:
            return self.calibrated(build_result(hyps[0], self.tokenizer, self.frame_seconds,
                                                audio_seconds=audio_seconds))
        heard = bool(hyps and hyps[0].tokens)
        ranked_by_second_pass = True
        if second == "whisper" and feats is not None and feats.shape[0] > 0 and heard:
            # (a segment in which the first pass heard nothing is silence or noise: Whisper's
            # decoder would only hallucinate on it, "you you you")
            ranked, _ = self.second_pass.rescore(feats, hyps, second_scorer)
        elif second == "attention" and hyps and encoded is not None and encoded.shape[1] > 0:
            ranked = self.rescore_attention(hyps, encoded)
        elif second == "cascade" and heard and encoded is not None and encoded.shape[1] > 0:
            ranked = self.rescore_cascade(encoded, getattr(search, "scorer", None))
        else:
            ranked = [(h, h.score + h.fused_score) for h in hyps]
            ranked_by_second_pass = False
        if not ranked:
            return Result(text="")
        result = build_result(ranked[0][0], self.tokenizer, self.frame_seconds, ranked, audio_seconds=audio_seconds)
        if ranked_by_second_pass:
            result.decoded_by = second
            for segment in result.segments:
                segment.decoded_by = second
        return self.calibrated(result, hyps[0] if hyps else None, ranked[0][0].word_scores)

    def rescore_cascade(self, encoded, scorer=None) -> list[tuple[Hypothesis, float]]:
        """The cascaded second pass over one segment's first-pass frames: its CTC log-probs,
        then a prefix beam search with the first pass's LM and hotwords."""
        log_probs = self.cascade(encoded)
        search = self.new_search(scorer)
        search.step(log_probs)
        return [(h, h.score + h.fused_score) for h in search.nbest()]

    def calibrated(self, result: Result, first_pass=None, word_scores: tuple[float, ...] = ()) -> Result:
        """A final segment's result with calibrated confidences (the model directory's
        calibration.json, ``edgeasr.decoding.confidence``); unchanged without one."""
        if self.calibrator is not None and result.words:
            words = set(self.tokenizer.decode(first_pass.tokens).split()) if first_pass is not None else None
            self.calibrator.apply(result, words, word_scores)
        return result

    def transcribe_file(self, path, hotwords=None, raw_sample_rate: int | None = None, progress=None) -> Result:
        """Stream a file from disk a block at a time (``iter_audio_blocks``), resampled by the
        session: memory stays flat however long the file (a 2-hour file is 460 MB as float32).
        ``progress(seconds_done)`` is called after each block."""
        rate, blocks = iter_audio_blocks(path, raw_sample_rate=raw_sample_rate)
        session = self.stream(hotwords)
        done = 0
        for block in blocks:
            try:
                session.feed(block, sample_rate=rate)
            except AudioError as error:  # a bad sample deep in the file: name the file
                raise AudioError(path, error.problem) from None
            done += len(block)
            if progress is not None:
                progress(done / rate)
        return session.finish()

    def stream(self, hotwords=None, endpoint_rules: EndpointRules | None = None,
               defer_finals: bool = False) -> "StreamingSession":
        """A streaming session; ``hotwords`` (phrases, or a file) bias this stream only;
        ``endpoint_rules`` replace the recognizer's for it (the server's, for instance);
        ``defer_finals`` leaves each closed segment's second pass to ``finalize_pending``."""
        if self.chunk_size <= 0:
            raise EdgeAsrError("streaming needs a chunk size of at least 1 (got 0 = full context)")
        return StreamingSession(self, hotwords, endpoint_rules, defer_finals)


def _resolve_lm(option, model_directory):
    """The LM the option names: "auto" = the model directory's lm/ (if any), None = none."""
    if option is None or option == "none":
        return None
    if option == "auto":
        if model_directory is None or not (model_directory / MODEL_LM_DIR / "lm.arpa.gz").is_file():
            return None
        return _cached_lm(str(model_directory / MODEL_LM_DIR))
    return _cached_lm(str(option))


_LMS: dict = {}


def _cached_lm(path: str):
    """One loaded copy per LM file and process: the server's sessions and the CLI share it."""
    from edgeasr.lm import load_lm
    from edgeasr.lm.build import lm_file

    file = lm_file(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _LMS:
        _LMS[key] = load_lm(file)
    return _LMS[key]


def join_segments(segments: list[tuple[float, Result]], is_final: bool) -> Result:
    """One result from the results of consecutive segments, each with its start time (seconds).

    Words and token times are shifted by their segment's start; confidence is the word-weighted
    mean; the n-best of a multi-segment result is the joined best paths (one entry).
    """
    if len(segments) == 1 and segments[0][0] == 0.0:
        result = segments[0][1]
        result.is_final = is_final
        return result
    decoded_by = segments[-1][1].decoded_by if segments else "first_pass"
    texts = [r.text for _, r in segments if r.text]
    words, tokens, times, parts = [], [], [], []
    for offset, result in segments:
        words += [Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence) for w in result.words]
        tokens += result.tokens
        times += [round(t + offset, 3) for t in result.token_times]
        parts += shift_segments(result.segments, offset)
    confidence = (sum(w.confidence for w in words) / len(words)) if words else 0.0
    text = " ".join(texts)
    return Result(text=text, tokens=tokens, token_times=times, words=words, confidence=confidence,
                  nbest=[{"text": text, "score": sum(r.nbest[0]["score"] for _, r in segments if r.nbest)}] if text else [],
                  is_final=is_final, segments=parts, decoded_by=decoded_by)


def _append_segment(joined: Result, offset: float, result: Result, is_final: bool) -> Result:
    """``joined`` (whole-stream times) followed by ``result`` (times from ``offset``); only the
    new segment's words are shifted, the rest is shared."""
    words = [Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence) for w in result.words]
    all_words = joined.words + words
    confidence = (sum(w.confidence for w in words) + joined.confidence * len(joined.words)) / len(all_words) \
        if all_words else 0.0
    text = " ".join(t for t in (joined.text, result.text) if t)
    score = (joined.nbest[0]["score"] if joined.nbest else 0.0) + (result.nbest[0]["score"] if result.nbest else 0.0)
    return Result(text=text, tokens=joined.tokens + result.tokens,
                  token_times=joined.token_times + [round(t + offset, 3) for t in result.token_times],
                  words=all_words, confidence=confidence, nbest=[{"text": text, "score": score}] if text else [],
                  is_final=is_final, segments=joined.segments + shift_segments(result.segments, offset),
                  decoded_by=result.decoded_by)


@dataclass
class _ClosedSegment:
    """A segment the endpointer closed, with what its final result needs."""

    start: float
    end: float
    seconds: float
    speech: bool
    search: object
    encoded: object
    feats: object


class StreamingSession:
    """One stream being recognized as its audio arrives, over any backend's chunk runner.

    With endpoint segmentation (``endpoint_rules``), the stream is cut into segments at
    endpoints: each segment is finalized (second pass included) as soon as it ends, and the
    encoder, search and endpointer start afresh for the next one, so memory and compute stay flat
    however long the stream runs. ``is_endpoint()`` tells whether the last ``accept`` closed a
    segment; results always cover the whole stream; ``reset()`` starts a new stream in place.
    """

    def __init__(self, recognizer: DecodingCore, hotwords=None, endpoint_rules: EndpointRules | None = None,
                 defer_finals: bool = False) -> None:
        self.recognizer = recognizer
        #: queue closed segments instead of finalizing them inside ``feed``: a caller (the
        #: server) runs ``finalize_pending`` elsewhere, so the second pass of one segment never
        #: delays the first pass of the next (``finish`` still finalizes everything)
        self.defer_finals = defer_finals
        self._pending_lock, self._finalize_lock = threading.Lock(), threading.Lock()
        spec = recognizer.mode_spec
        self.first_scorer, self.second_scorer = recognizer.scorers(hotwords)
        self.greedy = not spec.beam
        # The joint second pass decodes each segment anew and never reads the first pass's
        # n-best, so without a fused scorer its partials come from the best path: a prefix beam
        # would only cost time. With an LM or hotwords the beam makes the partials read better.
        self.greedy_partials = self.greedy or (spec.second_pass == "whisper" and self.first_scorer is None
                                               and recognizer.options.second_pass_search == "joint")
        # Only rescoring needs the segment's encoder output (attention) or features (Whisper);
        # the CTC modes keep nothing per frame, so an endless stream has bounded memory.
        self.keep_encoded = spec.second_pass in ("attention", "cascade")
        self.runner = recognizer.chunk_runner(keep_inputs=spec.second_pass == "whisper")
        self.rules = endpoint_rules if endpoint_rules is not None else recognizer.endpoint_rules
        self.use_vad = bool(getattr(recognizer.options, "vad", False))
        #: silent blocks decoded ahead of the first voiced one: a word's soft onset, and the
        #: lead-in Whisper's second pass reads best with
        self.preroll_blocks = 2
        self.reset()

    def reset(self) -> None:
        """Forget everything and start a new stream (the model, LM and hotwords stay loaded)."""
        self.fbank = self.recognizer.frontend.stream()
        self.runner.reset()
        #: finalized segments: (start seconds, result)
        self.segments: list[tuple[float, Result]] = []
        self._joined: Result | None = None  # the finished segments with text, joined as they close
        #: finalized segments in which the first pass heard speech, in order: (start seconds, end
        #: seconds, result); times in each result are relative to its start (a server sends each
        #: as one "final"; its text is empty only where the second pass found no words)
        self.finals: list[tuple[float, float, Result]] = []
        #: segments with speech closed so far (finalized or queued): the next one's number
        self.speech_segments = 0
        self._pending: deque = deque()
        self.segment_start_frames = 0
        self.samples_seen = 0
        #: the callers' audio rate when it is not the model's (one streaming resampler per stream)
        self._input_rate: int | None = None
        self._resampler = None
        #: audio received but not yet a whole block (see _feed_model_rate)
        self._carry = np.zeros(0, dtype=np.float32)
        self.finished = False
        self.endpoint = False
        #: VAD (``use_vad``): a per-stream detector, the last silent block's features kept as
        #: pre-roll, whether the encoder starts clean (nothing fed since the last skip), seconds
        #: the encoder never saw
        self.vad = EnergyVad(self.recognizer.frontend.sample_rate) if self.use_vad else None
        self._held: deque = deque()  # (front-end frame index, features) of the last silent blocks
        self._clean = True
        #: front-end frames produced so far (where a segment starts after skipped blocks)
        self.feature_frames = 0
        self.skipped_seconds = 0.0
        self._new_segment()

    def _new_segment(self) -> None:
        rec = self.recognizer
        self.search = rec.new_search(self.first_scorer, greedy=self.greedy_partials)
        self.encoded: list = []
        #: trailing silence and frames decoded, for endpointing (edgeasr.decoding.endpoint)
        threshold = self.rules.blank_threshold if self.rules is not None else 0.9
        self.blank_tracker = BlankTracker(blank=rec.blank_id, threshold=threshold)
        #: the segmenter's probability that this segment's speech is over (its latest chunk)
        self.segment_ended = 0.0

    def _decode_frames(self, encoded, log_probs) -> None:
        """Encoder frames of this segment into the search, the endpointer and (rescoring) the store."""
        if log_probs is None:
            return
        if self.keep_encoded:
            self.encoded.append(encoded)
        self.search.step(self.recognizer.search_input(encoded, log_probs))
        self.blank_tracker.update(log_probs)
        if self.recognizer.segmenter is not None and encoded is not None and len(encoded):
            self.segment_ended = self.recognizer.segmenter(encoded)

    def _close_segment(self, final: bool) -> None:
        """Flush the encoder into this segment, finalize it (or queue it, ``defer_finals``), and
        start the next one."""
        self._decode_frames(*self.runner.finish())
        rec = self.recognizer
        start = self.segment_start_frames * rec.frame_seconds
        # The last segment runs to the end of the audio; earlier ones to their last frame.
        seconds = (self.samples_seen / rec.frontend.sample_rate - start if final
                   else self.blank_tracker.frames * rec.frame_seconds)
        self.segment_start_frames += self.blank_tracker.frames
        end = self.samples_seen / rec.frontend.sample_rate if final else self.segment_start
        closed = _ClosedSegment(start, max(start, end), seconds, self.blank_tracker.speech_frames > 0, self.search,
                                self.runner.concat(self.encoded), self.runner.segment_inputs())
        self.speech_segments += closed.speech
        if self.defer_finals and not final:  # (a silent one too: it must not jump the queue)
            with self._pending_lock:
                self._pending.append(closed)
        else:
            self.finalize_pending()  # earlier segments' finals come first
            self._finalize(closed)
        if not final:
            self.runner.reset()
            self._new_segment()

    def finalize_pending(self) -> int:
        """Finalize the segments ``defer_finals`` queued, in order; returns how many. Safe to run
        on another thread while ``feed`` goes on: it touches only closed segments and the lists
        of results."""
        done = 0
        with self._finalize_lock:
            while True:
                with self._pending_lock:
                    if not self._pending:
                        return done
                    closed = self._pending.popleft()
                self._finalize(closed)
                done += 1

    @property
    def pending_finals(self) -> int:
        """Closed segments whose final (second pass) has not run yet (``defer_finals``)."""
        return len(self._pending)

    def _finalize(self, closed: "_ClosedSegment") -> None:
        rec = self.recognizer
        if not closed.speech:
            result = Result(text="")  # silence or noise: best-path CTC heard nothing
        elif self.greedy:
            result = rec.calibrated(build_result(closed.search.nbest()[0], rec.tokenizer, rec.frame_seconds,
                                                 audio_seconds=closed.seconds))
        else:
            result = rec.finalize(closed.search, closed.encoded, closed.seconds, closed.feats, self.second_scorer)
        if result.text or not self.segments:
            self.segments.append((closed.start, result))
        if closed.speech:
            self.finals.append((closed.start, closed.end, result))
        if result.text:
            self._joined = (join_segments([(closed.start, result)], is_final=True) if self._joined is None
                            else _append_segment(self._joined, closed.start, result, True))

    @property
    def segment_start(self) -> float:
        """Stream time (seconds) at which the open segment began."""
        return self.segment_start_frames * self.recognizer.frame_seconds

    def open_segment(self) -> Result:
        """The open segment's best path so far, times relative to ``segment_start``."""
        return self._open_part(self.search.nbest(1)) or Result(text="", is_final=False)

    def is_endpoint(self) -> bool:
        """True when the last ``accept`` ended a segment (its text is final from now on)."""
        return self.endpoint

    def _open_part(self, best: list) -> Result | None:
        """The open segment's best path (times from its start), or None while it holds no speech."""
        if not (best and best[0].tokens and self.blank_tracker.speech_frames):
            return None
        rec = self.recognizer
        return build_result(best[0], rec.tokenizer, rec.frame_seconds, is_final=False)

    def _current(self, best: list, is_final: bool) -> Result:
        """The whole stream so far: finished segments and ``best``, the open segment's best path.

        The finished part is joined once per closed segment (``_joined``), so a partial costs
        the open segment plus list copies, not a rebuild of hours of words per call."""
        closed, open_part = self._joined, self._open_part(best)
        if open_part is None:
            if closed is None:
                return Result(text="", is_final=is_final)
            return Result(text=closed.text, tokens=list(closed.tokens), token_times=list(closed.token_times),
                          words=list(closed.words), confidence=closed.confidence, nbest=list(closed.nbest),
                          is_final=is_final, segments=list(closed.segments))
        if closed is None:
            return join_segments([(self.segment_start, open_part)], is_final=is_final)
        return _append_segment(closed, self.segment_start, open_part, is_final)

    def _model_samples(self, samples, sample_rate: int | None) -> np.ndarray:
        """One chunk as float32 mono at the model's rate (``edgeasr.audio.io.array_samples``);
        a chunk at another rate goes through one streaming resampler kept for the stream, so
        chunk boundaries leave no trace in the audio."""
        rate = self.recognizer.frontend.sample_rate
        samples = array_samples(samples, None, rate, "audio chunk")
        if sample_rate is None or sample_rate == rate and self._input_rate is None:
            if self._input_rate not in (None, rate):
                raise EdgeAsrError(f"this stream's audio is at {self._input_rate} Hz; pass sample_rate="
                                   f"{self._input_rate} with every chunk (one stream, one rate)")
            return samples
        if self._input_rate is None:
            import soxr

            self._input_rate = check_sample_rate("audio chunk", sample_rate)
            self._resampler = soxr.ResampleStream(self._input_rate, rate, 1, dtype="float32", quality="HQ")
        elif sample_rate != self._input_rate:
            raise EdgeAsrError(f"this stream's audio is at {self._input_rate} Hz, got a chunk at {sample_rate} Hz "
                               "(one stream, one rate: start a new stream for other audio)")
        return self._resampler.resample_chunk(samples)

    def feed(self, samples: np.ndarray, sample_rate: int | None = None) -> None:
        """Consume audio without building a result: for callers that read ``finals`` and
        ``open_segment()`` (the server), so a long stream's partials cost nothing here.

        Any amount may come at once (a whole file too): it is consumed a block at a time, with
        the endpointer consulted after each block, so segments are cut where they would be had
        the audio arrived live (and an encoder whose positions end never overflows)."""
        if self.finished:
            raise EdgeAsrError("this stream is finished; start a new one with recognizer.stream() or reset()")
        self._feed_model_rate(self._model_samples(samples, sample_rate))

    def _feed_model_rate(self, samples: np.ndarray) -> None:
        """Consume whole blocks (one encoder chunk of audio) at fixed stream positions, keeping
        the remainder for the next call: the endpointer is consulted at the same points however
        the audio was cut into calls, so segments (and text) do not depend on the caller's chunk
        sizes. (The encoder emits only whole chunks anyway: nothing is decoded later for it.)"""
        rec = self.recognizer
        block = max(1, int(round(rec.chunk_size * rec.frame_seconds * rec.frontend.sample_rate)))
        self.endpoint = False
        if self._carry.size:
            samples = np.concatenate([self._carry, samples])
        whole = samples.size - samples.size % block
        self._carry = samples[whole:].copy()
        for start in range(0, whole, block):
            self._consume_block(samples[start : start + block])

    def _consume_block(self, piece: np.ndarray) -> None:
        """One whole block. With the VAD, the front end still sees every block (its running
        statistics, Whisper's log-mel floor among them, stay those of the whole stream; it is a
        small share of the cost), but a block heard as silence while no speech is open does not
        reach the encoder: its features are held as pre-roll, and the block held before it is
        skipped for good; the encoder then starts afresh at the held block."""
        if self.vad is None:
            self._consume(piece, endpointing=True)
            return
        self.samples_seen += piece.size
        feats = self.fbank.accept(piece)
        frames_before = self.feature_frames
        self.feature_frames += int(feats.shape[0])
        if not self.vad.is_speech(piece) and self.blank_tracker.speech_frames == 0:
            rec = self.recognizer
            if not self._clean:  # the open segment heard no speech: nothing is lost
                self.runner.reset()
                self._new_segment()
                self._clean = True
            self._held.append((frames_before, feats))
            if len(self._held) > self.preroll_blocks:
                _, dropped = self._held.popleft()
                self.skipped_seconds += dropped.shape[0] * rec.frontend.frame_shift
            subsampling = max(1, int(round(rec.frame_seconds / rec.frontend.frame_shift)))
            self.segment_start_frames = self._held[0][0] // subsampling
            return
        while self._held:  # speech begins: decode it from the blocks before
            self._consume_features(self._held.popleft()[1], endpointing=False)
        self._consume_features(feats, endpointing=True)

    def _consume(self, piece: np.ndarray, endpointing: bool) -> None:
        self.samples_seen += piece.size
        feats = self.fbank.accept(piece)
        self.feature_frames += int(feats.shape[0])
        self._consume_features(feats, endpointing)

    def _consume_features(self, feats, endpointing: bool) -> None:
        rec = self.recognizer
        self._clean = False
        self._decode_frames(*self.runner.accept(feats))
        if endpointing and self.rules is not None:
            best = self.search.nbest(1)
            has_text = bool(best and best[0].tokens) and self.blank_tracker.speech_frames > 0
            if endpoint_reached(self.rules, self.blank_tracker, rec.frame_seconds, has_text) \
                    or (has_text and self._segmenter_says_ended()):
                self._close_segment(final=False)
                self.endpoint = True

    def _segmenter_says_ended(self) -> bool:
        options = self.recognizer.options
        return (self.segment_ended >= options.segmenter_threshold
                and self.blank_tracker.trailing_silence * self.recognizer.frame_seconds >= options.segmenter_min_silence)

    def accept(self, samples: np.ndarray, sample_rate: int | None = None) -> Result:
        """Feed audio (float32 in [-1, 1] or int16, mono or [samples, channels], at
        ``sample_rate``, default the model's); returns the partial result so far (the whole
        stream: finished segments and the open one's best path). See ``feed``."""
        self.feed(samples, sample_rate)
        return self._current(self.search.nbest(1), is_final=False)

    def finish(self) -> Result:
        """No more audio: flush everything and return the final (rescored) result."""
        if self.finished:
            raise EdgeAsrError("this stream is already finished")
        if self._resampler is not None:  # the resampler's delayed tail belongs to this stream
            self._feed_model_rate(self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        while self._held:  # silent blocks nothing followed: skipped
            self.skipped_seconds += self._held.popleft()[1].shape[0] * self.recognizer.frontend.frame_shift
        if self._carry.size:  # the last, partial block
            self._consume(self._carry, endpointing=False)
            self._carry = self._carry[:0]
        self.finished = True
        self._decode_frames(*self.runner.accept(self.fbank.finish()))
        self._close_segment(final=True)
        parts = [(s, r) for s, r in self.segments if r.text] or self.segments[-1:]
        return join_segments(parts, is_final=True)

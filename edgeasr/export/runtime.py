"""Streaming recognition with ONNX Runtime from an exported model directory, without torch.

``OnnxRecognizer.load(dir)`` reads ``encoder.onnx`` (or ``encoder.int8.onnx`` with
``int8=True``), ``decoder.onnx``, ``metadata.json`` and the tokenizer written by
``edgeasr.export.onnx.export_onnx``. It streams exactly like ``Recognizer``: the same streaming
fbank and the same ``DecodingCore`` (modes, search with LM and hotwords, endpointing, result
building), with the encoder chunk and the rescoring decoder run by onnxruntime. Softmax attention caches are trimmed to the exported left context after every
chunk, so memory stays bounded when the left context is limited.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeasr.audio.fbank import FbankOptions
from edgeasr.audio.io import model_input
from edgeasr.audio.whisper_mel import WhisperMelOptions
from edgeasr.decoding.ctc import Hypothesis
from edgeasr.decoding.core import DecodeOptions, DecodingCore, segmenter_left_out
from edgeasr.decoding.modes import FIRST_PASS_ONLY, MODES
from edgeasr.decoding.result import Result
from edgeasr.errors import EdgeAsrError
from edgeasr.text.tokenizer import Tokenizer

#: the metadata format of a Whisper-encoder export (edgeasr.export.whisper_onnx; kept here
#: so the runtime never imports torch)
WHISPER_FORMAT = "edgeasr-onnx-whisper-streaming"


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EdgeAsrError(f"{path}: not a usable ONNX graph ({detail[:200]})") from None


class OnnxChunkRunner:
    """The ONNX Runtime backend's streaming encoder: feature windows through encoder.onnx with
    its caches, attention caches trimmed to the exported left context after every chunk."""

    def __init__(self, recognizer: "OnnxRecognizer", keep_inputs: bool = False) -> None:
        self.rec = recognizer
        #: keep the segment's raw features for a second pass that re-encodes them (a block-plan
        #: first pass in front of a Whisper export's second pass, ``--first-pass``)
        self.keep_inputs = keep_inputs
        self.inputs: list[np.ndarray] = []
        meta = recognizer.meta
        self.window, self.stride = meta["window"], meta["stride"]
        self.max_left = meta["max_left_frames"]
        self.grows = [entry["att"]["grows"] for entry in meta["layers"] if "att" in entry]
        self.mel_bins = meta["features"].get("num_mel_bins", 80)
        self.reset()

    def reset(self) -> None:
        self.pending = np.zeros((0, self.mel_bins), dtype=np.float32)
        self.caches = self.rec.initial_caches()
        self.inputs = []

    def _run(self, window: np.ndarray):
        rec = self.rec
        outputs = rec.encoder.run(None, {"feats": window[None], **dict(zip(rec.cache_inputs, self.caches))})
        encoded, log_probs, new_caches = outputs[0][0], outputs[1][0], outputs[2:]
        if self.max_left >= 0:
            att_index = 0
            for position, name in enumerate(rec.cache_inputs):
                if name.startswith("att_cache"):
                    if self.grows[att_index]:
                        cache = new_caches[position]
                        new_caches[position] = cache[:, :, max(0, cache.shape[2] - self.max_left) :]
                    att_index += 1
        self.caches = list(new_caches)
        return encoded, log_probs

    @staticmethod
    def _joined(outputs: list):
        if not outputs:
            return None, None
        return np.concatenate([e for e, _ in outputs]), np.concatenate([lp for _, lp in outputs])

    def accept(self, feats: np.ndarray):
        if self.keep_inputs and len(feats):
            self.inputs.append(np.asarray(feats, dtype=np.float32))
        self.pending = np.concatenate([self.pending, feats])
        outputs = []
        while self.pending.shape[0] >= self.window:
            outputs.append(self._run(self.pending[: self.window]))
            self.pending = self.pending[self.stride :]
        return self._joined(outputs)

    def finish(self):
        outputs = []
        if self.pending.shape[0] >= self.rec.meta["right_context"] + 1:
            outputs.append(self._run(self.pending))
        self.pending = self.pending[:0]
        return self._joined(outputs)

    def segment_inputs(self):
        """The segment's raw features, kept when a Whisper second pass re-encodes them."""
        return np.concatenate(self.inputs) if self.inputs else None

    @staticmethod
    def concat(frames: list):
        return np.concatenate(frames)[None] if frames else None


class WhisperOnnxChunkRunner:
    """The streaming first pass of a Whisper-encoder export (``edgeasr.export.whisper_onnx``):
    mel windows of 2k + 3 frames advancing by 2k, the conv pads supplied as zero frames and the
    stem mask, positions from the frames emitted, key/value caches trimmed to the left context."""

    def __init__(self, recognizer: "OnnxRecognizer", keep_inputs: bool = False) -> None:
        self.rec = recognizer
        self.keep_inputs = keep_inputs
        self.inputs: list[np.ndarray] = []  # the segment's mel frames, for the second pass
        meta = recognizer.meta
        self.chunk, self.max_left = meta["chunk_size"], meta["max_left_frames"]
        self.bins = meta["features"].get("num_mel_bins", 80)
        self.cache_shape = (1, meta["num_heads"], 0, meta["d_model"] // meta["num_heads"])
        self.reset()

    def reset(self) -> None:
        self.mel = np.zeros((2, self.bins), dtype=np.float32)  # conv1's left pad frames (-2, -1)
        self.mel_frames = 0  # real mel frames received
        self.emitted = 0  # encoder frames out: the next chunk's first position
        self.caches = [np.zeros(self.cache_shape, dtype=np.float32) for _ in self.rec.cache_inputs]
        self.inputs = []

    def _run(self, window: np.ndarray, mask: np.ndarray):
        rec = self.rec
        feeds = {"mel": window[None], "stem_mask": mask[None], "offset": np.array([self.emitted], dtype=np.int64),
                 **dict(zip(rec.cache_inputs, self.caches))}
        outputs = rec.encoder.run(None, feeds)
        encoded, log_probs, caches = outputs[0][0], outputs[1][0], outputs[2:]
        if self.max_left >= 0:
            caches = [c[:, :, max(0, c.shape[2] - self.max_left) :] for c in caches]
        self.caches = list(caches)
        self.emitted += encoded.shape[0]
        return encoded, log_probs

    def _mask(self, length: int, final: bool) -> np.ndarray:
        """The window's conv1 outputs stand for positions 2s-1 ..; position -1 and (at the end)
        positions >= N are conv2's zero pads, not conv1 of zero frames."""
        index = 2 * self.emitted - 1 + np.arange(length)
        valid = (index >= 0) & (index < self.mel_frames) if final else index >= 0
        return valid.astype(np.float32)

    def accept(self, feats: np.ndarray):
        feats = np.asarray(feats, dtype=np.float32)
        if self.keep_inputs and len(feats):
            self.inputs.append(feats)
        self.mel = np.concatenate([self.mel, feats])
        self.mel_frames += len(feats)
        window, outputs = 2 * self.chunk + 3, []
        while self.mel.shape[0] >= window:
            outputs.append(self._run(self.mel[:window], self._mask(window - 2, final=False)))
            self.mel = self.mel[2 * self.chunk :]
        return OnnxChunkRunner._joined(outputs)

    def finish(self):
        remaining = (self.mel_frames + 1) // 2 - self.emitted
        if not self.mel_frames or remaining <= 0:
            return None, None
        window = np.zeros((2 * remaining + 3, self.bins), dtype=np.float32)  # conv1's right pad: zeros
        window[: self.mel.shape[0]] = self.mel
        self.mel = self.mel[:0]
        return OnnxChunkRunner._joined([self._run(window, self._mask(window.shape[0] - 2, final=True))])

    #: the segment's log-mel frames [N, 80] (normalized inside encoder_full.onnx)
    segment_inputs = OnnxChunkRunner.segment_inputs
    concat = staticmethod(OnnxChunkRunner.concat)


class OnnxDecoderSteps:
    """``edgeasr.decoding.joint_whisper.DecoderSteps`` over decoder_cross.onnx and
    decoder_step.onnx: the same joint search as torch, on ONNX Runtime."""

    def __init__(self, cross_session, step_session, meta: dict) -> None:
        self.cross_session, self.step_session = cross_session, step_session
        self.eot = meta["whisper_eot"]
        self.vocab_size = meta["whisper_vocab_size"]
        self.max_positions = meta["whisper_max_positions"]
        names = [i.name for i in step_session.get_inputs()]
        layers = meta["whisper_layers"]
        self.cross_names = names[4 : 4 + 2 * layers]
        self.cache_names = names[4 + 2 * layers :]
        self.empty_cache = (1, meta["whisper_heads"], 0, meta["whisper_d_model"] // meta["whisper_heads"])

    def cross(self, encoded: np.ndarray) -> list[np.ndarray]:
        return self.cross_session.run(None, {"encoded": np.ascontiguousarray(encoded[:1], dtype=np.float32)})

    def step(self, tokens: np.ndarray, cross, caches, offset: int, token_bias: np.ndarray, top_k: int):
        if caches is None:
            caches = [np.zeros(self.empty_cache, dtype=np.float32) for _ in self.cache_names]
        feeds = {"tokens": tokens, "offset": np.array([offset], dtype=np.int64),
                 "token_bias": token_bias, "top_k": np.array([top_k], dtype=np.int64),
                 **dict(zip(self.cross_names, cross)), **dict(zip(self.cache_names, caches))}
        values, tokens_out, eot, *caches = self.step_session.run(None, feeds)
        return values, tokens_out, eot, caches

    def select(self, caches, index: np.ndarray):
        return [np.take(c, index, axis=0) for c in caches]


class OnnxWhisperBackend:
    """The Whisper second pass's model on ONNX Runtime (``edgeasr.decoding.whisper_rescoring``)."""

    model = None  # no torch model: the joint search only

    def __init__(self, directory: Path, suffix: str, decoder_suffix: str, threads: int, meta: dict) -> None:
        self.blank = meta["blank_id"]
        self.full = _session(directory / f"encoder_full{suffix}", threads)
        self.steps = OnnxDecoderSteps(_session(directory / f"decoder_cross{decoder_suffix}", threads),
                                      _session(directory / f"decoder_step{decoder_suffix}", threads), meta)

    def encode(self, feats: np.ndarray, speech_frames: int | None = None):
        """As ``TorchWhisperBackend.encode``: with a padded window, the CTC log-probs and the
        segment's own frames (which a transducer reads) come from a second run over it alone."""
        feats = np.asarray(feats, dtype=np.float32)
        encoded, log_probs = self.full.run(None, {"mel": feats[None]})
        own = encoded
        if speech_frames is not None and speech_frames < feats.shape[0]:
            own, log_probs = self.full.run(None, {"mel": feats[None, :speech_frames]})
        return encoded, log_probs[0], own[0]


class OnnxTransducerRunner:
    """The exported transducer graphs (edgeasr.export.onnx.export_transducer) behind the runner
    interface of ``edgeasr.decoding.transducer_search``."""

    def __init__(self, directory: Path, suffix: str, threads: int, meta: dict) -> None:
        self.context, self.blank = meta["context"], meta["blank"]
        sessions = {}
        for name in ("transducer_project", "transducer_predict", "transducer_join"):
            path = directory / f"{name}{suffix}"
            if suffix == ".int4.onnx" and not path.exists():  # no 4-bit matrix in it: its int8 twin
                path = directory / f"{name}.int8.onnx"
            if not path.exists():
                raise EdgeAsrError(f"{directory}: missing {path.name} (the metadata names a transducer head)")
            sessions[name] = _session(path, threads)
        self._project, self._predict, self._join = (sessions[n] for n in sessions)

    def project(self, frames) -> np.ndarray:
        return self._project.run(None, {"frames": np.asarray(frames, dtype=np.float32)})[0]

    def predict(self, contexts) -> np.ndarray:
        return self._predict.run(None, {"contexts": np.asarray(contexts, dtype=np.int64)})[0]

    def join(self, frame, predicted) -> np.ndarray:
        return self._join.run(None, {"frame": np.asarray(frame, dtype=np.float32),
                                     "predicted": np.asarray(predicted, dtype=np.float32)})[0]


class OnnxRecognizer(DecodingCore):
    """An exported model on ONNX Runtime, decoded by the same ``DecodingCore`` as torch."""

    def __init__(self, directory: str | os.PathLike[str], int8: bool = False, options: DecodeOptions | None = None,
                 threads: int = 1, int4: bool = False, **option_overrides) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "metadata.json"
        if not meta_path.exists():
            raise EdgeAsrError(f"{self.directory}: not an exported ONNX model (missing metadata.json)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EdgeAsrError(f"{meta_path}: not readable JSON ({error})") from None
        missing = [k for k in ("chunk_size", "window", "stride", "layers", "features", "blank_id",
                               "subsampling_rate", "frame_shift_ms", "right_context", "max_left_frames")
                   if not isinstance(self.meta, dict) or k not in self.meta]
        if missing:
            raise EdgeAsrError(f"{meta_path}: not an edgeasr export's metadata (missing {', '.join(missing)})")
        #: int4: 4-bit decoder graphs, and 4-bit encoder graphs where the export has them (a model
        #: trained to 4 bits: edgeasr.export.int4), else the int8 encoder graphs
        suffix = heads_suffix = ".int8.onnx" if (int8 or int4) else ".onnx"
        decoder_suffix = ".int4.onnx" if int4 else suffix
        if int4 and (self.directory / "encoder.int4.onnx").exists():
            suffix = ".int4.onnx"
        self.precision = "int4" if int4 else "int8" if int8 else "float"
        encoder_path = self.directory / f"encoder{suffix}"
        if not encoder_path.exists():
            raise EdgeAsrError(f"{self.directory}: missing {encoder_path.name} (export with --int8 for int8 graphs)")
        self.encoder = _session(encoder_path, threads)
        #: which encoder graph runs (int4: the 4-bit one where the export has it)
        self.encoder_graph = encoder_path.name
        if int4 and not any(self.directory.glob("*.int4.onnx")):
            raise EdgeAsrError(f"{self.directory}: no 4-bit graphs (export with --int4)")
        decoder_path = self.directory / f"decoder{decoder_suffix}"
        self.decoder = _session(decoder_path, threads) if decoder_path.exists() else None
        self.tokenizer = Tokenizer.load(self.directory / "tokenizer")
        self.whisper = self.meta.get("format") == WHISPER_FORMAT
        # the front end the export names: a Whisper encoder's, or a block-plan encoder on either
        # (a fast first pass distilled from the Whisper default reads its log-mel features)
        features = WhisperMelOptions if self.meta["features"].get("kind") == "whisper_mel" else FbankOptions
        self.features = features.from_dict(self.meta["features"])
        self.frontend = self.features
        self.sample_rate = self.features.sample_rate
        self.frame_seconds = self.meta["subsampling_rate"] * self.meta["frame_shift_ms"] / 1000.0
        self.cache_inputs = [i.name for i in self.encoder.get_inputs()][3 if self.whisper else 1 :]
        options = options or DecodeOptions()
        for name, value in option_overrides.items():
            if not hasattr(options, name):
                raise TypeError(f"unknown decoding option {name!r}")
            setattr(options, name, value)
        has_whisper = self.whisper and self.meta.get("second_pass") == "whisper"
        if self.whisper and MODES.get(options.mode) is not None and MODES[options.mode].second_pass == "whisper" \
                and not has_whisper:
            raise EdgeAsrError(f"{self.directory}: this export carries the streaming first pass only "
                               f"(re-export it with this edgeasr for {options.mode} on ONNX Runtime)")
        if options.second_pass_model is not None:
            raise EdgeAsrError("--second-pass-model runs with the torch backend (ONNX Runtime runs the export's own second pass)")
        if options.reverse_weight > 0:
            raise EdgeAsrError("--reverse-weight: the ONNX export carries the left-to-right decoder only")
        # The export's model directory is where an LM travels with it (lm/ beside the graphs).
        transducer = None
        if isinstance(self.meta.get("transducer"), dict) and MODES.get(options.mode) is not None \
                and MODES[options.mode].head == "transducer":
            # int4: the head's exact 4-bit graphs where the export has them (a model trained to 4 bits)
            own = ".int4.onnx" if int4 and self.meta["transducer"].get("int4_matrices") else heads_suffix
            transducer = OnnxTransducerRunner(self.directory, own, threads, self.meta["transducer"])
        segmenter = None
        if isinstance(self.meta.get("segmenter"), dict) and options.segmenter is not False \
                and not segmenter_left_out(options):
            graph = _session(self.directory / self.meta["segmenter"]["graph"], threads)
            segmenter = lambda encoded: float(graph.run(None, {"frames": np.asarray(encoded[-1:], dtype=np.float32)})[0][-1])  # noqa: E731
        cascade = self._cascade(options, heads_suffix, threads)
        #: the export whose encoder streams the first pass: this one, or ``options.first_pass``'s
        self.first_export = self if options.first_pass is None else self._first_pass_export(
            options.first_pass, int8 or int4, threads, transducer, segmenter, cascade)
        self._setup_decoding(options, self.decoder is not None, has_whisper, self.directory, self.meta["blank_id"],
                             self.meta.get("max_frames"), transducer=transducer, segmenter=segmenter, cascade=cascade)
        if self.mode_spec.second_pass == "whisper":
            if options.second_pass_search != "joint":
                raise EdgeAsrError("--second-pass rescore runs with the torch backend; ONNX Runtime runs 'joint'")
            from edgeasr.decoding.whisper_rescoring import WhisperSecondPass
            from edgeasr.text.whisper_tokenizer import WhisperTokenizer

            self.second_pass = WhisperSecondPass(
                OnnxWhisperBackend(self.directory, suffix, decoder_suffix, threads, self.meta), self.tokenizer,
                WhisperTokenizer(self.directory / "whisper_tokenizer.json", eot=self.meta["whisper_eot"]),
                self.meta["whisper_prompt"], ctc_weight=options.whisper_ctc_weight,
                length_bonus=options.whisper_length_bonus, beam_size=options.beam_size, search="joint",
                window_frames=round(options.second_pass_window * 1000.0 / self.meta["frame_shift_ms"]),
                silence_below_max=getattr(self.frontend, "floor_range", 8.0) / 4, pad=options.second_pass_pad,
                transducer=self.transducer if self.mode_spec.head == "transducer" else None,
                transducer_weight=options.second_pass_transducer_weight)

    def _cascade(self, options: DecodeOptions, suffix: str, threads: int):
        """The export's cascade sub-model that ``cascade_rescoring`` (and ``--cascade-layers``)
        asks for, as a callable from a segment's first-pass frames [1, T, D] to log-probs [T, V];
        None when the mode does not use it. Problems are one-line errors at load."""
        meta = self.meta.get("cascade")
        if not isinstance(meta, dict):
            if options.cascade_layers is not None:
                raise EdgeAsrError("--cascade-layers applies to --mode cascade_rescoring on a model with a cascade")
            return None
        wanted = MODES.get(options.mode) is not None and MODES[options.mode].second_pass == "cascade"
        if options.cascade_layers is not None and not wanted:
            raise EdgeAsrError("--cascade-layers applies to --mode cascade_rescoring on a model with a cascade")
        if not wanted:
            return None
        layers = options.cascade_layers or max(meta["exit_layers"])
        if layers not in meta["exit_layers"]:
            raise EdgeAsrError(f"--cascade-layers {layers}: this cascade has sub-models of "
                               f"{', '.join(map(str, meta['exit_layers']))} layers")
        path = self.directory / f"{meta['graphs'][str(layers)]}{suffix}"
        if not path.exists():
            raise EdgeAsrError(f"{self.directory}: missing {path.name} (the metadata names a cascade)")
        graph = _session(path, threads)
        return lambda encoded: graph.run(None, {"frames": np.asarray(encoded, dtype=np.float32)})[0]

    def _first_pass_export(self, directory: str, int8: bool, threads: int, *heads) -> "OnnxRecognizer":
        """A separate first pass (a fast student's export, ``--first-pass``), checked against this
        export where the two must agree: it streams the partials and endpoints, this export's
        second pass re-encodes the same features for the finals."""
        from edgeasr.api import is_onnx_export

        if not is_onnx_export(directory):
            raise EdgeAsrError(f"--first-pass {directory}: not an ONNX export (with the onnx backend, give an "
                               "export or a model directory to load_model)")
        first = OnnxRecognizer(directory, int8=int8, threads=threads, mode=FIRST_PASS_ONLY, lm=None)
        problem = None
        if first.whisper:
            problem = "is a Whisper-encoder export (the first pass is meant to be a fast block-plan one)"
        elif first.meta["features"] != self.meta["features"]:
            problem = f"computes other features ({first.meta['features']})"
        elif first.frame_seconds != self.frame_seconds:
            problem = f"emits a frame every {first.frame_seconds * 1000:g} ms, this export every {self.frame_seconds * 1000:g}"
        elif list(first.tokenizer.units) != list(self.tokenizer.units):
            problem = "has another tokenizer (its CTC units must be this export's)"
        elif first.chunk_size != self.chunk_size:
            problem = f"streams {first.chunk_size}-frame chunks, this export {self.chunk_size} (re-export it with --chunk-size {self.chunk_size})"
        elif any(head is not None for head in heads):
            problem = "cannot stand in for this export's first pass: its transducer or cascade reads it"
        if problem:
            raise EdgeAsrError(f"--first-pass {directory}: this first pass {problem}")
        return first

    @property
    def chunk_size(self) -> int:
        """Fixed at export (the ``Recognizer`` property of the same name, for shared callers)."""
        return self.meta["chunk_size"]

    @property
    def num_left_chunks(self) -> int:
        """-1 when the export keeps all history (its attention caches grow), else its chunks."""
        return -1 if self.meta["max_left_frames"] < 0 else max(0, self.meta["max_left_frames"] // self.chunk_size)

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

    def chunk_runner(self, keep_inputs: bool = False):
        first = self.first_export
        return WhisperOnnxChunkRunner(first, keep_inputs) if first.whisper else OnnxChunkRunner(first, keep_inputs)

    def transcribe(self, audio, hotwords=None, sample_rate: int | None = None) -> Result:
        """A file path, or an array at ``sample_rate`` (default: the model's; int16 is scaled,
        channels are averaged, other rates resampled), recognized as one stream."""
        if isinstance(audio, (str, os.PathLike)):
            return self.transcribe_file(audio, hotwords, raw_sample_rate=sample_rate)
        samples = model_input(audio, sample_rate, self.features.sample_rate)
        session = self.stream(hotwords)
        session.accept(samples)
        return session.finish()

    def rescore_attention(self, hyps: list[Hypothesis], encoded: np.ndarray) -> list[tuple[Hypothesis, float]]:
        """Attention rescoring with decoder.onnx, as ``edgeasr.decoding.rescoring`` does in torch."""
        encoded = encoded[0]
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
        weight = self.options.ctc_weight
        ranked = [(hyp, float(att) + weight * hyp.score + hyp.fused_score) for hyp, att in zip(hyps, scores)]
        return sorted(ranked, key=lambda item: item[1], reverse=True)

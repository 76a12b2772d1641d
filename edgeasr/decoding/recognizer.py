"""Audio in, text out: offline and streaming recognition with one model.

``Recognizer.stream()`` returns a session fed with audio chunks of any size. Each chunk goes
through the streaming fbank, then the encoder chunk by chunk with caches, then the incremental
CTC prefix beam search; ``finish`` flushes the last partial chunk (so the last words are never
dropped) and, in attention-rescoring mode, rescores the n-best with the attention decoder over
the whole utterance's encoder output.

Offline recognition runs the same model over the whole utterance under the same chunk mask, and
gives the same text (the streaming encoder equals the masked full-sequence encoder).

``DecodingCore`` is everything between encoder frames and a ``Result`` — the mode, the search
with its fused LM and hotwords, endpointing, the second pass — shared by this torch
``Recognizer`` and by ``edgeasr.export.runtime.OnnxRecognizer``: each backend only supplies a
chunk runner (features in, encoder frames and CTC log-probs out) and its attention rescorer,
and ``StreamingSession`` streams over either.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from edgeasr.audio.io import model_input
from edgeasr.decoding.core import (  # noqa: F401 - re-exported: the public decoding API
    MODES,
    DecodeOptions,
    DecodingCore,
    StreamingSession,
    join_segments,
    segmenter_left_out,
)
from edgeasr.decoding.result import Result
from edgeasr.errors import EdgeAsrError
from edgeasr.model.package import PackagedModel, load_model_dir


class TorchChunkRunner:
    """The torch backend's streaming encoder: features in, (encoder frames, CTC log-probs) out."""

    def __init__(self, recognizer: "Recognizer", keep_inputs: bool) -> None:
        self.model = recognizer.first_model
        self.encoder = self.model.encoder.stream(recognizer.chunk_size, recognizer.num_left_chunks)
        self.keep_inputs = keep_inputs
        self.inputs: list[torch.Tensor] = []

    def _frames(self, out: torch.Tensor):
        if not out.size(0):
            return None, None
        return out, self.model.ctc_log_probs(out)

    @torch.no_grad()
    def accept(self, feats: np.ndarray):
        feats = self.model.normalize(torch.from_numpy(feats))
        if not feats.numel():
            return None, None
        if self.keep_inputs:
            self.inputs.append(feats)
        return self._frames(self.encoder.accept(feats))

    @torch.no_grad()
    def finish(self):
        return self._frames(self.encoder.finish())

    def reset(self) -> None:
        self.encoder.reset()
        self.inputs = []

    def segment_inputs(self):
        return torch.cat(self.inputs) if self.inputs else None

    @staticmethod
    def concat(frames: list):
        return torch.cat(frames).unsqueeze(0) if frames else None


def _inference_form(model, options: DecodeOptions):
    """The model as decoding runs it: eval mode, BatchNorms folded (FusionFormer; a no-op
    otherwise), and with ``--dynamic-int8`` its Linear layers as torch dynamic int8."""
    model = model.eval()
    model.fuse()
    if options.dynamic_int8:
        if model.config.quantization is not None:
            raise EdgeAsrError("--dynamic-int8 applies to float models; this one is already quantized")
        from edgeasr.quant.dynamic import dynamic_int8

        model = dynamic_int8(model)
    return model


class Recognizer(DecodingCore):
    def __init__(self, packaged: PackagedModel, options: DecodeOptions | None = None) -> None:
        self.packaged = packaged
        self.tokenizer = packaged.tokenizer
        options = options or DecodeOptions()
        options.validate()
        self.model = _inference_form(packaged.model, options)
        if options.gate_threshold is not None:
            if getattr(self.model.encoder, "dynamic", None) is None:
                raise EdgeAsrError("--gate-threshold applies to dynamic-compute models (I3D, amortized); this one has no gates")
            self.model.encoder.dynamic.config.threshold = options.gate_threshold
        self.frontend = packaged.features
        self.frame_seconds = self.model.encoder.subsampling_rate * self.frontend.frame_shift
        #: the model of the streaming first pass: this one, or ``options.first_pass``'s
        self.first_model = self.model if options.first_pass is None else self._first_pass_model(options.first_pass, options)
        has_segmenter = getattr(self.model, "segmenter", None) is not None and not segmenter_left_out(options)
        self._setup_decoding(options, self.model.decoder is not None, self.model.whisper_decoder is not None,
                             packaged.directory, self.model.blank_id, getattr(self.model.encoder, "max_frames", None),
                             transducer=self.model.transducer.runner() if getattr(self.model, "transducer", None) is not None else None,
                             cascade=self._run_cascade if getattr(self.model, "cascade", None) is not None else None,
                             segmenter=self._segment_ended if has_segmenter else None)
        if options.cascade_layers is not None:  # checked at load, not at the first segment's end
            cascade = getattr(self.model, "cascade", None)
            if self.mode != "cascade_rescoring" or cascade is None:
                raise EdgeAsrError("--cascade-layers applies to --mode cascade_rescoring on a model with a cascade")
            if options.cascade_layers not in cascade.config.exit_layers:
                raise EdgeAsrError(f"--cascade-layers {options.cascade_layers}: this cascade has sub-models of "
                                   f"{', '.join(map(str, cascade.config.exit_layers))} layers")
        if self.mode_spec.second_pass == "whisper":
            from edgeasr.decoding.whisper_rescoring import TorchWhisperBackend, WhisperSecondPass

            writer = packaged if options.second_pass_model is None else self._second_pass_model(options)
            self.second_pass = WhisperSecondPass(
                TorchWhisperBackend(self.model, writer=None if writer is packaged else writer.model),
                packaged.tokenizer, writer.whisper_tokenizer, writer.whisper_prompt,
                ctc_weight=options.whisper_ctc_weight, length_bonus=options.whisper_length_bonus,
                beam_size=options.beam_size, search=options.second_pass_search,
                window_frames=round(options.second_pass_window / self.frontend.frame_shift),
                silence_below_max=getattr(self.frontend, "floor_range", 8.0) / 4, pad=options.second_pass_pad,
                transducer=self.transducer if self.mode_spec.head == "transducer" else None,
                transducer_weight=options.second_pass_transducer_weight)

    def _reads_like_this_model(self, other: PackagedModel) -> str | None:
        """Why another model cannot read the same segments as this one (front end, frame rate,
        CMVN), or None: a separate first pass and a separate second-pass writer both must."""
        if other.features.kind != self.frontend.kind:
            return f"reads {other.features.kind} features, this model {self.frontend.kind}"
        if other.features.to_dict() != self.frontend.to_dict():
            return f"computes its {other.features.kind} features with other settings ({other.features.to_dict()})"
        if other.model.encoder.subsampling_rate != self.model.encoder.subsampling_rate:
            return (f"emits a frame every {other.model.encoder.subsampling_rate} feature frames, this model every "
                    f"{self.model.encoder.subsampling_rate}")
        if not (torch.equal(other.model.cmvn_mean, self.model.cmvn_mean)
                and torch.equal(other.model.cmvn_istd, self.model.cmvn_istd)):
            return "normalizes its features otherwise (CMVN), and the other pass reads the same features"
        return None

    def _first_pass_model(self, directory: str, options: DecodeOptions):
        """A separate first-pass model, checked against this one where the two must agree."""
        other = load_model_dir(directory)
        problem = self._reads_like_this_model(other)
        if problem is None and list(other.tokenizer.units) != list(self.tokenizer.units):
            problem = "has another tokenizer (its CTC units must be this model's)"
        elif problem is None and any(getattr(self.model, part, None) is not None for part in ("transducer", "cascade")):
            problem = "cannot stand in for this model's first pass: its transducer or cascade reads it"
        if problem:
            raise EdgeAsrError(f"--first-pass {directory}: this first pass {problem}")
        return _inference_form(other.model, options)

    def _second_pass_model(self, options: DecodeOptions) -> PackagedModel:
        """The Whisper that writes the finals in place of this model's (``--second-pass-model``):
        a model directory, or ``whisper:NAME`` imported once (linked) into ``$EDGEASR_CACHE/whisper/``."""
        from edgeasr.api import cache_root
        from edgeasr.model.whisper_import import PACKAGED_PREFIX, packaged_model_dir

        name = options.second_pass_model
        other = load_model_dir(packaged_model_dir(name, cache_root() / "whisper" / name.removeprefix(PACKAGED_PREFIX)))
        problem = "has no Whisper decoder" if other.model.whisper_decoder is None else self._reads_like_this_model(other)
        if problem:
            raise EdgeAsrError(f"--second-pass-model {name}: this model {problem}")
        other.model = _inference_form(other.model, options)
        return other

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

    def chunk_runner(self, keep_inputs: bool = False) -> TorchChunkRunner:
        return TorchChunkRunner(self, keep_inputs)

    @torch.no_grad()
    def _run_cascade(self, encoded) -> np.ndarray:
        """A segment's first-pass encoder frames [1, T, D] -> the cascade's CTC log-probs [T, V]."""
        return self.model.cascade_log_probs(encoded, layers=self.options.cascade_layers)[0].float().numpy()

    @torch.no_grad()
    def _segment_ended(self, encoded) -> float:
        """The segmenter's probability that the segment's speech is over by the chunk's last frame.
        The frame goes in as a [1, D] matrix: torch's dynamic int8 Linear (``--dynamic-int8``)
        refuses a lone vector."""
        return float(torch.sigmoid(self.model.segmenter(torch.as_tensor(encoded[-1:]).float()))[-1])

    def rescore_attention(self, hyps, encoded):
        from edgeasr.decoding.rescoring import attention_rescore

        return attention_rescore(self.model, hyps, encoded, self.options.ctc_weight, self.options.reverse_weight)

    @torch.no_grad()
    def transcribe(self, audio, streaming: bool | None = None, hotwords=None, sample_rate: int | None = None) -> Result:
        """Recognize a whole file, or an array at ``sample_rate`` (default: the model's; int16 is
        scaled, channels are averaged, other rates resampled); streams by default when the
        chunk size allows, so long audio is cut into segments at endpoints (``result.segments``)."""
        if streaming is None:
            streaming = self.chunk_size > 0
        if streaming and isinstance(audio, (str, os.PathLike)):
            return self.transcribe_file(audio, hotwords, raw_sample_rate=sample_rate)
        samples = model_input(audio, sample_rate, self.frontend.sample_rate)
        if streaming:
            session = self.stream(hotwords)
            session.accept(samples)
            return session.finish()
        return self.transcribe_offline(samples, hotwords)

    @torch.no_grad()
    def transcribe_offline(self, samples: np.ndarray, hotwords=None) -> Result:
        feats = self.first_model.normalize(self.frontend.compute(samples))
        self._check_segment_length(feats.size(0))
        encoded, _ = self.first_model.encoder(  # features are normalized above
            feats.unsqueeze(0), torch.tensor([feats.size(0)]), self.chunk_size, self.num_left_chunks
        )
        return self._decode(encoded, len(samples) / self.frontend.sample_rate, feats, self.scorers(hotwords))

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
        feats = [self.first_model.normalize(self.frontend.compute(samples)) for samples in batch]
        for f in feats:
            self._check_segment_length(f.size(0))
        lengths = torch.tensor([f.size(0) for f in feats])
        padded = torch.zeros(len(feats), int(lengths.max()), feats[0].size(1))
        for i, f in enumerate(feats):
            padded[i, : f.size(0)] = f
        # normalize() was applied per utterance above; encode the batch without a second one
        encoded, enc_lengths = self.first_model.encoder(padded, lengths, self.chunk_size, self.num_left_chunks)
        rate = self.frontend.sample_rate
        scorers = self.scorers()
        return [
            self._decode(encoded[i : i + 1, : int(enc_lengths[i])], len(samples) / rate, feats[i], scorers)
            for i, samples in enumerate(batch)
        ]

    def _decode(self, encoded: torch.Tensor, audio_seconds: float, feats: torch.Tensor | None = None,
                scorers=None) -> Result:
        log_probs = self.first_model.ctc_log_probs(encoded)[0]
        return self.decode_frames(log_probs, encoded, audio_seconds, feats, scorers)



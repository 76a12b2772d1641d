"""The ASR model, composed of parts: encoder, CTC head, attention decoder(s), and the U2 loss.

The encoder is picked by ``encoder.kind`` from ``ENCODERS``: ``blocks`` (edgeasr's own per-layer
block plan, the default, what every older config means) or ``whisper`` (a pretrained Whisper
encoder imported with ``edgeasr import whisper``). Both implement one interface: ``forward(feats,
lengths, chunk_size, num_left_chunks)`` under a chunk mask, ``stream(chunk_size, num_left_chunks)``
with caches, ``output_dim``, ``subsampling_rate``, ``dynamic`` (gates or None). Heads are optional
parts: the CTC head (a linear layer, or a small MLP with ``ctc_hidden``), edgeasr's attention
decoders, and Whisper's own decoder (``whisper_decoder``) used as a second pass.

loss = ctc_weight * CTC + (1 - ctc_weight) * attention, where the attention loss is label-smoothed
cross entropy, mixed from the left-to-right and right-to-left decoders by ``reverse_weight``.
Losses are summed over an utterance and averaged over the batch, as WeNet does, so long utterances
weigh more.

Chunk settings for training live here too: with ``dynamic_chunk`` each batch draws a chunk size
(full context half of the time), which is what lets one model serve every chunk size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgeasr.model.decoder import TransformerDecoder
from edgeasr.model.encoder import Encoder, EncoderConfig
from edgeasr.nn.mask import draw_chunk_size
from edgeasr.nn.norm import fuse_batch_norms

IGNORE_ID = -1
#: State-dict prefixes of what only training uses (layer-wise distillation's projections):
#: checkpoints keep them so a run resumes, model directories leave them out.
TRAINING_ONLY_PREFIXES = ("distill_projections.",)


def inference_state(state: dict) -> dict:
    """``state`` without the training-only tensors (see ``TRAINING_ONLY_PREFIXES``)."""
    return {name: value for name, value in state.items() if not name.startswith(TRAINING_ONLY_PREFIXES)}


@dataclass
class DecoderConfig:
    num_layers: int = 3
    reverse_layers: int = 0  # > 0 adds a right-to-left decoder (U2++)
    num_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1


def _whisper_encoder_parts():
    from edgeasr.model.whisper import WhisperEncoder, WhisperEncoderConfig

    return WhisperEncoderConfig, WhisperEncoder


def _block_encoder_parts():
    return EncoderConfig, Encoder


#: encoder kind -> a function returning (config class, module class); imported lazily.
ENCODERS = {"blocks": _block_encoder_parts, "whisper": _whisper_encoder_parts}


def encoder_config_from_dict(config: dict):
    config = dict(config)
    kind = config.pop("kind", "blocks")
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder kind '{kind}' (known: {', '.join(ENCODERS)})")
    config_class, _ = ENCODERS[kind]()
    return config_class.from_dict(config)


def encoder_kind(config) -> str:
    return "whisper" if type(config).__name__ == "WhisperEncoderConfig" else "blocks"


def build_encoder(config) -> nn.Module:
    _, module_class = ENCODERS[encoder_kind(config)]()
    return module_class(config)


@dataclass
class ModelConfig:
    vocab_size: int
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ctc_weight: float = 0.3
    reverse_weight: float = 0.0
    label_smoothing: float = 0.1
    # Training-time chunking: dynamic (random per batch) or a static chunk size (0 = full).
    dynamic_chunk: bool = True
    static_chunk_size: int = 0
    max_chunk_size: int = 25
    #: Dynamic left context: also draw how many chunks of history a batch may see.
    dynamic_left_chunks: bool = False
    #: Quantization-aware training (edgeasr.quant.qat.QuantConfig as a dict); None = float model.
    #: Stored with the model so a reload rebuilds the same fake-quant layers.
    quantization: dict | None = None
    #: Hidden units of an MLP CTC head (Linear, GELU, Linear); 0 = one linear layer. A frozen
    #: pretrained encoder needs the extra layer to map its features onto our units.
    ctc_hidden: int = 0
    #: Whisper's own decoder (edgeasr.model.whisper.WhisperDecoderConfig as a dict) as a second
    #: pass over a full-context re-encoding; None = no Whisper decoder.
    whisper_decoder: dict | None = None
    #: A transducer head (edgeasr.model.transducer: ``predictor_dim``, ``joint_dim``, ``context``)
    #: over the encoder beside the CTC head; None = none. Trained jointly with CTC (the CTC head
    #: also drives endpointing): loss = (1 - transducer_weight) * (CTC/attention loss) +
    #: transducer_weight * RNN-T loss.
    transducer: dict | None = None
    transducer_weight: float = 0.75
    #: A cascaded second-pass encoder (edgeasr.model.cascade: non-causal layers over the first
    #: pass's encoder frames, with their own CTC head); None = none. Its CTC loss, over the
    #: chunk-masked first pass as it streams: loss = (1 - cascade_weight) * loss +
    #: cascade_weight * cascade CTC.
    cascade: dict | None = None
    cascade_weight: float = 0.5
    #: An end-of-segment predictor on the first pass's encoder frames (edgeasr.model.segmenter:
    #: ``hidden``, ``margin``); None = none. Its loss is added: loss += segmenter_weight * BCE.
    segmenter: dict | None = None
    segmenter_weight: float = 1.0

    @classmethod
    def from_dict(cls, config: dict) -> "ModelConfig":
        config = dict(config)
        encoder = encoder_config_from_dict(config.pop("encoder", {}))
        decoder = DecoderConfig(**config.pop("decoder", {}))
        return cls(encoder=encoder, decoder=decoder, **config)

    def to_dict(self) -> dict:
        result = asdict(self)
        if encoder_kind(self.encoder) != "blocks":
            result["encoder"] = {"kind": encoder_kind(self.encoder), **result["encoder"]}
        return result


class ASRModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.encoder)
        d_model = self.encoder.output_dim
        if config.ctc_hidden > 0:
            self.ctc = nn.Sequential(nn.Linear(d_model, config.ctc_hidden), nn.GELU(),
                                     nn.Dropout(config.decoder.dropout), nn.Linear(config.ctc_hidden, config.vocab_size))
        else:
            self.ctc = nn.Linear(d_model, config.vocab_size)
        dec = config.decoder
        self.decoder = (
            TransformerDecoder(config.vocab_size, d_model, dec.num_heads, dec.d_ff, dec.num_layers, dec.dropout)
            if dec.num_layers > 0
            else None
        )
        self.reverse_decoder = (
            TransformerDecoder(config.vocab_size, d_model, dec.num_heads, dec.d_ff, dec.reverse_layers, dec.dropout)
            if dec.reverse_layers > 0
            else None
        )
        self.whisper_decoder = None
        if config.whisper_decoder is not None:
            from edgeasr.model.whisper import WhisperDecoder, WhisperDecoderConfig

            self.whisper_decoder = WhisperDecoder(WhisperDecoderConfig.from_dict(config.whisper_decoder))
        self.transducer = None
        if config.transducer is not None:
            from edgeasr.model.transducer import TransducerConfig, TransducerHead

            known = {"predictor_dim", "joint_dim", "context"}
            unknown = sorted(set(config.transducer) - known)
            if unknown:
                raise ValueError(f"model.transducer: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
            self.transducer = TransducerHead(TransducerConfig(vocab_size=config.vocab_size, encoder_dim=d_model,
                                                              blank=0, **config.transducer))
        self.cascade = None
        if config.cascade is not None:
            from edgeasr.model.cascade import CascadeConfig, CascadeEncoder

            self.cascade = CascadeEncoder(CascadeConfig.from_dict(config.cascade, d_model, config.vocab_size))
        self.segmenter = None
        if config.segmenter is not None:
            from edgeasr.model.segmenter import Segmenter, SegmenterConfig

            self.segmenter = Segmenter(SegmenterConfig.from_dict(config.segmenter), d_model)
        self.blank_id = 0
        self.sos_id = self.eos_id = config.vocab_size - 1
        self.ctc_loss = nn.CTCLoss(blank=self.blank_id, reduction="sum", zero_infinity=True)
        self.chunk_generator = torch.Generator().manual_seed(0)
        # Global CMVN travels inside the model (and its exports) so features are never normalised
        # with the wrong statistics; set from training data with ``set_cmvn``.
        input_dim = config.encoder.input_dim
        #: Parameter-name prefixes that training leaves as they are (set by the trainer's
        #: ``freeze`` option): their forward runs without building a graph.
        self.frozen_prefixes: tuple[str, ...] = ()
        #: distillation (``set_teacher``): a frozen teacher in a tuple, so it is no submodule
        #: (not in the state dict, not trained, not moved by DDP)
        self._teacher: tuple = ()
        self.distill_weight = 0.0
        self.distill_ctc_weight = 0.0
        self.distill_layer_weight = 0.0
        #: (student layer, teacher layer) pairs of layer-wise distillation, and the hidden states
        #: their forward hooks catch on each training batch
        self.distill_layer_pairs: tuple[tuple[int, int], ...] = ()
        self._caught_hidden: dict[tuple[str, int], torch.Tensor] = {}
        self._distill_hooks: list = []
        self.register_buffer("cmvn_mean", torch.zeros(input_dim))
        self.register_buffer("cmvn_istd", torch.ones(input_dim))
        if config.quantization is not None:
            from edgeasr.quant.qat import QuantConfig, prepare_qat

            prepare_qat(self, QuantConfig.from_dict(config.quantization))

    def set_cmvn(self, mean: torch.Tensor, istd: torch.Tensor) -> None:
        self.cmvn_mean.copy_(mean)
        self.cmvn_istd.copy_(istd)

    def fuse(self) -> int:
        """Fold BatchNorms into their layers for inference (FusionFormer); returns how many.

        The outputs stay the same (tests hold them within 1e-5) and the model gets faster; it can
        no longer be trained, so only inference paths call this.
        """
        return fuse_batch_norms(self)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.cmvn_mean) * self.cmvn_istd

    def training_chunk(self) -> tuple[int, int]:
        """(chunk_size, num_left_chunks) for the next training batch."""
        cfg = self.config
        if not cfg.dynamic_chunk:
            return cfg.static_chunk_size, -1
        chunk = draw_chunk_size(0, self.chunk_generator, cfg.max_chunk_size)
        left = -1
        if chunk > 0 and cfg.dynamic_left_chunks:
            left = int(torch.randint(0, 8, (), generator=self.chunk_generator).item())
        return chunk, left

    def encode(
        self, feats: torch.Tensor, lengths: torch.Tensor, chunk_size: int = 0, num_left_chunks: int = -1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "encoder" in self.frozen_prefixes:  # a frozen encoder: no graph, no activations kept
            with torch.no_grad():
                return self.encoder(self.normalize(feats), lengths, chunk_size, num_left_chunks)
        return self.encoder(self.normalize(feats), lengths, chunk_size, num_left_chunks)

    def set_teacher(self, teacher: "ASRModel | None", weight: float, ctc_weight: float = 0.0,
                    layer_weight: float = 0.0, layer_pairs: list | tuple | None = None) -> None:
        """Train this model towards a frozen ``teacher`` run on the same features and chunk mask.

        Why: a fine-tuned or quantization-aware-trained encoder drifts from where the pretrained
        parts that read it were trained (Whisper's decoder in the second pass is frozen); the CTC
        loss alone pulls it wherever the small head likes. ``weight``: the encoder output's mean
        squared error over valid frames relative to the teacher's mean square (scale-free; needs
        the same output width). ``ctc_weight``: the KL divergence from the teacher's CTC
        posteriors to this model's, summed over frames per utterance like the CTC loss: what a
        smaller, different student (a fast first pass) learns from, every frame a soft target.

        The teacher may be another architecture but must emit frames at the same rate; when the
        two stems pad differently (Whisper's pads, a valid-convolution student does not), the
        teacher's frames are centre-cropped to the student's count.

        ``layer_weight``: layer-wise hidden-state targets (FitNets-style), so a small student's
        middle layers learn what the teacher's compute rather than only where its output ends.
        Each (student layer, teacher layer) pair of ``layer_pairs`` (default: matched by relative
        depth) adds the squared error between a linear projection of the student layer's output
        and the teacher layer's output, the latter layer-normalized per frame (Whisper's residual
        stream has a few huge dimensions that would otherwise be all the loss sees): the mean over
        dimensions, summed over frames per utterance like the CTC and KL terms, averaged over pairs.
        The projections are training-only (``TRAINING_ONLY_PREFIXES``): checkpoints keep them for
        resuming, model directories leave them out.
        """
        self._remove_distill_hooks()
        if teacher is not None:
            teacher.eval()
            for parameter in teacher.parameters():
                parameter.requires_grad_(False)
            if teacher.encoder.subsampling_rate != self.encoder.subsampling_rate:
                raise ValueError(f"the teacher's frames are {teacher.encoder.subsampling_rate} feature frames, "
                                 f"this encoder's {self.encoder.subsampling_rate}: set encoder.subsampling_rate "
                                 "to match")
            if weight > 0 and teacher.encoder.output_dim != self.encoder.output_dim:
                raise ValueError(f"distill_weight compares encoder outputs: the teacher's are "
                                 f"{teacher.encoder.output_dim} wide, this encoder's {self.encoder.output_dim} "
                                 "(use distill_ctc_weight only)")
            if ctc_weight > 0 and teacher.config.vocab_size != self.config.vocab_size:
                raise ValueError("distill_ctc_weight compares CTC posteriors: the teacher and this model "
                                 "need the same tokenizer")
        self._teacher = (teacher,) if teacher is not None else ()
        self.distill_weight = float(weight)
        self.distill_ctc_weight = float(ctc_weight)
        self.distill_layer_weight = float(layer_weight) if teacher is not None else 0.0
        self.distill_layer_pairs = ()
        if self.distill_layer_weight > 0:
            self._set_layer_targets(teacher, layer_pairs)

    def _set_layer_targets(self, teacher: "ASRModel", layer_pairs: list | tuple | None) -> None:
        student_layers = getattr(self.encoder, "layers", None)
        teacher_layers = getattr(teacher.encoder, "layers", None)
        if student_layers is None or teacher_layers is None:
            raise ValueError("distill_layer_weight needs encoders made of layers (encoder.layers) on both sides")
        count, teacher_count = len(student_layers), len(teacher_layers)
        if layer_pairs is None:  # matched by relative depth: the last layer to the last layer
            layer_pairs = [(index, round((index + 1) * teacher_count / count) - 1) for index in range(count)]
        pairs = []
        for pair in layer_pairs:
            if len(pair) != 2 or not (0 <= int(pair[0]) < count and 0 <= int(pair[1]) < teacher_count):
                raise ValueError(f"distill_layers: {list(pair)} is not a [student layer, teacher layer] pair "
                                 f"within this encoder's {count} and the teacher's {teacher_count} layers")
            pairs.append((int(pair[0]), int(pair[1])))
        if len({student for student, _ in pairs}) != len(pairs):
            raise ValueError("distill_layers: each student layer may have one teacher layer")
        self.distill_layer_pairs = tuple(pairs)
        width, teacher_width = self.encoder.output_dim, teacher.encoder.output_dim
        self.distill_projections = nn.ModuleDict(
            {str(student): nn.Linear(width, teacher_width) for student, _ in pairs})

        def catch(side: str, index: int):
            def hook(module, inputs, output):
                if self.training:
                    self._caught_hidden[(side, index)] = output[0] if isinstance(output, tuple) else output
            return hook

        for student, teacher_index in pairs:
            self._distill_hooks.append(student_layers[student].register_forward_hook(catch("student", student)))
            self._distill_hooks.append(
                teacher_layers[teacher_index].register_forward_hook(catch("teacher", teacher_index)))

    def _remove_distill_hooks(self) -> None:
        for handle in self._distill_hooks:
            handle.remove()
        self._distill_hooks = []
        self._caught_hidden = {}
        if "distill_projections" in self._modules:
            del self._modules["distill_projections"]

    def distillation_losses(self, encoded: torch.Tensor, enc_lengths: torch.Tensor, log_probs: torch.Tensor,
                            feats: torch.Tensor, feat_lengths: torch.Tensor, chunk: int, left: int
                            ) -> dict[str, torch.Tensor]:
        teacher = self._teacher[0]
        with torch.no_grad():
            target, _ = teacher.encode(feats, feat_lengths, chunk, left)
            target_log_probs = teacher.ctc_log_probs(target) if self.distill_ctc_weight > 0 else None
        frames = min(target.size(1), encoded.size(1))
        offset = (target.size(1) - frames) // 2  # centre-crop the teacher (its stem pads)
        valid = (torch.arange(frames, device=encoded.device)[None] < enc_lengths[:, None]).unsqueeze(-1)
        out = {}
        if self.distill_weight > 0:
            reference = target[:, offset : offset + frames]
            error = ((encoded[:, :frames] - reference) ** 2 * valid).sum()
            out["distill"] = error / (reference ** 2 * valid).sum().clamp_min(1e-8)
        if self.distill_ctc_weight > 0:
            reference = target_log_probs[:, offset : offset + frames]
            kl = (reference.exp() * (reference - log_probs[:, :frames])).sum(-1, keepdim=True)
            out["distill_ctc"] = (kl * valid).sum() / encoded.size(0)
        if self.distill_layer_weight > 0:
            errors = []
            for student, teacher_index in self.distill_layer_pairs:
                hidden = self._caught_hidden.pop(("student", student))
                reference = self._caught_hidden.pop(("teacher", teacher_index))
                reference = nn.functional.layer_norm(reference, reference.shape[-1:])[:, offset : offset + frames]
                projected = self.distill_projections[str(student)](hidden[:, :frames])
                error = ((projected - reference) ** 2).mean(-1, keepdim=True)
                errors.append((error * valid).sum() / encoded.size(0))
            out["distill_layers"] = sum(errors) / len(errors)
        return out

    def freeze(self, prefixes: list[str] | tuple[str, ...]) -> int:
        """Stop training the parameters under these name prefixes; returns how many tensors.

        "encoder" freezes the whole encoder (then run without autograd: a frozen pretrained
        encoder costs only its forward pass); finer prefixes ("encoder.blocks.0") freeze parts.
        """
        names = dict(self.named_parameters())
        unknown = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
        if unknown:
            raise ValueError(f"freeze: no parameters under {', '.join(unknown)}")
        count = 0
        for name, param in names.items():
            if any(name == p or name.startswith(p + ".") for p in prefixes):
                param.requires_grad_(False)
                count += 1
        self.frozen_prefixes = tuple(prefixes)
        return count

    def ctc_log_probs(self, encoded: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.ctc(encoded), dim=-1)

    def cascade_log_probs(self, encoded: torch.Tensor, lengths: torch.Tensor | None = None,
                          layers: int | None = None) -> torch.Tensor:
        """The cascaded second pass over first-pass encoder frames [B, T, D] -> log-probs;
        ``layers``: which of its sub-models (default the full depth)."""
        return self.cascade_exits_log_probs(encoded, lengths, [layers or self.cascade.config.num_layers])[0]

    def cascade_exits_log_probs(self, encoded: torch.Tensor, lengths: torch.Tensor | None = None,
                                exits: list[int] | None = None) -> list[torch.Tensor]:
        """The log-probs of several cascade sub-models (default: every one) in one pass over its
        shared layers; a residual cascade corrects the first pass's CTC logits."""
        base = self.ctc(encoded) if self.cascade.config.residual else None
        return self.cascade.forward_exits(encoded, lengths, base, exits)

    def forward(
        self,
        feats: torch.Tensor,
        feat_lengths: torch.Tensor,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """tokens [B, U] padded with IGNORE_ID -> {"loss", "ctc", "attention"} (batch means)."""
        chunk, left = self.training_chunk() if self.training else (0, -1)
        encoded, enc_lengths = self.encode(feats, feat_lengths, chunk, left)
        batch = feats.size(0)
        log_probs = self.ctc_log_probs(encoded)
        targets = tokens.masked_fill(tokens == IGNORE_ID, 0)
        ctc = self.ctc_loss(log_probs.transpose(0, 1), targets, enc_lengths, token_lengths) / batch
        losses = {"ctc": ctc}
        loss = ctc
        if self.decoder is not None and self.config.ctc_weight < 1.0:
            att = self._attention_loss(self.decoder, tokens, token_lengths, encoded, enc_lengths, reverse=False)
            if self.reverse_decoder is not None and self.config.reverse_weight > 0:
                rev = self._attention_loss(
                    self.reverse_decoder, tokens, token_lengths, encoded, enc_lengths, reverse=True
                )
                w = self.config.reverse_weight
                att = (1 - w) * att + w * rev
            losses["attention"] = att
            loss = self.config.ctc_weight * ctc + (1 - self.config.ctc_weight) * att
        if self.transducer is not None:
            losses["transducer"] = self.transducer.loss(encoded, enc_lengths, targets, token_lengths)
            weight = self.config.transducer_weight
            loss = (1 - weight) * loss + weight * losses["transducer"]
        if self.cascade is not None:
            # the cascade reads the first pass's frames; a frozen first pass passes no gradient
            source = encoded.detach() if "encoder" in self.frozen_prefixes else encoded
            # every sub-model (dynamic cascade) trained as itself: the mean of their CTC losses
            exits = self.cascade_exits_log_probs(source, enc_lengths)
            losses["cascade"] = sum(self.ctc_loss(second.transpose(0, 1), targets, enc_lengths, token_lengths)
                                    for second in exits) / (batch * len(exits))
            weight = self.config.cascade_weight
            loss = (1 - weight) * loss + weight * losses["cascade"]
        if self.segmenter is not None:
            # it reads the first pass as it streams; a frozen first pass passes no gradient
            source = encoded.detach() if "encoder" in self.frozen_prefixes else encoded
            losses["segmenter"] = self.segmenter.loss(source, enc_lengths, log_probs)
            loss = loss + self.config.segmenter_weight * losses["segmenter"]
        if self._teacher and self.training and (
                self.distill_weight > 0 or self.distill_ctc_weight > 0 or self.distill_layer_weight > 0):
            distilled = self.distillation_losses(encoded, enc_lengths, log_probs, feats, feat_lengths, chunk, left)
            losses.update(distilled)
            loss = loss + self.distill_weight * distilled.get("distill", 0.0) \
                + self.distill_ctc_weight * distilled.get("distill_ctc", 0.0) \
                + self.distill_layer_weight * distilled.get("distill_layers", 0.0)
        quant = self.config.quantization
        if quant and quant.get("regularizer_weight", 0.0) > 0 and self.training:
            from edgeasr.quant.qat import quantization_regularizer

            losses["quant_reg"] = quantization_regularizer(self)
            loss = loss + quant["regularizer_weight"] * losses["quant_reg"]
        dynamic = getattr(self.encoder, "dynamic", None)
        if dynamic is not None and self.training:
            record = self.encoder.last_gates
            compute = dynamic.cost(record.probabilities, record.frame_mask)
            losses["compute"] = compute.detach()
            loss = loss + dynamic.loss(compute)
        losses["loss"] = loss
        return losses

    def decoder_io(
        self, tokens: torch.Tensor, token_lengths: torch.Tensor, reverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(<sos> + y, y + <eos>) padded: input with eos id, target with IGNORE_ID."""
        batch, max_len = tokens.shape
        inputs = torch.full((batch, max_len + 1), self.eos_id, dtype=torch.long)
        targets = torch.full((batch, max_len + 1), IGNORE_ID, dtype=torch.long)
        inputs[:, 0] = self.sos_id
        for b in range(batch):
            n = int(token_lengths[b])
            seq = tokens[b, :n]
            if reverse:
                seq = seq.flip(0)
            inputs[b, 1 : n + 1] = seq
            targets[b, :n] = seq
            targets[b, n] = self.eos_id
        return inputs, targets

    def _attention_loss(self, decoder, tokens, token_lengths, encoded, enc_lengths, reverse: bool):
        inputs, targets = self.decoder_io(tokens, token_lengths, reverse)
        logits = decoder(inputs, token_lengths + 1, encoded, enc_lengths)
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_ID,
            label_smoothing=self.config.label_smoothing,
            reduction="sum",
        )
        return loss / tokens.size(0)

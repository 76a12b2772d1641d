"""ONNX export: the streaming encoder (with its caches as inputs and outputs), CTC, and decoder.

``export_onnx(model_dir, out_dir)`` writes:

- ``encoder.onnx``: one chunk. Inputs ``feats`` [1, W, F] (raw fbank of the chunk's window; CMVN is
  inside the graph) and, per layer, the caches the layer keeps: ``att_cache.{i}`` (softmax
  attention: keys and values [1, H, T_cache, 2 d_head], T_cache dynamic, may be 0; Performer: the
  fixed state [1, H, m, d_head + 1]) and ``cnn_cache.{i}`` ([1, D, k - 1]). Outputs ``encoded``
  [1, T, D], ``ctc_log_probs`` [1, T, V] and the new caches ``new_att_cache.{i}`` /
  ``new_cnn_cache.{i}``. The runtime trims softmax caches to the left context it keeps.
- ``decoder.onnx`` (when the model has an attention decoder): teacher-forced log-probabilities
  for rescoring, inputs ``tokens`` [N, U], ``token_lengths`` [N], ``memory`` [N, T, D],
  ``memory_lengths`` [N]; output ``log_probs`` [N, U, V].
- ``lm/`` when the model directory has a language model (``edgeasr lm train``), and its
  ``calibration.json`` when it has one (``edgeasr calibrate``);
- ``tokenizer/`` and ``metadata.json`` (also stored as ONNX metadata in the encoder): chunk size,
  left chunks, window and stride in feature frames, subsampling rate, feature options, the cache
  layout of every layer, vocabulary size and special ids.
- with ``int8=True``, ``encoder.int8.onnx`` and ``decoder.int8.onnx``: onnxruntime dynamic
  quantization of MatMul/Gemm only, int8 weights. A quantized (QAT/PTQ) model is exported from
  its rounded weights, quantized per output channel, so 8-bit codes carry over exactly. Quantizing
  convolutions too (onnxruntime's default, ConvInteger) measured about 4x slower than float here, so
  convolutions compute in float; their weights are still stored as int8 codes with per-channel
  scales, and the remaining float tensors (biases, norms, scales) as float16, each behind a
  Cast/Mul that onnxruntime folds into a float constant when the session loads (see
  ``compact_initializers``). The file on disk is then close to one byte per weight.
- with ``int4=True``, ``decoder*.int4.onnx``: the decoder graphs with 4-bit weights
  (onnxruntime's ``MatMulNBits``, blocks of 32 along the input axis with a scale and zero point
  each, int8 compute; token tables as ``GatherBlockQuantized``). The encoder graphs stay int8:
  measured on the default model, 4-bit encoder weights cost 4-9 WER points on realdev, 4-bit
  decoder weights none, and the decoder is where the bytes are (its 51,864-token table).

The encoder is exported with the legacy TorchScript tracer (``dynamo=False``): seconds instead of
half a minute, and no onnxscript dependency. The model's Python control flow depends only on
layer kinds and on whether a cache is given, never on values, so one trace serves every chunk.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeasr.errors import EdgeAsrError
from edgeasr.model.encoder import EncoderStream
from edgeasr.model.package import PackagedModel, load_model_dir
from edgeasr.nn.performer import PerformerAttention

OPSET = 17


def cache_layout(model) -> list[dict]:
    """Per layer: which caches it has and their shapes (T_cache = -1 where it is dynamic)."""
    encoder = model.encoder
    layout = []
    for layer in encoder.layers:
        entry: dict = {"kind": type(layer).__name__}
        attention = getattr(layer, "attention", None)
        if isinstance(attention, PerformerAttention):
            entry["att"] = {"shape": list(attention.state_shape(1)), "grows": False}
        elif attention is not None:
            entry["att"] = {"shape": [1, attention.num_heads, -1, 2 * attention.d_head], "grows": True}
        conv = getattr(layer, "conv", None)
        if conv is not None and conv.cache_frames:
            entry["cnn"] = {"shape": [1, encoder.config.d_model, conv.cache_frames]}
        layout.append(entry)
    return layout


class _EncoderChunk(nn.Module):
    """forward(feats, *caches) -> (encoded, ctc_log_probs, *new_caches), caches in layout order."""

    def __init__(self, model, layout: list[dict]) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, feats: torch.Tensor, *caches: torch.Tensor):
        it = iter(caches)
        att, cnn = [], []
        for entry in self.layout:
            att.append(next(it) if "att" in entry else feats.new_zeros(0))
            cnn.append(next(it) if "cnn" in entry else feats.new_zeros(0))
        encoded, new_att, new_cnn = self.model.encoder.forward_chunk(self.model.normalize(feats), att, cnn)
        outputs = [encoded, self.model.ctc_log_probs(encoded)]
        for entry, a, c in zip(self.layout, new_att, new_cnn):
            if "att" in entry:
                outputs.append(a)
            if "cnn" in entry:
                outputs.append(c)
        return tuple(outputs)


class _Decoder(nn.Module):
    def __init__(self, decoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens, token_lengths, memory, memory_lengths):
        return torch.log_softmax(self.decoder(tokens, token_lengths, memory, memory_lengths), dim=-1)


def _cache_names(layout: list[dict], prefix: str = "") -> list[str]:
    names = []
    for index, entry in enumerate(layout):
        if "att" in entry:
            names.append(f"{prefix}att_cache.{index}")
        if "cnn" in entry:
            names.append(f"{prefix}cnn_cache.{index}")
    return names


def example_caches(layout: list[dict], cached_frames: int) -> list[torch.Tensor]:
    tensors = []
    for entry in layout:
        if "att" in entry:
            shape = [cached_frames if size == -1 else size for size in entry["att"]["shape"]]
            tensors.append(torch.zeros(shape))
        if "cnn" in entry:
            tensors.append(torch.zeros(entry["cnn"]["shape"]))
    return tensors


def _quantize_int8(source: Path, target: Path, per_channel: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(target), op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        prepared.unlink(missing_ok=True)
    graph = onnx.load(str(target))
    compact_initializers(graph)
    onnx.save(graph, str(target))


#: 4-bit weight blocks: 32 weights per scale and zero point (measured on the default model:
#: blocks of 128 cost 4 WER points on realdev, 32 none; zero points help CER a little)
INT4_BLOCK = 32


def _quantize_int4(source: Path, target: Path, block_codes: dict | None = None) -> None:
    """4-bit weight-only quantization (``MatMulNBits`` / ``GatherBlockQuantized``) of one graph.

    onnxruntime's quantizer rounds every product to the nearest level; ``block_codes``
    ({``linear_fingerprint``: ``BlockQuantized``}, e.g. GPTQ's) replaces the codes of the products
    whose weights they are, in the same layout, so only the rounding differs."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs every node it visits, and the IR version it raises to 10
    try:
        graph = onnx.load(str(source))
        from edgeasr.export.int4 import install_block_codes, matmul_codes_by_output, tie_quantized_embedding

        codes_by_output = matmul_codes_by_output(graph, block_codes) if block_codes else {}
        # the rest of the graph (the token table) in the blocks the given codes use
        block = next(iter(block_codes.values())).block if block_codes else INT4_BLOCK
        quantizer = MatMulNBitsQuantizer(graph, block_size=block, is_symmetric=False,
                                         accuracy_level=4, op_types_to_quantize=("MatMul", "Gather"),
                                         quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer.process()
        if install_block_codes(quantizer.model.model, codes_by_output) != len(codes_by_output):
            raise RuntimeError(f"{source.name}: some GPTQ codes found no 4-bit product to go into")

        tie_quantized_embedding(quantizer.model.model)  # a tied output projection reads the table's codes
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    finally:
        quiet.setLevel(level)


def compact_initializers(graph_model, min_elements: int = 16) -> dict:
    """Store a graph's float32 weights in fewer bytes without changing how it runs.

    Large float weights of convolutions become int8 codes (symmetric, one scale per output
    channel) followed by ``Cast`` and ``Mul``; other float32 initializers of at least
    ``min_elements`` values become float16 followed by ``Cast``. Every added node has only
    constant inputs, so onnxruntime's constant folding turns it back into one float tensor at
    session load: the graph that runs is the same and only the bytes on disk shrink. Returns
    counts for logs.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = graph_model.graph
    conv_weights = {node.input[1] for node in graph.node if node.op_type == "Conv" and len(node.input) > 1}
    # block-quantized products read their scales as they are (and prepack them at load)
    exact = {name for node in graph.node if node.op_type in ("MatMulNBits", "GatherBlockQuantized")
             for name in node.input}
    added_nodes, kept, stats = [], [], {"int8": 0, "float16": 0}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        name = tensor.name
        if array.dtype != np.float32 or array.size < min_elements or name in exact:
            kept.append(tensor)
            continue
        if name in conv_weights and array.ndim >= 2:
            flat = array.reshape(array.shape[0], -1)
            scale = np.abs(flat).max(axis=1) / 127.0
            scale[scale == 0] = 1.0
            codes = np.clip(np.rint(flat / scale[:, None]), -127, 127).astype(np.int8).reshape(array.shape)
            scale_shape = (array.shape[0],) + (1,) * (array.ndim - 1)
            kept.append(numpy_helper.from_array(codes, f"{name}.codes"))
            kept.append(numpy_helper.from_array(scale.astype(np.float32).reshape(scale_shape), f"{name}.scale"))
            added_nodes.append(helper.make_node("Cast", [f"{name}.codes"], [f"{name}.float_codes"],
                                                to=TensorProto.FLOAT, name=f"{name}.dequantize_cast"))
            added_nodes.append(helper.make_node("Mul", [f"{name}.float_codes", f"{name}.scale"], [name],
                                                name=f"{name}.dequantize_scale"))
            stats["int8"] += 1
        else:
            kept.append(numpy_helper.from_array(array.astype(np.float16), f"{name}.half"))
            added_nodes.append(helper.make_node("Cast", [f"{name}.half"], [name], to=TensorProto.FLOAT,
                                                name=f"{name}.to_float"))
            stats["float16"] += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(added_nodes + nodes)  # constants first: the graph stays topologically sorted
    del graph.value_info[:]  # shape annotations from quantization; onnxruntime re-infers them
    _shorten_internal_names(graph)
    return stats


def _shorten_internal_names(graph) -> None:
    """Rename internal tensors to short ids and drop node names: tracer names such as
    ``/model/encoder/layers.3/self_attn/MatMul_output_0`` are debug text that otherwise takes
    about 5% of an int8 graph's bytes. Graph inputs and outputs keep their names."""
    public = {value.name for value in graph.input} | {value.name for value in graph.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in public:
            return name
        if name not in short:
            short[name] = format(len(short), "x")
        return short[name]

    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]


def float_twin(asr):
    """A float model computing with a quantized model's rounded weights (codes x scales).

    ONNX graphs are exported from it: activation rounding is left to onnxruntime's dynamic int8
    (per batch ranges), and int8 quantization per output channel of weights already on a
    symmetric 8-bit per-channel grid gives back exactly those codes.
    """
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.quant.fake_quant import fake_quantize_weight
    from edgeasr.quant.qat import quantized_layers

    config = asr.config.to_dict()
    config["quantization"] = None
    twin = ASRModel(ModelConfig.from_dict(config)).eval()
    state = {k: v for k, v in asr.state_dict().items() if "_quant." not in k}
    with torch.no_grad():
        for name, spec in quantized_layers(asr).items():
            layer = asr.get_submodule(name)
            state[f"{name}.weight"] = fake_quantize_weight(layer.effective_weight(), spec.weight_bits)
    twin.load_state_dict(state)
    return twin


def export_onnx(
    model: str | Path | PackagedModel,
    out_dir: str | Path,
    chunk_size: int | None = None,
    num_left_chunks: int | None = None,
    int8: bool = False,
    int4: bool = False,
    gptq_codes: dict | None = None,
) -> dict:
    """Export a packaged model for streaming with ONNX Runtime; returns the metadata written.
    ``int4`` adds 4-bit decoder graphs (and implies the int8 encoder graphs they run beside); for a
    model with 4-bit weights (QAT/PTQ W4) also 4-bit encoder graphs carrying its codes exactly.
    ``gptq_codes``: 4-bit codes from ``edgeasr.quant.gptq.whisper_codes`` for the decoder's layers
    (and the encoder's, which then get 4-bit graphs too) in place of onnxruntime's round-to-nearest."""

    packaged = model if isinstance(model, PackagedModel) else load_model_dir(model)
    asr = packaged.model.eval()
    int8 = int8 or int4
    if packaged.features.kind == "whisper_mel" and hasattr(asr.encoder, "max_frames"):
        return _export_whisper(packaged, out_dir, chunk_size, num_left_chunks, int8, int4, gptq_codes)
    if packaged.features.kind not in ("fbank", "whisper_mel") or not hasattr(asr.encoder, "subsampling"):
        raise EdgeAsrError("ONNX export covers block-plan encoders with fbank or Whisper log-mel features; this "
                           f"model ({packaged.features.kind} front end) runs with the torch backend")
    if asr.encoder.dynamic is not None:
        raise EdgeAsrError("ONNX export of dynamic-compute models is not supported (their gates pick which "
                           "modules run, a data-dependent graph); run them with the torch backend")
    asr.fuse()
    quantization = asr.config.quantization
    if quantization is not None:
        asr = float_twin(asr)  # its rounded weights; --int8 then stores them as int8 per channel
    chunk, left, out = _streaming_settings(packaged, chunk_size, num_left_chunks, out_dir)
    stream = EncoderStream(asr.encoder, chunk, left)
    layout = cache_layout(asr)
    wrapper = _EncoderChunk(asr, layout).eval()
    feats = torch.randn(1, stream.window, asr.config.encoder.input_dim)
    caches = example_caches(layout, cached_frames=chunk)
    inputs = ["feats", *_cache_names(layout)]
    outputs = ["encoded", "ctc_log_probs", *_cache_names(layout, "new_")]
    dynamic = {"encoded": {1: "frames"}, "ctc_log_probs": {1: "frames"}, "feats": {1: "window"}}
    for index, entry in enumerate(layout):
        if "att" in entry and entry["att"]["grows"]:
            dynamic[f"att_cache.{index}"] = {2: "cached"}
            dynamic[f"new_att_cache.{index}"] = {2: "cached_out"}
    encoder_path = out / "encoder.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (feats, *caches), str(encoder_path), input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    metadata = {
        "format": "edgeasr-onnx-streaming",
        "version": 1,
        "chunk_size": chunk,
        "num_left_chunks": left,
        "max_left_frames": stream.max_left_frames,
        "window": stream.window,
        "stride": stream.stride,
        "subsampling_rate": asr.encoder.subsampling.rate,
        "right_context": asr.encoder.subsampling.right_context,
        "frame_shift_ms": 1000.0 * packaged.features.frame_shift,
        "features": packaged.features.to_dict(),
        "vocab_size": asr.config.vocab_size,
        "blank_id": asr.blank_id,
        "sos_id": asr.sos_id,
        "eos_id": asr.eos_id,
        "d_model": asr.config.encoder.d_model,
        "layers": layout,
        "has_decoder": asr.decoder is not None,
        "source_quantization": quantization,
    }
    stamp_metadata(encoder_path, metadata)
    if asr.decoder is not None:
        tokens = torch.full((2, 5), asr.sos_id, dtype=torch.long)
        token_lengths = torch.tensor([5, 3])
        memory = torch.randn(2, 7, asr.config.encoder.d_model)
        memory_lengths = torch.tensor([7, 7])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Decoder(asr.decoder).eval(), (tokens, token_lengths, memory, memory_lengths), str(out / "decoder.onnx"),
                input_names=["tokens", "token_lengths", "memory", "memory_lengths"], output_names=["log_probs"],
                dynamic_axes={"tokens": {0: "n", 1: "u"}, "token_lengths": {0: "n"}, "memory": {0: "n", 1: "t"},
                              "memory_lengths": {0: "n"}, "log_probs": {0: "n", 1: "u"}},
                opset_version=OPSET, dynamo=False,
            )
    if int8:
        # A quantized source's weights already sit on a per-channel grid: keep it per channel.
        per_channel = quantization is not None
        _quantize_int8(encoder_path, out / "encoder.int8.onnx", per_channel)
        if asr.decoder is not None:
            _quantize_int8(out / "decoder.onnx", out / "decoder.int8.onnx", per_channel)
    if int4 and asr.decoder is not None:
        _quantize_int4(out / "decoder.onnx", out / "decoder.int4.onnx")
    from edgeasr.export.whisper_onnx import has_4bit_weights

    metadata.update(_export_heads(asr, out, int8, int4=int4 and has_4bit_weights(packaged.model)))
    _write_side_files(packaged, out, metadata)
    return metadata


class _TransducerProject(nn.Module):
    def __init__(self, head) -> None:
        super().__init__()
        self.proj = head.joiner.encoder_proj

    def forward(self, frames):
        return self.proj(frames)


class _TransducerPredict(nn.Module):
    def __init__(self, head) -> None:
        super().__init__()
        self.predictor, self.proj = head.predictor, head.joiner.predictor_proj

    def forward(self, contexts):
        return self.proj(self.predictor.step(contexts))


class _TransducerJoin(nn.Module):
    def __init__(self, head) -> None:
        super().__init__()
        self.out = head.joiner.out

    def forward(self, frame, predicted):
        return self.out(torch.tanh(frame[None, :] + predicted)).log_softmax(-1)


#: the transducer's graphs: the runner interface of edgeasr.decoding.transducer_search, one each
TRANSDUCER_GRAPHS = ("transducer_project", "transducer_predict", "transducer_join")


def export_transducer(head, out: Path, int8: bool, int4: bool = False) -> dict:
    """A transducer head as three small graphs (encoder projection, prediction network, joint):
    the searches call them as they call the torch head, so both backends give the same n-best.
    ``int4`` (a head trained to 4 bits: its weights on the 4-bit grid) adds ``.int4.onnx`` graphs
    whose 4-bit matrices are exact ``MatMulNBits`` (``edgeasr.export.int4``). Returns the
    metadata the runtime needs."""
    config = head.config
    joint = head.joiner.out.in_features
    examples = {
        "transducer_project": (_TransducerProject(head), (torch.randn(3, config.encoder_dim),), ["frames"],
                               ["projected"], {"frames": {0: "t"}, "projected": {0: "t"}}),
        "transducer_predict": (_TransducerPredict(head), (torch.zeros(2, config.context, dtype=torch.long),),
                               ["contexts"], ["predicted"], {"contexts": {0: "h"}, "predicted": {0: "h"}}),
        "transducer_join": (_TransducerJoin(head), (torch.randn(joint), torch.randn(2, joint)), ["frame", "predicted"],
                            ["log_probs"], {"predicted": {0: "h"}, "log_probs": {0: "h"}}),
    }
    four_bit = 0
    for name, (module, inputs, input_names, output_names, dynamic) in examples.items():
        path = out / f"{name}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), inputs, str(path), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
        if int8:
            _quantize_int8(path, out / f"{name}.int8.onnx", per_channel=False)
        if int4:
            from edgeasr.export.int4 import write_int4_graph

            replaced = write_int4_graph(path, out / f"{name}.int4.onnx")
            if not replaced:  # a float (or 8-bit) graph: its int8 twin serves
                (out / f"{name}.int4.onnx").unlink()
            four_bit += replaced
    metadata = {"context": config.context, "blank": config.blank, "vocab_size": config.vocab_size, "joint_dim": joint}
    if int4:
        metadata["int4_matrices"] = four_bit
    return {"transducer": metadata}


class _CascadeExit(nn.Module):
    """One sub-model of a cascade: a segment's first-pass frames [1, T, D] -> its log-probs [T, V]
    (a residual cascade reads the first pass's CTC head too, so the head is inside)."""

    def __init__(self, model, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, frames):
        return self.model.cascade_log_probs(frames, None, layers=self.layers)[0]


def export_cascade(model, out: Path, int8: bool) -> dict:
    """The cascaded second pass as one graph per sub-model (``cascade_N.onnx``: its N layers and
    head; one graph for a plain cascade), so ONNX Runtime runs ``cascade_rescoring`` with the
    same decoding core as torch. Returns the metadata the runtime needs."""
    config = model.cascade.config
    graphs = {}
    for layers in config.exit_layers:
        name = f"cascade_{layers}"
        path = out / f"{name}.onnx"
        _export_cascade_graph(model, layers, config.input_dim, path)
        if int8:
            _quantize_int8(path, out / f"{name}.int8.onnx", per_channel=False)
        graphs[str(layers)] = name
    return {"cascade": {"exit_layers": config.exit_layers, "graphs": graphs}}


def _export_cascade_graph(model, layers: int, input_dim: int, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_CascadeExit(model, layers).eval(), (torch.randn(1, 7, input_dim),), str(path),
                          input_names=["frames"], output_names=["log_probs"],
                          dynamic_axes={"frames": {1: "t"}, "log_probs": {0: "t"}}, opset_version=OPSET, dynamo=False)


class _SegmenterProbability(nn.Module):
    def __init__(self, segmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, frames):
        return torch.sigmoid(self.segmenter(frames))


def export_segmenter(segmenter, out: Path) -> dict:
    """The segmenter as ``segmenter.onnx``: encoder frames [T, D] -> P(segment ended) [T]."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_SegmenterProbability(segmenter).eval(), (torch.randn(3, segmenter.net[0].in_features),),
                          str(out / "segmenter.onnx"), input_names=["frames"], output_names=["ended"],
                          dynamic_axes={"frames": {0: "t"}, "ended": {0: "t"}}, opset_version=OPSET, dynamo=False)
    return {"segmenter": {"graph": "segmenter.onnx"}}


def _export_heads(model, out: Path, int8: bool, int4: bool = False) -> dict:
    """Metadata of the optional heads' graphs, written beside the encoder's (``int4``: the
    model's own 4-bit weights as exact 4-bit graphs too)."""
    metadata = {}
    if getattr(model, "transducer", None) is not None:
        metadata.update(export_transducer(model.transducer.eval(), out, int8, int4))
    if getattr(model, "segmenter", None) is not None:
        metadata.update(export_segmenter(model.segmenter, out))
    if getattr(model, "cascade", None) is not None:
        metadata.update(export_cascade(model.eval(), out, int8))
    return metadata


def _export_whisper(packaged: PackagedModel, out_dir, chunk_size, num_left_chunks, int8: bool,
                    int4: bool = False, gptq_codes: dict | None = None) -> dict:
    """The Whisper-encoder model's graphs (edgeasr.export.whisper_onnx), with the same side files."""
    from edgeasr.export.whisper_onnx import export_whisper_onnx

    chunk, left, out = _streaming_settings(packaged, chunk_size, num_left_chunks, out_dir)
    metadata = export_whisper_onnx(packaged, out, chunk, left, int8, int4=int4, gptq_codes=gptq_codes)
    from edgeasr.export.whisper_onnx import has_4bit_weights

    heads = float_twin(packaged.model) if packaged.model.config.quantization is not None else packaged.model
    metadata.update(_export_heads(heads.eval(), out, int8, int4=int4 and has_4bit_weights(packaged.model)))
    _write_side_files(packaged, out, metadata)
    return metadata


def _streaming_settings(packaged: PackagedModel, chunk_size, num_left_chunks, out_dir):
    """(chunk, left chunks, the output directory, created): the model's defaults unless overridden."""
    chunk = chunk_size if chunk_size is not None else packaged.streaming.chunk_size
    left = num_left_chunks if num_left_chunks is not None else packaged.streaming.num_left_chunks
    if chunk < 1:
        raise EdgeAsrError("ONNX streaming export needs a chunk size of at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return chunk, left, out


def stamp_metadata(path: Path, metadata: dict) -> None:
    """Store the metadata in the graph too (ONNX metadata props, JSON values)."""
    import onnx

    graph = onnx.load(str(path))
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(graph, str(path))


def _write_side_files(packaged: PackagedModel, out: Path, metadata: dict) -> None:
    """Tokenizer, the model's LM and calibration, and metadata.json beside the graphs."""
    packaged.tokenizer.save(out / "tokenizer")
    own_lm = packaged.directory / "lm" if packaged.directory is not None else None
    if own_lm is not None and (own_lm / "lm.arpa.gz").is_file():  # the LM travels with the model
        import shutil

        shutil.copytree(own_lm, out / "lm", dirs_exist_ok=True)
    from edgeasr.decoding.confidence import CALIBRATION_FILE

    if packaged.directory is not None and (packaged.directory / CALIBRATION_FILE).is_file():
        import shutil  # the confidence calibration travels too

        shutil.copy2(packaged.directory / CALIBRATION_FILE, out / CALIBRATION_FILE)
    (out / "metadata.json").write_text(json.dumps(metadata, indent=1))

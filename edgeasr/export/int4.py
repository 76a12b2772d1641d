"""Real 4-bit ONNX graphs from models whose weights are already 4-bit (QAT or PTQ W4).

onnxruntime's ``MatMulNBits`` runs a matrix product against 4-bit weights stored two to a byte,
in blocks along the input axis, each block with its own scale (and zero point, 8 when left out).
Its own quantizer (``MatMulNBitsQuantizer``) rounds float weights afresh, block by block; on a
model trained for 4 bits that would throw away the grid training adapted to. edgeasr's 4-bit
weights have one scale per output channel and codes in -7..7 (``edgeasr.quant.fake_quant``), so
they fit the format exactly: every block of a row gets the row's scale, the codes are stored as
``code + 8``. Nothing is rounded twice, and the graph computes what the quantized model learned.

The exported float graph does not name which matrices were quantized, and need not: a matrix is
on a 4-bit grid when each column divided by (its largest magnitude / 7) is integral, which float
weights never are by chance. Those become ``MatMulNBits``; the other products (8-bit layers such
as the CTC head, float layers) get onnxruntime's dynamic int8 per output channel, which for 8-bit
weights also gives back their codes exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeasr.quant.fake_quant import weight_qmax

QMAX = weight_qmax(4)  # codes in -7..7, as the 4-bit model's fake quantization rounds them

#: Largest block (codes per stored scale) tried: every block of a row carries the row's one
#: scale, so a longer block loses nothing and stores fewer copies of it (onnxruntime takes
#: powers of two from 16 to 256; the Whisper encoder's 384 inputs take 128, its 1536 take 256).
MAX_BLOCK = 256


def block_for(depth: int) -> int | None:
    """The longest power-of-two block from 16 to MAX_BLOCK dividing ``depth`` (None if none)."""
    block = MAX_BLOCK
    while block >= 16:
        if depth % block == 0:
            return block
        block //= 2
    return None


def grid_codes(matrix: np.ndarray, tolerance: float = 1e-3) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes [N, K] int8, scales [N]) of a [K, N] ``MatMul`` weight on a per-column 4-bit grid,
    or None when it is not on one."""
    if matrix.ndim != 2 or matrix.dtype != np.float32:
        return None
    scales = np.abs(matrix).max(axis=0) / QMAX
    safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
    ratio = matrix / safe
    codes = np.rint(ratio)
    if np.abs(ratio - codes).max() > tolerance or np.abs(codes).max() > QMAX:
        return None
    return codes.T.astype(np.int8), safe


def pack_codes(codes: np.ndarray, block: int) -> np.ndarray:
    """[N, K] codes in -7..7 -> MatMulNBits' B: uint8 [N, K / block, block / 2]. Its layout (code + 8,
    two a byte, low nibble first, row after row) is edgeasr's own 4-bit packing of the model file."""
    import torch

    from edgeasr.quant.pack import pack_codes as pack

    rows, depth = codes.shape
    return pack(torch.from_numpy(codes), 4).numpy().reshape(rows, depth // block, block // 2)


def unpack_codes(packed: np.ndarray) -> np.ndarray:
    """The inverse of ``pack_codes`` (for tests and inspection): [N, K] int8 codes."""
    import torch

    from edgeasr.quant.pack import unpack_codes as unpack

    rows = packed.shape[0]
    flat = torch.from_numpy(np.array(packed, dtype=np.uint8).reshape(-1))
    return unpack(flat, 4, 2 * flat.numel()).numpy().reshape(rows, -1)


def _plain_gemm(node) -> bool:
    """A ``Gemm`` that is a Linear layer: A [M, K] times a constant B [N, K] transposed, plus C
    (how torch exports a Linear over 2-D input), with no scaling."""
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (attributes.get("transA", 0) == 0 and attributes.get("transB", 0) == 1
            and attributes.get("alpha", 1.0) == 1.0 and attributes.get("beta", 1.0) == 1.0)


def to_matmul_nbits(graph_model) -> int:
    """Replace, in place, every ``MatMul`` (and Linear-shaped ``Gemm``: A times B transposed plus
    C) whose constant weight is on a 4-bit grid by an exact ``MatMulNBits`` (followed by the
    Gemm's bias as an ``Add``); returns how many were replaced."""
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    converted: dict[str, tuple[str, str, int, int, int] | None] = {}
    nodes, replaced = [], 0
    for node in graph.node:
        weight = None
        if node.op_type == "MatMul" and len(node.input) == 2:
            weight = node.input[1]
        elif node.op_type == "Gemm" and len(node.input) in (2, 3) and _plain_gemm(node):
            weight = node.input[1]
        if weight not in initializers:
            nodes.append(node)
            continue
        if weight not in converted:
            matrix = numpy_helper.to_array(initializers[weight])
            if node.op_type == "Gemm":
                matrix = np.ascontiguousarray(matrix.T)  # stored [N, K]: as a MatMul weight, [K, N]
            block = block_for(matrix.shape[0]) if matrix.ndim == 2 else None
            found = grid_codes(matrix) if block else None
            if found is None:
                converted[weight] = None
            else:
                codes, scales = found
                depth, rows = matrix.shape
                graph.initializer.append(numpy_helper.from_array(pack_codes(codes, block), f"{weight}.q4"))
                block_scales = np.repeat(scales, depth // block).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(block_scales, f"{weight}.q4_scales"))
                converted[weight] = (f"{weight}.q4", f"{weight}.q4_scales", depth, rows, block)
        if converted[weight] is None:
            nodes.append(node)
            continue
        packed, scales, depth, rows, block = converted[weight]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) == 3 and node.input[2] else None
        outputs = [f"{node.output[0]}.q4_product"] if bias else list(node.output)
        # accuracy_level 4: activations to int8 per block, int8 dot products (W4A8 at run time)
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], packed, scales], outputs,
                                      name=f"{node.name or weight}.q4", domain="com.microsoft",
                                      K=depth, N=rows, bits=4, block_size=block, accuracy_level=4))
        if bias:
            nodes.append(helper.make_node("Add", [outputs[0], bias], list(node.output), name=f"{node.name or weight}.q4_bias"))
        replaced += 1
    _swap_nodes(graph_model, nodes, microsoft_ops=replaced > 0)
    return replaced


def _swap_nodes(graph_model, nodes: list, microsoft_ops: bool) -> None:
    """Give the graph ``nodes`` as its node list, drop the initializers no node reads any more
    (the float weights that became 4-bit), and import the com.microsoft domain if it is used."""
    from onnx import helper

    graph = graph_model.graph
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if microsoft_ops and not any(entry.domain == "com.microsoft" for entry in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def codes_to_matmul_nbits(graph_model, codes_by_weight: dict) -> int:
    """Replace, in place, every ``MatMul`` whose constant weight has block codes in
    ``codes_by_weight`` (keyed by ``linear_fingerprint``, e.g. GPTQ's) by a ``MatMulNBits`` with
    those codes, scales and zero points; returns how many were replaced."""
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    codes_by_output = matmul_codes_by_output(graph_model, codes_by_weight)
    stored = {t.name for t in graph.initializer}
    nodes = []
    for node in graph.node:
        quantized = codes_by_output.get(node.output[0]) if node.op_type == "MatMul" else None
        if quantized is None:
            nodes.append(node)
            continue
        rows, depth = quantized.codes.shape
        names = [f"{node.input[1]}.{part}" for part in ("q4", "q4_scales", "q4_zero_points")]
        if names[0] not in stored:  # a weight two products share is stored once
            stored.update(names)
            graph.initializer.extend(numpy_helper.from_array(array, name)
                                     for name, array in zip(names, matmul_nbits_arrays(quantized)))
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], *names], list(node.output),
                                      name=f"{node.name or node.input[1]}.q4", domain="com.microsoft",
                                      K=depth, N=rows, bits=4, block_size=quantized.block, accuracy_level=4))
    _swap_nodes(graph_model, nodes, microsoft_ops=bool(codes_by_output))
    return len(codes_by_output)


def write_int4_graph(source: Path, target: Path, codes_by_weight: dict | None = None) -> int:
    """``target``: ``source`` with its 4-bit matrices as exact MatMulNBits (weights on a 4-bit
    grid, and those with block codes in ``codes_by_weight``) and the other products as dynamic
    int8 (per channel beside a quantized model's grid weights, else per tensor); returns the
    number of 4-bit matrices (0: nothing was 4-bit)."""
    import onnx

    from edgeasr.export.onnx import compact_initializers

    graph_model = onnx.load(str(source))
    on_grid = to_matmul_nbits(graph_model)
    coded = codes_to_matmul_nbits(graph_model, codes_by_weight) if codes_by_weight else 0
    replaced = on_grid + coded
    staged = target.with_suffix(".nbits.onnx")
    try:
        onnx.save(graph_model, str(staged))
        # per channel carries a quantized model's 8-bit codes; a float model's other products (the
        # CTC head beside GPTQ's layers) have none, and per-tensor int8 is the safer kernel: on
        # AVX2 without VNNI, onnxruntime's u8 x s8 products saturate with per-channel weights
        _dynamic_int8(staged, target, per_channel=on_grid > 0 or not coded)
    finally:
        staged.unlink(missing_ok=True)
    graph_model = onnx.load(str(target))
    compact_initializers(graph_model)
    onnx.save(graph_model, str(target))
    return replaced


def _dynamic_int8(source: Path, target: Path, per_channel: bool = True) -> None:
    """Dynamic int8 (per output channel, or per tensor) of the remaining MatMul / Gemm nodes
    (MatMulNBits is left alone)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it warns that it cannot type MatMulNBits' outputs: they are float
    try:
        quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        root.setLevel(level)


def tie_quantized_embedding(graph_model) -> bool:
    """Give a decoder's 4-bit output projection the 4-bit token table's own codes and zero points.

    Whisper ties its output projection to its token table; onnxruntime's quantizer rounds them
    apart (the table's scales in float16, the projection's in float32), so 0.7% of the codes
    differ and the bytes cannot be shared. Both are block-wise along the model dimension with the
    same blocks, and the stored layouts agree (code after code, low nibble first), so the
    projection can read the table's codes, zero points and (widened) scales: the same rounding of
    the same weights, stored once (``share_weights``). Only done when they agree on >= 99% of the
    codes, i.e. they really are one tied matrix. Returns whether it tied them."""
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    for gather in (n for n in graph.node if n.op_type == "GatherBlockQuantized"):
        attributes = {a.name: helper.get_attribute_value(a) for a in gather.attribute}
        if attributes.get("gather_axis", 0) != 0 or attributes.get("quantize_axis") != 1 or len(gather.input) < 4:
            continue
        table, table_scales, table_zeros = (initializers.get(name) for name in
                                            (gather.input[0], gather.input[2], gather.input[3]))
        if table is None or table_scales is None or table_zeros is None or len(table.dims) != 2:
            continue
        vocab, depth = table.dims
        for matmul in (n for n in graph.node if n.op_type == "MatMulNBits" and len(n.input) >= 4):
            sizes = {a.name: helper.get_attribute_value(a) for a in matmul.attribute}
            if (sizes.get("N"), sizes.get("K"), sizes.get("block_size")) != (vocab, depth, attributes.get("block_size")):
                continue
            codes, scales, zeros = (initializers.get(name) for name in matmul.input[1:4])
            if codes is None or scales is None or zeros is None or len(codes.raw_data) != len(table.raw_data) \
                    or len(zeros.raw_data) != len(table_zeros.raw_data):
                continue
            agree = np.mean(np.frombuffer(codes.raw_data, np.uint8) == np.frombuffer(table.raw_data, np.uint8))
            if agree < 0.99:
                continue
            codes.raw_data = table.raw_data
            zeros.raw_data = table_zeros.raw_data
            widened = numpy_helper.to_array(table_scales).astype(np.float32).reshape(numpy_helper.to_array(scales).shape)
            scales.CopyFrom(numpy_helper.from_array(widened, scales.name))
            return True
    return False


def weight_fingerprint(matrix: np.ndarray) -> str:
    """Identity of a constant matrix by content (the exported graph renames a Linear's weight
    and stores it transposed as a MatMul's [K, N] input, but not a single value changes)."""
    import hashlib

    array = np.ascontiguousarray(matrix, dtype=np.float32)
    return f"{array.shape}:{hashlib.sha1(array.tobytes()).hexdigest()}"


def linear_fingerprint(weight) -> str:
    """``weight_fingerprint`` of a torch Linear weight [N, K] as a graph's MatMul reads it."""
    return weight_fingerprint(weight.detach().float().T.contiguous().numpy())


def matmul_codes_by_output(graph_model, codes_by_weight: dict) -> dict:
    """{output name of a MatMul: its ``BlockQuantized`` codes} for the graph's MatMuls whose
    constant weight is one of ``codes_by_weight`` (keyed by ``linear_fingerprint``)."""
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in graph_model.graph.initializer}
    found = {}
    for node in graph_model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in initializers:
            continue
        key = weight_fingerprint(numpy_helper.to_array(initializers[node.input[1]]))
        if key in codes_by_weight:
            found[node.output[0]] = codes_by_weight[key]
    return found


def matmul_nbits_arrays(quantized) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``BlockQuantized`` [N, K] in ``MatMulNBits``' asymmetric layout: B uint8
    [N, K/block, block/2] (two codes a byte, low nibble first), scales float32 [N, K/block],
    zero points uint8 [N, ceil(K/block / 2)] (two a byte, low nibble first)."""
    import torch

    from edgeasr.quant.pack import pack_codes as pack

    rows, depth = quantized.codes.shape
    blocks = depth // quantized.block
    packed = pack(quantized.codes.to(torch.int16) - 8, 4).numpy().reshape(rows, blocks, quantized.block // 2)
    zeros = quantized.zero_points.to(torch.int16)
    if blocks % 2:
        zeros = torch.cat([zeros, torch.zeros(rows, 1, dtype=torch.int16)], dim=1)
    packed_zeros = pack(zeros - 8, 4).numpy().reshape(rows, -1)
    return packed, quantized.scales.float().numpy().reshape(rows, blocks), packed_zeros


def install_block_codes(graph_model, codes_by_output: dict) -> int:
    """Overwrite, in place, the 4-bit weights of every ``MatMulNBits`` whose output is in
    ``codes_by_output`` with those codes (same block size and layout, so the node stays as it
    is); returns how many were replaced."""
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    replaced = 0
    for node in graph.node:
        quantized = codes_by_output.get(node.output[0]) if node.op_type == "MatMulNBits" else None
        if quantized is None:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rows, depth = quantized.codes.shape
        if (attributes.get("N"), attributes.get("K"), attributes.get("block_size"), attributes.get("bits")) != \
                (rows, depth, quantized.block, 4) or len(node.input) < 4:
            raise ValueError(f"{node.name}: not an asymmetric 4-bit [{depth} x {rows}] product in blocks of "
                             f"{quantized.block}")
        for name, array in zip(node.input[1:4], matmul_nbits_arrays(quantized)):
            old = numpy_helper.to_array(initializers[name])
            if old.shape != array.shape or old.dtype != array.dtype:
                raise ValueError(f"{name}: stored as {old.dtype}{list(old.shape)}, codes give {array.dtype}{list(array.shape)}")
            initializers[name].CopyFrom(numpy_helper.from_array(array, name))
        replaced += 1
    return replaced

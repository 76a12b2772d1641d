"""Graphs that hold the same weights store them once on disk.

The default model's export has two encoder graphs (the streaming chunk graph and the full-context
one of the second pass) over the same weights, and Whisper's decoder ties its token table to its
output projection. In a 4-bit deployment those copies are a third of the bytes. ONNX keeps large
tensors in an external file addressed by offset and length, so several graphs may point into one
file: each distinct tensor (by content) is written once, and every initializer with those bytes
refers to it. onnxruntime reads the file beside the graph, so nothing changes in how a graph is
loaded or run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: smaller tensors stay inside their graph (an external entry costs more than it saves)
MIN_BYTES = 4096


def share_weights(graphs: list[Path], data_name: str) -> dict:
    """Rewrite ``graphs`` (in one directory) so their large initializers live in ``data_name``
    beside them, each distinct content once. Returns {"tensors", "unique", "bytes"}."""
    import onnx

    directory = graphs[0].parent
    data_path = directory / data_name
    offsets: dict[str, tuple[int, int]] = {}
    stats = {"tensors": 0, "unique": 0, "bytes": 0}
    with open(data_path, "wb") as data:
        for graph_path in graphs:
            model = onnx.load(str(graph_path))
            for tensor in _initializers(model.graph):
                raw = tensor.raw_data
                if tensor.data_location == onnx.TensorProto.EXTERNAL or len(raw) < MIN_BYTES:
                    continue
                key = hashlib.sha256(raw).hexdigest()
                if key not in offsets:
                    padding = (-data.tell()) % 64  # aligned, so the file can be memory-mapped
                    data.write(b"\0" * padding)
                    offsets[key] = (data.tell(), len(raw))
                    data.write(raw)
                    stats["unique"] += 1
                    stats["bytes"] += len(raw)
                offset, length = offsets[key]
                del tensor.external_data[:]
                for name, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = name, value
                tensor.data_location = onnx.TensorProto.EXTERNAL
                tensor.ClearField("raw_data")
                stats["tensors"] += 1
            onnx.save(model, str(graph_path))
    return stats


def _initializers(graph):
    """Initializers of ``graph`` and of its subgraphs (If / Loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.ByteSize():
                yield from _initializers(attribute.g)
            for sub in attribute.graphs:
                yield from _initializers(sub)


def graph_bytes(graphs: list[Path]) -> int:
    """Bytes on disk that loading ``graphs`` reads: their files plus each external tensor they
    point to, counted once however many of them share it."""
    import onnx

    total, seen = 0, set()
    for path in graphs:
        total += path.stat().st_size
        model = onnx.load(str(path), load_external_data=False)
        for tensor in _initializers(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            entry = {e.key: e.value for e in tensor.external_data}
            key = (entry["location"], entry.get("offset", "0"))
            if key not in seen:
                seen.add(key)
                total += int(entry.get("length", 0)) or (path.parent / entry["location"]).stat().st_size
    return total

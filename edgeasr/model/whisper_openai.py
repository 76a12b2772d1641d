"""Read OpenAI's own Whisper checkpoints (the ``.pt`` files openai-whisper downloads).

Why: many Whisper weights exist only in that format (fine-tunes saved by the openai-whisper
code, the original release files); importing them here needs neither that package nor a
conversion to CTranslate2 first.

A checkpoint is a torch file holding ``{"dims": {...}, "model_state_dict": {...}}``. It is read
with ``torch.load(..., weights_only=True)``: tensors and plain containers only, never arbitrary
pickled objects. Its parameter names follow openai-whisper's modules::

    encoder.conv1 / conv2 (.weight, .bias)       encoder.positional_embedding (sinusoids)
    encoder.blocks.N.attn.{query,key,value,out}  (key has no bias)
    encoder.blocks.N.{attn_ln, mlp.0, mlp.2, mlp_ln}                    encoder.ln_post
    decoder.token_embedding.weight               decoder.positional_embedding (learned)
    decoder.blocks.N.{attn, attn_ln, cross_attn, cross_attn_ln, mlp.0, mlp.2, mlp_ln}  decoder.ln

They are renamed to the CTranslate2 variables ``load_whisper`` already maps (fused q/k/v rows,
a zero key bias), so there is one mapping from Whisper to edgeasr's modules. Every name and
shape is checked against ``dims`` first, so a bad file fails in one line naming it.

The checkpoint carries no vocabulary. Special token ids come from the vocabulary size:
51864 is the English-only tokenizer (the ``.en`` models), 51865 the multilingual one, 51866
large-v3's (one more language). CTranslate2's suppress lists are not in it either, so
``WhisperTokens.suppress_ids`` stay empty.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from edgeasr.errors import EdgeAsrError
from edgeasr.model.whisper import WhisperTokens, WhisperWeights, load_whisper

DIMS = ("n_mels", "n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
        "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")

#: Non-persistent buffers of openai-whisper's model that a state dict saved some other way may
#: still hold: the decoder's causal mask and the word-timestamp alignment heads. Not weights.
IGNORED = ("decoder.mask", "alignment_heads")

#: n_vocab -> special token ids (names as in WhisperTokens).
TOKEN_IDS = {
    51864: dict(eot=50256, sot=50257, translate=50357, transcribe=50358, no_timestamps=50362,
                timestamp_begin=50363),
    51865: dict(eot=50257, sot=50258, translate=50358, transcribe=50359, no_timestamps=50363,
                timestamp_begin=50364, language=50259),
    51866: dict(eot=50257, sot=50258, translate=50359, transcribe=50360, no_timestamps=50364,
                timestamp_begin=50365, language=50259),
}


def whisper_tokens(n_vocab: int) -> WhisperTokens | None:
    """The special ids of Whisper's tokenizer with ``n_vocab`` tokens (None when unknown)."""
    ids = TOKEN_IDS.get(n_vocab)
    return WhisperTokens(**ids) if ids is not None else None


def _block_shapes(prefix: str, d: int, cross: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for attn in ("attn", "cross_attn") if cross else ("attn",):
        for proj in ("query", "key", "value", "out"):
            shapes[f"{prefix}.{attn}.{proj}.weight"] = (d, d)
            if proj != "key":
                shapes[f"{prefix}.{attn}.{proj}.bias"] = (d,)
        shapes[f"{prefix}.{attn}_ln.weight"] = shapes[f"{prefix}.{attn}_ln.bias"] = (d,)
    shapes[f"{prefix}.mlp.0.weight"], shapes[f"{prefix}.mlp.0.bias"] = (4 * d, d), (4 * d,)
    shapes[f"{prefix}.mlp.2.weight"], shapes[f"{prefix}.mlp.2.bias"] = (d, 4 * d), (d,)
    shapes[f"{prefix}.mlp_ln.weight"] = shapes[f"{prefix}.mlp_ln.bias"] = (d,)
    return shapes


def expected_shapes(dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Every parameter of an openai-whisper model with these dims, and its shape."""
    d, t = dims["n_audio_state"], dims["n_text_state"]
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.conv1.weight": (d, dims["n_mels"], 3), "encoder.conv1.bias": (d,),
        "encoder.conv2.weight": (d, d, 3), "encoder.conv2.bias": (d,),
        "encoder.positional_embedding": (dims["n_audio_ctx"], d),
        "encoder.ln_post.weight": (d,), "encoder.ln_post.bias": (d,),
        "decoder.token_embedding.weight": (dims["n_vocab"], t),
        "decoder.positional_embedding": (dims["n_text_ctx"], t),
        "decoder.ln.weight": (t,), "decoder.ln.bias": (t,),
    }
    for i in range(dims["n_audio_layer"]):
        shapes.update(_block_shapes(f"encoder.blocks.{i}", d, cross=False))
    for i in range(dims["n_text_layer"]):
        shapes.update(_block_shapes(f"decoder.blocks.{i}", t, cross=True))
    return shapes


def _read(path: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """The checkpoint's dims and state dict, checked to be what an openai-whisper model saves."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols in foreign files
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EdgeAsrError(f"{path}: no such file") from None
    except OSError as error:
        raise EdgeAsrError(f"{path}: cannot read ({error.strerror or error})") from None
    except Exception as error:  # torch raises many types for foreign files: report, never unpickle
        text = str(error)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise EdgeAsrError(f"{path}: holds a Python object ({found.group(1)}), not only tensors "
                               f"and plain containers; it is not unpickled, for safety (save dims "
                               f"and model_state_dict as plain dicts of numbers and tensors)") from None
        detail = "" if "Weights only load failed" in text else text.strip().split("\n")[0][:100]
        raise EdgeAsrError(f"{path}: not a torch checkpoint"
                           + (f" ({detail})" if detail else f" ({type(error).__name__})")) from None
    if not isinstance(checkpoint, dict):
        raise EdgeAsrError(f"{path}: not an OpenAI Whisper checkpoint (a {type(checkpoint).__name__}, "
                           f"not a dict with dims and model_state_dict)")
    missing = [key for key in ("dims", "model_state_dict") if not isinstance(checkpoint.get(key), dict)]
    if missing:
        raise EdgeAsrError(f"{path}: not an OpenAI Whisper checkpoint (no {' or '.join(missing)} dict)")
    raw_dims, state = checkpoint["dims"], checkpoint["model_state_dict"]
    absent = [key for key in DIMS if key not in raw_dims]
    if absent:
        raise EdgeAsrError(f"{path}: dims lack {', '.join(absent)}")
    dims: dict[str, int] = {}
    for key in DIMS:
        value = raw_dims[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EdgeAsrError(f"{path}: dims {key} is {value!r}, not a positive integer")
        dims[key] = value
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise EdgeAsrError(f"{path}: n_audio_state {dims['n_audio_state']} differs from n_text_state "
                           f"{dims['n_text_state']} (Whisper's decoder attends to the encoder's width)")
    for side in ("audio", "text"):
        if dims[f"n_{side}_state"] % dims[f"n_{side}_head"]:
            raise EdgeAsrError(f"{path}: n_{side}_state {dims[f'n_{side}_state']} is not a multiple "
                               f"of n_{side}_head {dims[f'n_{side}_head']}")
    return dims, state


def _check_state(path: Path, dims: dict[str, int], state: dict) -> dict[str, torch.Tensor]:
    expected = expected_shapes(dims)
    state = {k: v for k, v in state.items() if k not in IGNORED}
    unknown = sorted(set(state) - set(expected))
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise EdgeAsrError(f"{path}: unknown parameter(s) {', '.join(map(str, unknown[:3]))}{more} "
                           f"for an OpenAI Whisper checkpoint")
    missing = [name for name in expected if name not in state]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise EdgeAsrError(f"{path}: missing parameter(s) {', '.join(missing[:3])}{more}")
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise EdgeAsrError(f"{path}: {name} is a {type(tensor).__name__}, not a tensor")
        if not tensor.is_floating_point():
            raise EdgeAsrError(f"{path}: {name} is {str(tensor.dtype).replace('torch.', '')}, "
                               f"not a float tensor")
        if tuple(tensor.shape) != shape:
            raise EdgeAsrError(f"{path}: {name} has shape {list(tensor.shape)}, dims say {list(shape)}")
    return state


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """float16 / float32 as they are (no copy); other float types (bfloat16) widened."""
    tensor = tensor.detach()
    if tensor.dtype not in (torch.float16, torch.float32):
        tensor = tensor.float()
    return tensor.numpy()


def openai_to_ctranslate2(dims: dict[str, int], state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A checked OpenAI state dict as the CTranslate2 Whisper variables ``load_whisper`` maps."""
    out: dict[str, np.ndarray] = {}
    a = {name: _numpy(tensor) for name, tensor in state.items()}

    def linear(source: str, target: str) -> None:
        out[f"{target}/weight"], out[f"{target}/bias"] = a[f"{source}.weight"], a[f"{source}.bias"]

    def norm(source: str, target: str) -> None:
        out[f"{target}/gamma"], out[f"{target}/beta"] = a[f"{source}.weight"], a[f"{source}.bias"]

    def fused(source: str, projections: tuple[str, ...], target: str) -> None:
        """Rows of several projections stacked, as CT2 stores them; the key gets a zero bias."""
        weights = [a[f"{source}.{p}.weight"] for p in projections]
        biases = [a[f"{source}.{p}.bias"] if p != "key" else np.zeros_like(a[f"{source}.value.bias"])
                  for p in projections]
        out[f"{target}/weight"] = np.concatenate(weights)
        out[f"{target}/bias"] = np.concatenate(biases)

    def ffn(source: str, target: str) -> None:
        norm(f"{source}.mlp_ln", f"{target}/ffn/layer_norm")
        linear(f"{source}.mlp.0", f"{target}/ffn/linear_0")
        linear(f"{source}.mlp.2", f"{target}/ffn/linear_1")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = a["encoder.positional_embedding"]
    out["encoder/num_heads"] = np.array(dims["n_audio_head"], np.int32)
    for i in range(dims["n_audio_layer"]):
        src, dst = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        norm(f"{src}.attn_ln", f"{dst}/self_attention/layer_norm")
        fused(f"{src}.attn", ("query", "key", "value"), f"{dst}/self_attention/linear_0")
        linear(f"{src}.attn.out", f"{dst}/self_attention/linear_1")
        ffn(src, dst)
    norm("encoder.ln_post", "encoder/layer_norm")

    out["decoder/embeddings/weight"] = a["decoder.token_embedding.weight"]
    out["decoder/position_encodings/encodings"] = a["decoder.positional_embedding"]
    out["decoder/num_heads"] = np.array(dims["n_text_head"], np.int32)
    for i in range(dims["n_text_layer"]):
        src, dst = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        norm(f"{src}.attn_ln", f"{dst}/self_attention/layer_norm")
        fused(f"{src}.attn", ("query", "key", "value"), f"{dst}/self_attention/linear_0")
        linear(f"{src}.attn.out", f"{dst}/self_attention/linear_1")
        norm(f"{src}.cross_attn_ln", f"{dst}/attention/layer_norm")
        linear(f"{src}.cross_attn.query", f"{dst}/attention/linear_0")
        fused(f"{src}.cross_attn", ("key", "value"), f"{dst}/attention/linear_1")
        linear(f"{src}.cross_attn.out", f"{dst}/attention/linear_2")
        ffn(src, dst)
    norm("decoder.ln", "decoder/layer_norm")
    return out


def load_openai_checkpoint(path: str | os.PathLike[str]) -> WhisperWeights:
    """An OpenAI Whisper ``.pt`` checkpoint as edgeasr configs and state_dicts (float32), with
    the special tokens its vocabulary size implies (None for an unknown size). Raises
    ``EdgeAsrError`` (one line, naming the file) for a missing or non-torch file, one that needs
    arbitrary unpickling, missing dims or model_state_dict, and unknown, missing, non-float or
    wrongly shaped parameters."""
    path = Path(path)
    if path.is_dir():
        raise EdgeAsrError(f"{path}: a directory, not an OpenAI Whisper .pt checkpoint")
    dims, state = _read(path)
    state = _check_state(path, dims, state)
    try:
        weights = load_whisper(openai_to_ctranslate2(dims, state))
    except EdgeAsrError as error:  # e.g. positions that are not Whisper's sinusoids
        message = str(error).removeprefix("Whisper variables: ")
        raise EdgeAsrError(f"{path}: {message}") from None
    tokens = whisper_tokens(dims["n_vocab"])
    if weights.decoder_config is not None and tokens is not None:
        weights.decoder_config.eot_id = tokens.eot
    weights.tokens = tokens
    return weights

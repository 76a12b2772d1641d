"""A model directory: everything needed to turn audio into text, and nothing that runs code.

    model.pt        state_dict (tensors only; loaded with weights_only=True)
    config.yaml     model config, front end (``features``), streaming defaults, format version,
                    and optionally ``pretrained``: a pinned package file that supplies the
                    pretrained parts' weights (edgeasr.model.pretrained), so model.pt holds only
                    what was trained
    tokenizer/      the tokenizer the model was trained with
    whisper/        Whisper-based models: Whisper's tokenizer.json and tokens.json (special ids)
    card.md         optional model card

Chunk size and left context travel with the model (``streaming`` in config.yaml), so a user never
has to remember the settings a model was trained or tuned for.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from edgeasr.audio.frontend import Frontend, frontend_from_dict
from edgeasr.errors import EdgeAsrError
from edgeasr.fileio import atomic_save_torch, atomic_write_text
from edgeasr.model.asr import ASRModel, ModelConfig, inference_state
from edgeasr.model.pretrained import PretrainedSource, drop_pretrained
from edgeasr.text.tokenizer import Tokenizer

FORMAT_VERSION = 1
#: Where `--model default` points: the shipped model, package data of edgeasr (so a wheel or a
#: `pip install .` carries it; the repository's models/default is a link to it).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "default"


@dataclass
class StreamingDefaults:
    chunk_size: int = 16
    num_left_chunks: int = -1


@dataclass
class PackagedModel:
    model: ASRModel
    tokenizer: Tokenizer
    #: the front end (edgeasr.audio.frontend): Kaldi fbank or Whisper log-mel
    features: Frontend
    streaming: StreamingDefaults = field(default_factory=StreamingDefaults)
    directory: Path | None = None
    #: where the pretrained parts' weights come from (None: model.pt holds every weight)
    pretrained: PretrainedSource | None = None

    @property
    def whisper_dir(self) -> Path | None:
        if self.directory is None or not (self.directory / "whisper" / "tokenizer.json").exists():
            return None
        return self.directory / "whisper"

    @functools.cached_property
    def whisper_tokens(self):
        """Whisper's special token ids (edgeasr.model.whisper.WhisperTokens), or None."""
        import json

        from edgeasr.model.whisper import WhisperTokens

        if self.whisper_dir is None:
            return None
        return WhisperTokens(**json.loads((self.whisper_dir / "tokens.json").read_text()))

    @functools.cached_property
    def whisper_tokenizer(self):
        from edgeasr.text.whisper_tokenizer import WhisperTokenizer

        if self.whisper_dir is None:
            raise EdgeAsrError(f"{self.directory}: no whisper/tokenizer.json (needed by the Whisper decoder)")
        return WhisperTokenizer(self.whisper_dir / "tokenizer.json", eot=self.whisper_tokens.eot)

    @property
    def whisper_prompt(self) -> list[int]:
        return self.whisper_tokens.prompt()


def save_model_dir(
    directory: str | os.PathLike[str],
    model: ASRModel,
    tokenizer: Tokenizer,
    features: Frontend,
    streaming: StreamingDefaults | None = None,
    state_dict: dict | None = None,
    half: bool = False,
    pretrained: PretrainedSource | None = None,
    whisper_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a model directory. ``half`` stores float weights as float16 (half the bytes; they
    load back into the float32 model), for shipping float models; quantized models always keep
    their packed codes and float32 scales. With ``pretrained``, tensors equal to the source's are
    left out of model.pt (they load from the source). ``whisper_dir``: Whisper's tokenizer files
    to copy in (a Whisper-decoder model needs them)."""
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    streaming = streaming or StreamingDefaults()
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "features": features.to_dict(),
        "streaming": {"chunk_size": streaming.chunk_size, "num_left_chunks": streaming.num_left_chunks},
    }
    state = inference_state(state_dict if state_dict is not None else model.state_dict())
    if pretrained is not None:
        config["pretrained"] = pretrained.to_dict()
        state = drop_pretrained(state, pretrained.state_dict())
    if whisper_dir is not None and Path(whisper_dir).resolve() != (directory / "whisper").resolve():
        (directory / "whisper").mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokens.json"):
            shutil.copyfile(Path(whisper_dir) / name, directory / "whisper" / name)
    if half and model.config.quantization is None:
        state = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
        config["weights_dtype"] = "float16"
    # (small tensors are merged by their place in the model's state; with pretrained parts left
    # out that place is not known at load, so they stay apart)
    atomic_save_torch(directory / "model.pt", pack_quantized_weights(model, state, merge_small=pretrained is None))
    atomic_write_text(directory / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    tokenizer.save(directory / "tokenizer")
    return directory


def pack_quantized_weights(model: ASRModel, state: dict, merge_small: bool = True) -> dict:
    """Replace each quantized layer's float weight in ``state`` by its integer codes, packed
    (8-bit: a byte each, 4-bit: two per byte, 2-bit: four per byte), and its per-channel scales.

    So the model file of a 4-bit model really is about 8x smaller than float; the loader turns
    codes and scales back into exactly the weights the fake-quant layers compute with.
    """
    from edgeasr.quant.fake_quant import quantize_weight
    from edgeasr.quant.pack import pack_codes
    from edgeasr.quant.qat import quantized_layers, transform_weight

    for name, spec in quantized_layers(model).items():
        if f"{name}.weight" not in state:
            continue  # left out: equal to a pretrained part's, which loads and is rounded as it runs
        weight = transform_weight(state.pop(f"{name}.weight"), spec.weight_transform)
        codes, scale = quantize_weight(weight, spec.weight_bits)
        state[f"{name}.weight_packed"] = pack_codes(codes, spec.weight_bits)
        state[f"{name}.weight_scale"] = scale.reshape(-1).float()
    return _merge_small_tensors(state) if merge_small and quantized_layers(model) else state


#: Tensors up to this many elements are stored together in one flat tensor in quantized model
#: files: each stored tensor costs a few hundred bytes of container overhead, which for a model
#: of packed codes with a thousand tiny scales, ranges and biases is a few percent of the file.
#: Which tensors they are, in which order, follows from the model itself (its state in order,
#: each quantized weight replaced by codes and scales), so no index is stored.
_SMALL = 4096
_SMALL_KEY = "__small_tensors__"


def _is_small(tensor: torch.Tensor) -> bool:
    return tensor.numel() <= _SMALL and tensor.dtype in (torch.float32, torch.bool)


def _merge_small_tensors(state: dict) -> dict:
    small = [k for k, v in state.items() if _is_small(v)]
    if not small:
        return state
    merged = {k: v for k, v in state.items() if k not in set(small)}
    merged[_SMALL_KEY] = torch.cat([state[k].reshape(-1).float() for k in small])
    return merged


def _packed_layout(model: ASRModel) -> list[tuple[str, torch.Size, torch.dtype]]:
    """(name, shape, dtype) of the state a quantized model file holds, in order, before merging."""
    from edgeasr.quant.qat import quantized_layers

    layout = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    for name in quantized_layers(model):
        shape, _ = layout.pop(f"{name}.weight")
        layout[f"{name}.weight_packed"] = (torch.Size([0]), torch.uint8)  # never small-float
        layout[f"{name}.weight_scale"] = (torch.Size([shape[0]]), torch.float32)
    return [(k, shape, dtype) for k, (shape, dtype) in layout.items()]


def _split_small_tensors(model: ASRModel, state: dict) -> dict:
    if _SMALL_KEY not in state:
        return state
    state = dict(state)
    flat = state.pop(_SMALL_KEY)
    offset = 0
    for name, shape, dtype in _packed_layout(model):
        if shape.numel() <= _SMALL and dtype in (torch.float32, torch.bool) and name not in state:
            state[name] = flat[offset : offset + shape.numel()].view(shape).to(dtype)
            offset += shape.numel()
    if offset != flat.numel():
        raise ValueError("the model file's small tensors do not match the model's layout")
    return state


def unpack_quantized_weights(model: ASRModel, state: dict) -> dict:
    """The inverse of ``pack_quantized_weights`` (a float state passes through unchanged)."""
    from edgeasr.quant.pack import unpack_codes
    from edgeasr.quant.qat import quantized_layers

    state = _split_small_tensors(model, dict(state))
    for name, spec in quantized_layers(model).items():
        packed, scale = state.pop(f"{name}.weight_packed", None), state.pop(f"{name}.weight_scale", None)
        if packed is None or scale is None:
            continue  # a float weight (e.g. a QAT checkpoint's master weights) loads as it is
        layer = model.get_submodule(name)
        shape = layer.weight.shape
        codes = unpack_codes(packed, spec.weight_bits, shape.numel()).view(shape)
        state[f"{name}.weight"] = codes.float() * scale.view(-1, *([1] * (len(shape) - 1)))
        layer.weight_transform = None  # the codes already hold the transformed weights
    return state


def resolve_model_dir(name_or_path: str | os.PathLike[str]) -> Path:
    if str(name_or_path) == "default":
        return DEFAULT_MODEL_DIR
    return Path(name_or_path)


def load_model_dir(name_or_path: str | os.PathLike[str]) -> PackagedModel:
    directory = resolve_model_dir(name_or_path)
    config_path = directory / "config.yaml"
    weights_path = directory / "model.pt"
    if not directory.is_dir():
        raise EdgeAsrError(f"{directory}: model directory not found")
    for needed in (config_path, weights_path, directory / "tokenizer"):
        if not needed.exists():
            raise EdgeAsrError(f"{directory}: not a model directory (missing {needed.name})")
    pretrained = None
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise EdgeAsrError(f"{config_path}: not readable YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise EdgeAsrError(f"{config_path}: not a model config (expected a mapping)")
    for section in ("model", "features"):
        if not isinstance(config.get(section), dict):
            raise EdgeAsrError(f"{config_path}: missing its '{section}' section")
    streaming = _streaming_defaults(config.get("streaming") or {}, config_path)
    tokenizer = Tokenizer.load(directory / "tokenizer")
    try:
        features = frontend_from_dict(config["features"])
    except (KeyError, TypeError, ValueError) as error:
        raise EdgeAsrError(f"{config_path}: bad 'features' section ({str(error).splitlines()[0]})") from None
    try:
        model = ASRModel(ModelConfig.from_dict(config["model"]))
    except (KeyError, TypeError, ValueError) as error:
        raise EdgeAsrError(f"{config_path}: bad 'model' section ({str(error).splitlines()[0]})") from None
    if tokenizer.vocab_size != model.config.vocab_size:
        raise EdgeAsrError(f"{directory}: the tokenizer has {tokenizer.vocab_size} units but the model "
                           f"outputs {model.config.vocab_size}")
    if weights_path.stat().st_size == 0:
        raise EdgeAsrError(f"{weights_path}: empty file (an interrupted copy?)")
    try:
        loaded = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and EOF errors alike: never run or trust it
        kind = "refused: not plain tensors" if "weights_only" in str(error) or "Unpickl" in type(error).__name__ \
            else "not a readable torch weights file"
        raise EdgeAsrError(f"{weights_path}: {kind} ({type(error).__name__})") from None
    try:
        state = unpack_quantized_weights(model, loaded)
        if config.get("pretrained") is not None:
            pretrained = PretrainedSource.from_dict(config["pretrained"])
            state = {**pretrained.state_dict(), **state}
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise EdgeAsrError(f"{directory}: cannot load model ({str(error).splitlines()[0]})") from None
    model.eval()
    return PackagedModel(
        model=model,
        tokenizer=tokenizer,
        features=features,
        streaming=streaming,
        directory=directory,
        pretrained=pretrained,
    )


def _streaming_defaults(section: object, config_path: Path) -> StreamingDefaults:
    """The 'streaming' section, checked: known keys, a chunk of at least one frame."""
    if not isinstance(section, dict):
        raise EdgeAsrError(f"{config_path}: 'streaming' must be a mapping")
    known = {"chunk_size", "num_left_chunks"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise EdgeAsrError(f"{config_path}: unknown streaming setting(s) {', '.join(map(str, unknown))} "
                           f"(known: {', '.join(sorted(known))})")
    defaults = StreamingDefaults(**section)
    if not isinstance(defaults.chunk_size, int) or defaults.chunk_size < 1:
        raise EdgeAsrError(f"{config_path}: streaming chunk_size must be a whole number of frames >= 1")
    if not isinstance(defaults.num_left_chunks, int) or defaults.num_left_chunks < -1:
        raise EdgeAsrError(f"{config_path}: streaming num_left_chunks must be -1 (all) or >= 0")
    return defaults


#: State a quantized model adds to a float one, which starts fresh when a float model initializes it.
_FRESH_STATE = tuple(f".{q}.{b}" for q in ("input_quant", "output_quant") for b in ("low", "high", "initialized"))


def load_weights_from(model: ASRModel, name_or_path: str | os.PathLike[str] | PackagedModel,
                      layers: list[int] | None = None) -> PackagedModel:
    """Copy a packaged model's weights (CMVN included) into ``model``, whose config may add
    quantizers (their ranges start fresh), gate predictors or a transducer head (fresh) but must
    otherwise match; returns the source package. ``layers`` picks which source encoder layers
    fill the model's layers, in order (layer pruning: a shallower model from a deeper one).
    The source may be a package already loaded (the trainer reads its config first)."""
    source = name_or_path if isinstance(name_or_path, PackagedModel) else load_model_dir(name_or_path)
    state = source.model.state_dict()
    if layers is not None:
        available = len(source.model.encoder.layers)
        if len(layers) != len(model.encoder.layers) or any(not 0 <= i < available for i in layers):
            raise EdgeAsrError(f"init_layers must list {len(model.encoder.layers)} layer indices "
                               f"below {available}, got {layers}")
        state = {key: value for key, value in state.items() if not key.startswith("encoder.layers.")}
        for target, origin in enumerate(layers):
            prefix = f"encoder.layers.{origin}."
            for key, value in source.model.state_dict().items():
                if key.startswith(prefix):
                    state[f"encoder.layers.{target}.{key[len(prefix):]}"] = value
    # a head the source has but this config leaves out (``segmenter: null`` in a recipe that
    # fine-tunes from the default) is not copied
    for head in ("transducer", "cascade", "segmenter"):
        if getattr(model, head, None) is None and getattr(source.model, head, None) is not None:
            state = {key: value for key, value in state.items() if not key.startswith(f"{head}.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        detail = str(error).splitlines()[-1].strip()
        raise EdgeAsrError(f"{source.directory}: weights do not fit this config ({detail})") from None
    # Added parts start fresh: quantizer ranges, gate predictors, a transducer head, a cascade or
    # a segmenter beside the source's heads (trained on a frozen pretrained encoder).
    missing = [name for name in missing if not name.endswith(_FRESH_STATE) and not name.startswith("encoder.dynamic.")
               and not (name.startswith("transducer.") and getattr(source.model, "transducer", None) is None)
               and not (name.startswith("cascade.") and getattr(source.model, "cascade", None) is None)
               and not (name.startswith("segmenter.") and getattr(source.model, "segmenter", None) is None)]
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:3])
        raise EdgeAsrError(f"{source.directory}: the model does not match this config ({names} ...)")
    return source

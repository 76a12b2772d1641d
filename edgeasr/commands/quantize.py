"""``edgeasr quantize``: post-training quantization of a packaged model (calibrated on a manifest)."""

from __future__ import annotations

import argparse

import yaml

from edgeasr.errors import EdgeAsrError


def _bits(text: str) -> int | None:
    return None if text.lower() in ("none", "float", "0") else int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help="post-training quantization (calibrated activation ranges, per-channel weights)",
        description=(
            "Quantize a float model without training: weights per output channel to --weight-bits, "
            "activations per tensor to 8 bits with ranges calibrated on a manifest (min/max or "
            "percentile). Writes a model directory that loads, streams and exports like any other; "
            "its quantization settings are stored with it. For quantization-aware training use "
            "`edgeasr train` with a `model.quantization` section and `train.init_from`."
        ),
    )
    parser.add_argument("--model", default="default", help="float model directory (or 'default')")
    parser.add_argument("--out", required=True, help="directory for the quantized model")
    parser.add_argument("--calib", required=True, metavar="MANIFEST", help="JSONL manifest of calibration audio")
    parser.add_argument("--limit", type=int, default=100, help="calibration utterances (default: 100)")
    parser.add_argument("--observer", choices=("minmax", "percentile"), default="percentile",
                        help="activation range estimate (default: percentile)")
    parser.add_argument("--percentile", type=float, default=99.99, help="for --observer percentile (default: 99.99)")
    parser.add_argument("--weight-bits", type=int, default=8, choices=(8, 4, 2), help="weight bits (default: 8)")
    parser.add_argument("--act-bits", type=_bits, default=8, help="activation bits: 8 or none (default: 8)")
    parser.add_argument("--layers", metavar="YAML",
                        help="per-layer bit widths as YAML, e.g. '{\"encoder.layers.*.ff_*\": {weight_bits: 4}}'")
    parser.add_argument("--skip", action="append", default=None, metavar="PATTERN",
                        help="module name patterns left in float (default: the attention decoders)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from edgeasr.audio.features import compute_fbank
    from edgeasr.audio.io import load_audio
    from edgeasr.data.manifest import read_manifest
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir
    from edgeasr.quant.ptq import calibrate
    from edgeasr.quant.qat import QuantConfig, quantized_layers

    torch.set_num_threads(1)
    source = load_model_dir(args.model)
    if source.model.config.quantization is not None:
        raise EdgeAsrError(f"{source.directory}: already quantized; start from the float model")
    try:
        layers = yaml.safe_load(args.layers) if args.layers else {}
        quant = QuantConfig.from_dict({
            "weight_bits": args.weight_bits, "act_bits": args.act_bits, "layers": layers or {},
            "skip": args.skip if args.skip is not None else ["decoder.*", "reverse_decoder.*"],
        })
    except (ValueError, TypeError, yaml.YAMLError) as error:
        raise EdgeAsrError(f"quantization settings: {str(error).splitlines()[0]}") from None
    config = source.model.config.to_dict()
    config["quantization"] = quant.to_dict()
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, source.directory)
    utts = read_manifest(args.calib)[: args.limit]
    if not utts:
        raise EdgeAsrError(f"{args.calib}: no calibration utterances")

    def batches():
        for utt in utts:
            feats = compute_fbank(load_audio(utt.audio), source.features)
            yield feats.unsqueeze(0), torch.tensor([feats.size(0)])

    calibrated = calibrate(model, batches(), args.observer, args.percentile)
    model.eval()
    out = save_model_dir(args.out, model, source.tokenizer, source.features, source.streaming)
    count = len(quantized_layers(model))
    size = (out / "model.pt").stat().st_size
    print(f"quantized {count} layers (weights {args.weight_bits}-bit, activations "
          f"{args.act_bits or 'float'}; {calibrated} ranges from {len(utts)} utterances, {args.observer}) "
          f"-> {out} (model.pt {size / 1e6:.2f} MB with packed weight codes)")
    return 0

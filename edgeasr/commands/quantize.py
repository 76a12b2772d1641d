"""``edgeasr quantize``: post-training quantization of a packaged model (calibrated on a manifest)."""

from __future__ import annotations

import argparse
import json

import yaml

from edgeasr.errors import EdgeAsrError
from edgeasr.fileio import atomic_write_text
from edgeasr.progress import Progress


def _bits(text: str) -> int | None:
    return None if text.lower() in ("none", "float", "0") else int(text)


def _default_skip(model) -> list[str]:
    """Whisper's decoder stays float: it is only the second pass's, and its ONNX graphs get their
    own 4-bit blocks (``edgeasr export --int4``)."""
    return ["whisper_decoder.*"] if getattr(model, "whisper_decoder", None) is not None else []


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
    parser.add_argument("--act-bits", type=_bits, default=8, help="activation bits: 8, 4 or none (default: 8)")
    parser.add_argument("--layers", metavar="YAML",
                        help="per-layer bit widths as YAML, e.g. '{\"encoder.layers.*.ff_*\": {weight_bits: 4}}'")
    parser.add_argument("--skip", action="append", default=None, metavar="PATTERN",
                        help="module name patterns left in float (default: Whisper's decoder, which its "
                             "ONNX export quantizes on its own; the attention decoders get quantized weights "
                             "and float activations)")
    search = parser.add_argument_group("mixed-precision search")
    search.add_argument("--search", action="store_true",
                        help="choose per-layer weight bits for --budget-kb by sensitivity (writes OUT/search.json)")
    search.add_argument("--budget-kb", type=float, help="packed weight bytes of the quantized layers, in KiB")
    search.add_argument("--search-bits", default="8,4,2", help="candidate weight bits (default: 8,4,2)")
    search.add_argument("--search-eval", metavar="MANIFEST", help="also measure WER of Pareto points on this manifest")
    search.add_argument("--search-points", type=int, default=5, help="Pareto points measured with --search-eval (default: 5)")
    search.add_argument("--search-limit", type=int, default=50, help="utterances for --search-eval (default: 50)")
    parser.add_argument("--progress", action="store_true",
                        help="report the search's progress on standard error (automatic on a terminal)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from edgeasr.audio.io import load_audio
    from edgeasr.data.manifest import read_manifest
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir
    from edgeasr.quant.ptq import calibrate
    from edgeasr.quant.qat import DECODER_WEIGHT_ONLY, QuantConfig, quantized_layers

    torch.set_num_threads(1)
    source = load_model_dir(args.model)
    if source.model.config.quantization is not None:
        raise EdgeAsrError(f"{source.directory}: already quantized; start from the float model")
    try:
        layers = yaml.safe_load(args.layers) if args.layers else {}
        quant = QuantConfig.from_dict({
            "weight_bits": args.weight_bits, "act_bits": args.act_bits,
            "layers": {**DECODER_WEIGHT_ONLY, **(layers or {})},
            "skip": args.skip if args.skip is not None else _default_skip(source.model),
        })
    except (ValueError, TypeError, yaml.YAMLError) as error:
        raise EdgeAsrError(f"quantization settings: {str(error).splitlines()[0]}") from None
    utts = read_manifest(args.calib)[: args.limit]
    if not utts:
        raise EdgeAsrError(f"{args.calib}: no calibration utterances")

    def batches():
        for utt in utts:
            feats = source.features.compute(load_audio(utt.audio, sample_rate=source.features.sample_rate))
            yield feats.unsqueeze(0), torch.tensor([feats.size(0)])

    def build(quant_config: QuantConfig):
        config = source.model.config.to_dict()
        config["quantization"] = quant_config.to_dict()
        model = ASRModel(ModelConfig.from_dict(config))
        load_weights_from(model, source.directory)
        return model, calibrate(model, batches(), args.observer, args.percentile)

    report = None
    if args.search:
        quant, report = _search(args, source, list(batches())[:20], quant, build)
    model, calibrated = build(quant)
    model.eval()
    # parts still equal to the pretrained package's load from it, as the source's did
    out = save_model_dir(args.out, model, source.tokenizer, source.features, source.streaming,
                         pretrained=source.pretrained, whisper_dir=source.whisper_dir)
    if report is not None:
        atomic_write_text(out / "search.json", json.dumps(report, indent=1))
        chosen = report["chosen"]
        print(f"search: {len(report['pareto'])} Pareto points; chosen {chosen['bytes'] / 1024:.1f} KiB of weights "
              f"(budget {args.budget_kb:g} KiB), bits {sorted(set(chosen['allocation'].values()), reverse=True)}")
    count = len(quantized_layers(model))
    size = (out / "model.pt").stat().st_size
    print(f"quantized {count} layers (weights {args.weight_bits}-bit, activations "
          f"{args.act_bits or 'float'}; {calibrated} ranges from {len(utts)} utterances, {args.observer}) "
          f"-> {out} (model.pt {size / 1e6:.2f} MB with packed weight codes)")
    return 0


def _search(args, source, batches, base, build):
    """Sensitivity, the greedy Pareto path, the allocation for the budget, optional WER checks."""
    from edgeasr.audio.io import load_audio
    from edgeasr.data.manifest import read_manifest
    from edgeasr.evaluate.accuracy import decode_all_modes
    from edgeasr.model.package import PackagedModel
    from edgeasr.quant.search import allocation_config, choose, greedy_pareto, layer_groups, measure, sensitivity

    if args.budget_kb is None or args.budget_kb <= 0:
        raise EdgeAsrError("--search needs a positive --budget-kb")
    try:
        bits = tuple(sorted({int(b) for b in args.search_bits.split(",")}, reverse=True))
    except ValueError:
        bits = ()
    if not bits or not all(b in (8, 4, 2) for b in bits):
        raise EdgeAsrError(f"--search-bits takes 8, 4 and/or 2, not '{args.search_bits}'")
    groups = layer_groups(source.model)
    trials = Progress.auto("quantize --search: sensitivity", len(groups) * len(bits), "trials",
                           getattr(args, "progress", False))
    table = sensitivity(source.model, batches, groups, bits, progress=trials.update)
    path = greedy_pareto(source.model, groups, table, bits)
    try:
        chosen = choose(path, int(args.budget_kb * 1024))
    except ValueError as error:
        raise EdgeAsrError(str(error)) from None
    measured = []
    if args.search_eval:
        utts = read_manifest(args.search_eval)[: args.search_limit]
        audio = [load_audio(u.audio) for u in utts]
        step = max(1, len(path) // max(1, args.search_points - 1))
        picks = sorted({*range(0, len(path), step), len(path) - 1, path.index(chosen)})

        def evaluate(point):
            model, _ = build(allocation_config(groups, point.allocation, base.act_bits, base.skip))
            packaged = PackagedModel(model.eval(), source.tokenizer, source.features, source.streaming)
            first = decode_all_modes(packaged, utts, audio, source.streaming.chunk_size)["ctc_prefix_beam"]
            return {"wer": first["wer"], "cer": first["cer"], "chosen": point is chosen}

        checks = Progress.auto("quantize --search: WER of Pareto points", len(picks), "points",
                               getattr(args, "progress", False))
        measured = measure([path[i] for i in picks], evaluate, progress=checks.update)
    report = {
        "budget_bytes": int(args.budget_kb * 1024),
        "bits": list(bits),
        "sensitivity": {g: {str(b): round(v, 6) for b, v in costs.items()} for g, costs in table.items()},
        "pareto": [{"bytes": p.bytes, "predicted_divergence": round(p.predicted_divergence, 6), "allocation": p.allocation}
                   for p in path],
        "chosen": {"bytes": chosen.bytes, "predicted_divergence": chosen.predicted_divergence, "allocation": chosen.allocation},
        "measured": measured,
    }
    return allocation_config(groups, chosen.allocation, base.act_bits, base.skip), report

"""The training loop: single process, or data-parallel under ``torchrun`` (gloo on CPU).

Resumable by construction: batches are a pure function of (seed, epoch) and every random draw
(chunk size, speed factor, SpecAugment) is seeded from the global step, so a run restarted from
its last checkpoint continues exactly where it stopped. Only rank 0 writes files.

Inputs: ``<data>/train.jsonl`` and ``<data>/dev.jsonl`` manifests. Outputs under ``<out>``:
tokenizer/, checkpoints/step-*.pt, train_log.csv, and model/ (the averaged, packaged model).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from edgeasr.audio.augment import spec_augment
from edgeasr.audio.cmvn import CMVNAccumulator
from edgeasr.audio.frontend import frontend_from_dict
from edgeasr.data.batching import DurationBatchSampler
from edgeasr.data.feature_store import FeatureStore, build_feature_store
from edgeasr.data.manifest import Utterance, read_manifest
from edgeasr.errors import DataError, EdgeAsrError
from edgeasr.model.asr import IGNORE_ID, ASRModel, ModelConfig, inference_state
from edgeasr.model.package import StreamingDefaults, load_model_dir, load_weights_from, save_model_dir
from edgeasr.model.whisper import PACKAGED_WHISPER
from edgeasr.model.whisper_import import PACKAGED_PREFIX, packaged_model_dir
from edgeasr.text.tokenizer import Tokenizer
from edgeasr.train.checkpoint import (
    average_checkpoints,
    checkpoints_to_average,
    list_checkpoints,
    newest_intact_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from edgeasr.train.schedule import warmup_lr


@dataclass
class TrainConfig:
    peak_lr: float = 1e-3
    warmup_steps: int = 2000
    max_steps: int = 20000
    #: Also stop (checkpoint and package) after this many minutes of this process's training;
    #: 0 = no limit. Handy to fit a run into a session; the step count then depends on the machine.
    max_minutes: float = 0.0
    #: Padded feature frames per batch and process (batch size x longest utterance).
    max_frames: int = 20000
    max_batch_size: int | None = None
    accum_grad: int = 1
    grad_clip: float = 5.0
    weight_decay: float = 1e-6
    checkpoint_every: int = 500
    keep_checkpoints: int = 5
    #: how many checkpoints the packaged model averages, chosen by ``average_by``:
    #: "last" (newest) or "best" (lowest dev CER; needs eval_every == checkpoint_every multiples)
    average_last: int = 5
    average_by: str = "last"
    log_every: int = 20
    eval_every: int = 1000
    eval_utts: int = 100
    seed: int = 0
    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    spec_augment: dict = field(
        default_factory=lambda: {"num_freq_masks": 2, "max_freq_width": 10, "num_time_masks": 2, "max_time_width": 40}
    )
    #: Augmentation is phased in linearly over these steps (helps leave the blank plateau).
    augment_warmup_steps: int = 600
    #: First epoch in order of increasing length ("SortaGrad"): short, easy utterances first help
    #: a CTC model leave the all-blank plateau sooner.
    sortagrad: bool = False
    #: Start from this model directory's weights, tokenizer and CMVN (fine-tuning, e.g. QAT from a
    #: float model). Layers the new config adds (quantizer ranges) start fresh; shapes must match.
    #: ``whisper:tiny.en`` (or ``whisper:base``) = that Whisper from its pinned package(s), imported (linked) into the
    #: experiment's ``init/`` on the first run, so a recipe reproduces with one command.
    init_from: str | None = None
    #: With init_from: weight of a distillation term pulling this encoder's output towards the
    #: init_from model's (run frozen and float on the same batch; ``ASRModel.set_teacher``), so
    #: a quantization-aware or fine-tuned encoder stays where a frozen pretrained decoder reads it.
    distill_weight: float = 0.0
    #: A frozen teacher model directory (or ``whisper:tiny.en``) distilled into this model, of any
    #: architecture with the same frame rate and tokenizer (its tokenizer and front end are taken):
    #: a fast first pass trained on the default's CTC posteriors. Without it the teacher of
    #: ``distill_weight`` is init_from.
    teacher: str | None = None
    #: Weight of the KL divergence from the teacher's CTC posteriors (per frame, summed per
    #: utterance like the CTC loss); needs a teacher (``teacher`` or init_from).
    distill_ctc_weight: float = 0.0
    #: Weight of layer-wise hidden-state targets (``ASRModel.set_teacher``): a linear projection
    #: of each listed student layer's output learns the teacher layer's (layer-normalized), so a
    #: small first pass learns what the pretrained layers compute, not only their posteriors.
    distill_layer_weight: float = 0.0
    #: [student layer, teacher layer] pairs for distill_layer_weight; None = matched by relative
    #: depth (student layer i of S to teacher layer round((i + 1) * T / S) - 1).
    distill_layers: list[list[int]] | None = None
    #: With init_from: which source encoder layers to copy, in order (a pruned, shallower model
    #: initialized from a deeper one; the static-depth baseline of dynamic depth). None = all.
    init_layers: list[int] | None = None
    #: Learning-rate multiplier of gate predictors (dynamic compute): fresh, small networks
    #: fine-tuned next to a trained model learn their decisions faster than Adam's lr allows.
    gate_lr_scale: float = 10.0
    min_duration: float = 0.3
    max_duration: float = 20.0
    feature_jobs: int = 2
    #: Parameter-name prefixes left untrained, e.g. [encoder] for a frozen pretrained encoder
    #: (its forward then runs without autograd) or [encoder.blocks.0, encoder.blocks.1].
    freeze: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for key in ("init_from", "teacher"):
            value = getattr(self, key)
            if value is not None and value.startswith(PRETRAINED_PREFIX) and value not in PRETRAINED_SOURCES:
                raise ValueError(f"train.{key}: unknown pretrained model {value!r}; "
                                 f"known: {', '.join(PRETRAINED_SOURCES)} (or a model directory)")
        if self.average_by not in ("last", "best"):
            raise ValueError(f"train.average_by must be 'last' or 'best', got {self.average_by!r}")
        for name in ("distill_weight", "distill_ctc_weight", "distill_layer_weight"):
            value = getattr(self, name)
            if value < 0 or (value > 0 and self.init_from is None and self.teacher is None):
                raise ValueError(f"train.{name} must be 0 or more, and needs a teacher (train.teacher or init_from)")
        if self.max_steps < 1 or self.max_frames < 1 or self.accum_grad < 1:
            raise ValueError("train.max_steps, max_frames and accum_grad must be at least 1")


#: init_from names of pretrained models imported on demand (``edgeasr import whisper --link``).
PRETRAINED_PREFIX = PACKAGED_PREFIX
PRETRAINED_SOURCES = tuple(PACKAGED_PREFIX + name for name in PACKAGED_WHISPER)


def init_source_dir(init_from: str, exp_dir: Path, create: bool = True, folder: str = "init") -> Path:
    """The model directory ``init_from`` (or ``teacher``) names: itself, or for a pretrained name
    the experiment's ``folder``, imported there (linked to the pinned package) when ``create``
    and not yet there."""
    return packaged_model_dir(init_from, exp_dir / folder, create)


@dataclass
class ExperimentConfig:
    model: dict
    tokenizer: dict = field(default_factory=lambda: {"kind": "bpe", "vocab_size": 256})
    features: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    streaming: dict = field(default_factory=lambda: {"chunk_size": 16, "num_left_chunks": -1})

    @classmethod
    def load(cls, path: str | os.PathLike[str], overrides: dict | None = None) -> "ExperimentConfig":
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as error:
            raise EdgeAsrError(f"{path}: cannot read config ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise EdgeAsrError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
        train = dict(raw.get("train", {}))
        train.update(overrides or {})
        unknown = sorted(set(train) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise EdgeAsrError(
                f"{path}: unknown train option(s) {', '.join(unknown)} (--set takes train options "
                "without a prefix, e.g. --set max_steps=2000)"
            )
        try:
            return cls(
                model=raw.get("model", {}),
                tokenizer=raw.get("tokenizer", {"kind": "bpe", "vocab_size": 256}),
                features=raw.get("features", {}),
                train=TrainConfig(**train),
                streaming=raw.get("streaming", {"chunk_size": 16, "num_left_chunks": -1}),
            )
        except (TypeError, ValueError) as error:
            raise EdgeAsrError(f"{path}: {error}") from None


class _Dist:
    """Process-group facts; a plain run is world size 1, rank 0."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _filter(utts: list[Utterance], cfg: TrainConfig) -> list[Utterance]:
    return [u for u in utts if cfg.min_duration <= u.duration <= cfg.max_duration and u.text.strip()]


def _collate(feats: list[torch.Tensor], tokens: list[list[int]]):
    feat_lengths = torch.tensor([f.size(0) for f in feats])
    padded = torch.zeros(len(feats), int(feat_lengths.max()), feats[0].size(1))
    for i, f in enumerate(feats):
        padded[i, : f.size(0)] = f
    token_lengths = torch.tensor([len(t) for t in tokens])
    targets = torch.full((len(tokens), max(1, int(token_lengths.max()))), IGNORE_ID, dtype=torch.long)
    for i, t in enumerate(tokens):
        targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    return padded, feat_lengths, targets, token_lengths


def compute_cmvn_from_store(store: FeatureStore, max_utts: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Global CMVN from (an even sample of up to ``max_utts``) cached training features."""
    accumulator = CMVNAccumulator()
    for item in range(0, store.count, max(1, store.count // max_utts)):
        accumulator.add(store.get(item))
    cmvn = accumulator.finalize(floor=1e-4)
    return cmvn.mean, cmvn.istd


def _match_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Give optimizer moments their parameter's shape when only the layout changed.

    A checkpoint written before a layer changed its storage layout (e.g. kernel-1 convolutions
    saved as [out, in, 1] now held as linears [out, in]) loads its weights through the layer's
    load hook; the optimizer state must follow, or the first step fails on a shape mismatch.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape != param.shape and value.numel() == param.numel():
                    optimizer.state[param][key] = value.reshape(param.shape)


def train(
    config_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
) -> Path:
    """Train per the config; returns the packaged model directory."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    world = _Dist()
    exp = ExperimentConfig.load(config_path, overrides)
    cfg = exp.train
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if out_dir.exists() and list_checkpoints(ckpt_dir) and not resume:
        raise EdgeAsrError(f"{out_dir}: already holds checkpoints; pass --resume to continue or choose another --out")
    for split in ("train", "dev"):
        if not (data_dir / f"{split}.jsonl").exists():
            raise DataError(f"{data_dir}: missing {split}.jsonl (make one with `edgeasr corpus synth`)")
    train_utts = _filter(read_manifest(data_dir / "train.jsonl"), cfg)
    dev_utts = _filter(read_manifest(data_dir / "dev.jsonl"), cfg)[: cfg.eval_utts]
    if not train_utts:
        raise DataError(f"{data_dir}/train.jsonl: no usable utterances")
    # Fine-tuning inherits what it does not override: the source's front end and model config
    # (an imported Whisper model's dims, heads and decoder), merged key by key with the config's.
    source = teacher = None
    if cfg.init_from:
        if world.main:
            init_source_dir(cfg.init_from, out_dir)
        world.barrier()
        source = load_model_dir(init_source_dir(cfg.init_from, out_dir, create=False))
    if cfg.teacher:
        if world.main:
            init_source_dir(cfg.teacher, out_dir, folder="teacher")
        world.barrier()
        teacher = load_model_dir(init_source_dir(cfg.teacher, out_dir, create=False, folder="teacher"))
    elif source is not None and (cfg.distill_weight > 0 or cfg.distill_ctc_weight > 0 or cfg.distill_layer_weight > 0):
        teacher = source
    # what the model reads and writes comes from its source, else from its teacher
    inherited = source if source is not None else (teacher if cfg.teacher else None)
    options = frontend_from_dict(exp.features) if (exp.features or inherited is None) else inherited.features
    if source is not None:
        exp.model = {**source.model.config.to_dict(), **exp.model}
        exp.model.pop("vocab_size", None)

    # Each front-end kind caches its features apart (fbank keeps the original location).
    store_dir = data_dir / "features" if options.kind == "fbank" else data_dir / f"features-{options.kind}"

    # --- preparation (rank 0), then everyone loads ----------------------------------------------
    tok_dir = out_dir / "tokenizer"
    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(
            yaml.safe_dump({"model": exp.model, "tokenizer": exp.tokenizer, "features": options.to_dict(),
                            "train": asdict(cfg), "streaming": exp.streaming}, sort_keys=False)
        )
        if not (tok_dir / "tokenizer.json").exists():
            if inherited is not None:
                inherited.tokenizer.save(tok_dir)
            else:
                Tokenizer.train((u.text for u in train_utts), seed=cfg.seed, **exp.tokenizer).save(tok_dir)
        build_feature_store(train_utts, store_dir / "train", options, tuple(cfg.speeds),
                            jobs=cfg.feature_jobs, progress=progress)
        build_feature_store(dev_utts, store_dir / "dev", options, (1.0,), jobs=1)
    world.barrier()
    tokenizer = Tokenizer.load(tok_dir)
    train_store = FeatureStore(store_dir / "train", tuple(cfg.speeds), len(train_utts))
    dev_store = FeatureStore(store_dir / "dev", (1.0,), len(dev_utts))
    train_tokens = [tokenizer.encode(u.text) for u in train_utts]

    model_config = ModelConfig.from_dict({**exp.model, "vocab_size": tokenizer.vocab_size})
    torch.manual_seed(cfg.seed)
    model = ASRModel(model_config)
    if cfg.init_from:
        load_weights_from(model, source, cfg.init_layers)
    if teacher is not None:
        if teacher.features.to_dict() != options.to_dict():
            raise EdgeAsrError(f"{config_path}: the teacher reads {teacher.features.kind} features, this model "
                               f"{options.kind}: distillation needs the same front end")
        try:
            model.set_teacher(teacher.model, cfg.distill_weight, cfg.distill_ctc_weight,
                              cfg.distill_layer_weight, cfg.distill_layers)
        except ValueError as error:
            raise EdgeAsrError(f"{config_path}: {error}") from None
    if not cfg.init_from and options.kind == "fbank":
        model.set_cmvn(*compute_cmvn_from_store(train_store))
    # (A pretrained encoder's front end is already normalised the way it was trained: no CMVN.)
    if cfg.freeze:
        try:
            frozen = model.freeze(cfg.freeze)
        except ValueError as error:
            raise EdgeAsrError(f"{config_path}: {error}") from None
        if world.main:
            print(f"froze {frozen} parameter tensors under {', '.join(cfg.freeze)}")
    optimizer = torch.optim.Adam(_parameter_groups(model, cfg.gate_lr_scale), lr=cfg.peak_lr, betas=(0.9, 0.98),
                                 eps=1e-9, weight_decay=cfg.weight_decay)
    step, epoch, batch_in_epoch = 0, 0, 0
    if world.main:
        remove_stale_temporaries(ckpt_dir)
    latest, state = None, None
    if resume:
        latest, state, problems = newest_intact_checkpoint(ckpt_dir)
        if world.main:
            for problem in problems:
                print(f"edgeasr: warning: {problem}", file=sys.stderr)
        if latest is None and problems:
            raise EdgeAsrError(f"{ckpt_dir}: no intact checkpoint to resume from "
                               f"({len(problems)} unreadable); remove them or start afresh in another --out")
        if latest is None and world.main:
            print("edgeasr: warning: --resume found no checkpoint; starting from step 0", file=sys.stderr)
    if latest is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _match_optimizer_shapes(optimizer)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        model.chunk_generator.set_state(state["chunk_generator"])
        if world.main:
            print(f"resumed from {latest.name}: step {step}, epoch {epoch}")
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world.world > 1 else model

    sampler = DurationBatchSampler(
        [u.duration for u in train_utts], cfg.max_frames, max_batch_size=cfg.max_batch_size,
        seed=cfg.seed, num_replicas=world.world, rank=world.rank,
    )
    log_path = out_dir / "train_log.csv"
    log_fields = ["step", "epoch", "loss", "ctc", "attention", "lr", "frames_per_s", "elapsed_s", "dev_cer", "dev_wer"]
    if getattr(model.encoder, "dynamic", None) is not None:
        log_fields.append("compute")  # dynamic compute: the gated modules' mean compute fraction
    if getattr(model, "transducer", None) is not None:
        log_fields.append("transducer")  # the RNN-T loss
    if getattr(model, "cascade", None) is not None:
        log_fields.append("cascade")  # the cascaded second pass's CTC loss
    if getattr(model, "segmenter", None) is not None:
        log_fields.append("segmenter")  # the end-of-segment predictor's cross-entropy
    if cfg.distill_weight > 0:
        log_fields.append("distill")  # the encoder output's error against the teacher's
    if cfg.distill_ctc_weight > 0:
        log_fields.append("distill_ctc")  # KL from the teacher's CTC posteriors
    if cfg.distill_layer_weight > 0:
        log_fields.append("distill_layers")  # the projected hidden states' error, mean over pairs
    if world.main and not log_path.exists():
        with open(log_path, "w", newline="") as handle:
            csv.writer(handle).writerow(log_fields)
    elif world.main:
        _truncate_log(log_path, step)  # rows past the resumed step would be written again
    bar = None
    if world.main and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    started = time.time()
    window_frames, window_start = 0, time.time()
    running: dict[str, float] = {}
    last_dev_cer: tuple[int, float] | None = None

    while step < cfg.max_steps:
        sampler.set_epoch(epoch)
        batches = list(sampler)
        if epoch == 0 and cfg.sortagrad:
            batches.sort(key=lambda batch: max(train_utts[i].duration for i in batch))
        while batch_in_epoch < len(batches) and step < cfg.max_steps:
            wrapped.train()
            rng = np.random.default_rng([cfg.seed, step, world.rank])
            strength = min(1.0, (step + 1) / max(1, cfg.augment_warmup_steps))
            indices = batches[batch_in_epoch]
            feats, tokens = [], []
            for item in indices:
                speed = float(rng.choice(cfg.speeds)) if strength >= 1.0 or rng.random() < strength else 1.0
                f = train_store.get(item, speed if speed in train_store.speeds else 1.0)
                if strength > 0:
                    sa = dict(cfg.spec_augment)
                    sa["max_time_width"] = int(sa.get("max_time_width", 40) * strength)
                    sa["max_freq_width"] = int(sa.get("max_freq_width", 10) * strength)
                    f = spec_augment(f, rng, **sa, mask_value=None)
                feats.append(f)
                tokens.append(train_tokens[item])
            batch = _collate(feats, tokens)
            losses = wrapped(*batch)
            (losses["loss"] / cfg.accum_grad).backward()
            batch_in_epoch += 1
            window_frames += int(batch[1].sum())
            for key, value in losses.items():
                running[key] = running.get(key, 0.0) + float(value.detach())
            running["n"] = running.get("n", 0) + 1
            if batch_in_epoch % cfg.accum_grad:
                continue
            step += 1
            lr = warmup_lr(step, cfg.peak_lr, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if torch.isfinite(norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if bar:
                bar.update()
            evaluate = cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps) and dev_utts
            if world.main and (step % cfg.log_every == 0 or step == cfg.max_steps or evaluate):
                n = running.pop("n")
                means = {k: v / n for k, v in running.items()}
                running.clear()
                speed = window_frames * world.world / max(1e-6, time.time() - window_start)
                window_frames, window_start = 0, time.time()
                row = {"step": step, "epoch": epoch, "lr": f"{lr:.3e}", "frames_per_s": f"{speed:.0f}",
                       "elapsed_s": f"{time.time() - started:.0f}", **{k: f"{v:.3f}" for k, v in means.items()}}
                if evaluate:
                    cer, wer = quick_dev_error(model, dev_store, dev_utts, tokenizer)
                    row.update(dev_cer=f"{cer:.2f}", dev_wer=f"{wer:.2f}")
                    last_dev_cer = (step, cer)
                with open(log_path, "a", newline="") as handle:
                    csv.writer(handle).writerow([row.get(k, "") for k in log_fields])
                if bar:
                    extra = {"compute": row["compute"]} if "compute" in row else {}
                    bar.set_postfix(loss=row.get("loss"), ctc=row.get("ctc"), fps=row["frames_per_s"],
                                    dev_cer=row.get("dev_cer", "-"), **extra)
            out_of_time = bool(cfg.max_minutes) and (time.time() - started) > 60 * cfg.max_minutes
            if world.world > 1:
                flag = torch.tensor([float(out_of_time)])
                dist.all_reduce(flag)  # every rank stops at the same step
                out_of_time = bool(flag.item())
            if out_of_time:
                cfg.max_steps = step
            if world.main and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
                save_checkpoint(ckpt_dir, step, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                    "chunk_generator": model.chunk_generator.get_state(),
                }, keep=cfg.keep_checkpoints,
                   score=last_dev_cer[1] if last_dev_cer and last_dev_cer[0] == step else None,
                   keep_best=cfg.average_last if cfg.average_by == "best" else 0)
        if batch_in_epoch >= len(batches):
            epoch += 1
            batch_in_epoch = 0
    if bar:
        bar.close()
    world.barrier()
    model_dir = out_dir / "model"
    if world.main:
        paths = checkpoints_to_average(ckpt_dir, cfg.average_last, cfg.average_by)
        averaged = average_checkpoints(paths) if paths else model.state_dict()
        save_model_dir(model_dir, model, tokenizer, options,
                       StreamingDefaults(**exp.streaming), state_dict=averaged,
                       pretrained=source.pretrained if source else None,
                       whisper_dir=source.whisper_dir if source else None)
    world.barrier()
    return model_dir


def package_experiment(
    exp_dir: str | os.PathLike[str], out: str | os.PathLike[str], count: int = 5, by: str = "last",
    half: bool = False,
) -> Path:
    """Average ``count`` checkpoints of an experiment (newest or best by dev CER) into a model dir."""
    exp_dir = Path(exp_dir)
    config_path = exp_dir / "config.yaml"
    if not config_path.exists() or not (exp_dir / "tokenizer").exists():
        raise EdgeAsrError(f"{exp_dir}: not an experiment directory (needs config.yaml and tokenizer/)")
    if count < 1:
        raise EdgeAsrError("--num must be at least 1")
    paths = checkpoints_to_average(exp_dir / "checkpoints", count, by)
    if not paths:
        raise EdgeAsrError(f"{exp_dir}/checkpoints: no checkpoints to average")
    raw = yaml.safe_load(config_path.read_text())
    tokenizer = Tokenizer.load(exp_dir / "tokenizer")
    model = ASRModel(ModelConfig.from_dict({**raw["model"], "vocab_size": tokenizer.vocab_size}))
    averaged = inference_state(average_checkpoints(paths))
    model.load_state_dict(averaged)
    streaming = raw.get("streaming") or {"chunk_size": 16, "num_left_chunks": -1}
    init_from = (raw.get("train") or {}).get("init_from")
    source = load_model_dir(init_source_dir(init_from, exp_dir)) if init_from else None
    return save_model_dir(out, model, tokenizer, frontend_from_dict(raw["features"]),
                          StreamingDefaults(**streaming), half=half,
                          pretrained=source.pretrained if source else None,
                          whisper_dir=source.whisper_dir if source else None)


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the log's header and the rows up to ``step`` (the checkpoint a run resumes from)."""
    with open(log_path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    if len(kept) != len(rows):
        import io

        from edgeasr.fileio import atomic_write_text

        buffer = io.StringIO()
        csv.writer(buffer).writerows(kept)
        atomic_write_text(log_path, buffer.getvalue())


@torch.no_grad()
def _parameter_groups(model: ASRModel, gate_lr_scale: float) -> list[dict]:
    """One group for the model, one (with its own lr scale) for dynamic-compute gate predictors."""
    dynamic = getattr(model.encoder, "dynamic", None)
    gate_params = list(dynamic.parameters()) if dynamic is not None else []
    gate_ids = {id(p) for p in gate_params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids and p.requires_grad],
               "lr_scale": 1.0}]
    if gate_params:
        groups.append({"params": gate_params, "lr_scale": gate_lr_scale})
    return groups


def quick_dev_error(model: ASRModel, store: FeatureStore, utts: list[Utterance], tokenizer: Tokenizer) -> tuple[float, float]:
    """Greedy CER and WER (percent) on the dev subset, full context: a cheap progress signal. A
    model with a transducer head is measured by its transducer (greedy), the head that decides
    its text in transducer modes; one with a cascaded second pass by the cascade over the first
    pass as it streams (the training chunk, or full context with dynamic chunks); otherwise by CTC."""
    import jiwer

    from edgeasr.decoding.ctc import ctc_greedy
    from edgeasr.decoding.transducer_search import TransducerGreedySearch

    model.eval()
    refs, hyps = [], []
    for item, utt in enumerate(utts):
        f = store.get(item)
        with torch.no_grad():
            if getattr(model, "cascade", None) is not None:
                chunk = 0 if model.config.dynamic_chunk else model.config.static_chunk_size
                encoded, _ = model.encode(f.unsqueeze(0), torch.tensor([f.size(0)]), chunk)
                hyp = ctc_greedy(model.cascade_log_probs(encoded)[0], model.blank_id)
                refs.append(utt.text)
                hyps.append(tokenizer.decode(hyp.tokens))
                continue
            encoded, _ = model.encode(f.unsqueeze(0), torch.tensor([f.size(0)]))
            if getattr(model, "transducer", None) is not None:
                search = TransducerGreedySearch(model.transducer.runner())
                search.step(encoded[0].numpy())
                hyp = search.nbest()[0]
            else:
                hyp = ctc_greedy(model.ctc_log_probs(encoded)[0], model.blank_id)
        refs.append(utt.text)
        hyps.append(tokenizer.decode(hyp.tokens))
    model.train()
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return math.nan, math.nan
    refs, hyps = zip(*pairs)
    return 100 * jiwer.cer(list(refs), list(hyps)), 100 * jiwer.wer(list(refs), list(hyps))

"""The training config tree. Its defaults train a small model on `builtin:digits` in about a minute on 2 cores.

Each field carries its help text (`opt(default, help)`), so `dualtower train --help` lists every key with its
default and meaning from this one definition."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError


def opt(default, help: str):
    return field(default=default, metadata={"help": help})


def _at_least(section: str, cfg, **lows) -> None:
    """Each named field a number (not a bool) no smaller than its bound: nonsense is refused before any work."""
    for key, low in lows.items():
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= low:
            raise UserError(f"{section}.{key} must be a number >= {low}, got {v!r}")


def _fraction(section: str, cfg, key: str, low_open: bool, high: float = 1.0) -> None:
    v = getattr(cfg, key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (0 < v if low_open else 0 <= v) and v <= high
    if not ok:
        raise UserError(f"{section}.{key} must be in {'(0' if low_open else '[0'}, {high}], got {v!r}")


@dataclass(frozen=True)
class ModelSection:
    arch: str = opt("small-digits", "a registry name (dualtower archs)")
    init: str = opt("", "a checkpoint to fine-tune from (anything dualtower.load reads); empty: random init")
    init_arch: str = opt("", "the architecture of `init` when it is a bare open_clip state dict")
    patch_dropout: float = opt(0.0, "FLIP: fraction of patch tokens dropped in training")
    dropout: float = opt(0.0, "dropout on every residual branch of both towers, in training")
    drop_path: float = opt(0.0, "stochastic depth of the vision tower, rising linearly to this at the last block")
    grad_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory)")
    lock_image: bool = opt(False, "LiT: freeze the image tower")
    lock_text: bool = opt(False, "freeze the text tower")

    def __post_init__(self):
        for key in ("patch_dropout", "dropout", "drop_path"):
            _fraction("model", self, key, low_open=False, high=0.99)


@dataclass(frozen=True)
class DataSection:
    train: str = opt("builtin:digits", "a data spec (see dualtower.data.open_source)")
    image_key: str = opt("image", "the image column of a captions file")
    caption_key: str = opt("caption", "the caption column of a captions file")
    batch_size: int = opt(128, "the global batch, over all processes")
    workers: int = opt(1, "loader processes per training process")
    crop_scale: float = opt(0.9, "random resized crops of this much of the area and up; 1 = the eval transform")
    max_patches: int = opt(0, "NaFlex models (SigLIP 2): patches per image at most; 0 = the model's budget")
    max_tokens_per_batch: int = opt(0, "NaFlex models: > 0 fills each step with images up to this many patches "
                                       "(padded to the batch's longest) instead of batch_size images")
    length_buckets: int = opt(4, "with max_tokens_per_batch: images batched within this many length ranges")
    upscale: bool = opt(True, "NaFlex: images smaller than the patch budget are scaled up to fill it (the "
                              "reference's rule); false keeps them at their own size (shorter sequences)")

    def __post_init__(self):
        _at_least("data", self, batch_size=1, workers=0, max_patches=0, max_tokens_per_batch=0, length_buckets=1)
        _fraction("data", self, "crop_scale", low_open=True)


@dataclass(frozen=True)
class OptimSection:
    lr: float = opt(2e-3, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.1, "on matrices only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.98, "AdamW beta2")
    eps: float = opt(1e-6, "AdamW epsilon")
    warmup_steps: int = opt(30, "linear warmup, then cosine decay to zero")

    def __post_init__(self):
        _at_least("optim", self, lr=0, weight_decay=0, eps=0, warmup_steps=0)
        _fraction("optim", self, "beta1", low_open=False, high=0.999999)
        _fraction("optim", self, "beta2", low_open=False, high=0.999999)


@dataclass(frozen=True)
class TrainSection:
    steps: int = opt(300, "optimizer steps in all")
    loss: str = opt("clip", "clip (softmax) or siglip (sigmoid)")
    label_smoothing: float = opt(0.0, "of the clip loss")
    loss_chunk: int = opt(0, "> 0: compute the loss in tiles of this many rows/columns (dualtower.chunked_losses)")
    micro_batch: int = opt(0, "> 0: gradient-cache steps, encoding this many samples at a time (train.gradcache)")
    precision: str = opt("fp32", "fp32 or bf16 (autocast)")
    ema_decay: float = opt(0.0, "> 0: keep a moving average of the weights with this decay (0.999 to 0.9999), "
                                "saved beside each checkpoint as a checkpoint of its own (step_N/ema)")
    parallel: str = opt("ddp", "ddp (every process holds the whole model), fsdp (FSDP2: weights, gradients and "
                               "optimizer state sharded over the processes; sharded checkpoints) or hsdp (sharded "
                               "within groups of train.shard_size processes, replicated across them)")
    shard_size: int = opt(0, "hsdp: processes per shard group; 0 = the processes of one node (LOCAL_WORLD_SIZE)")
    grad_clip: float = opt(1.0, "max gradient norm; 0 turns clipping off")
    seed: int = opt(0, "every random draw of the run derives from it (model.seeds)")
    deterministic: bool = opt(False, "torch.use_deterministic_algorithms: bitwise-repeatable on CPU")
    out: str = opt("runs/train", "the run directory")
    log_every: int = opt(10, "steps between metrics records")
    save_every: int = opt(0, "steps between checkpoints; 0: a checkpoint at the end only")
    keep_checkpoints: int = opt(2, "checkpoints kept, newest first")
    max_nonfinite: int = opt(5, "this many non-finite steps in a row abort the run")
    dist_timeout_s: float = opt(120.0, "a collective waiting longer than this (a dead peer) raises")
    log_samples: bool = opt(False, "write the ids of every step's samples to samples.rank<R>.jsonl")
    progress: bool = opt(True, "show a progress bar")
    tensorboard: bool = opt(False, "also log the metrics to TensorBoard, in RUN/tensorboard (pip install "
                                   "'dualtower[train]')")

    def __post_init__(self):
        if self.loss not in ("clip", "siglip"):
            raise UserError(f"train.loss {self.loss!r} is not 'clip' or 'siglip'")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"train.precision {self.precision!r} is not 'fp32' or 'bf16'")
        if self.parallel not in ("ddp", "fsdp", "hsdp"):
            raise UserError(f"train.parallel {self.parallel!r} is not 'ddp', 'fsdp' or 'hsdp'")
        _at_least("train", self, shard_size=0, steps=1, log_every=1, loss_chunk=0, micro_batch=0, save_every=0,
                  keep_checkpoints=1, max_nonfinite=1, grad_clip=0, dist_timeout_s=1, label_smoothing=0)
        _fraction("train", self, "label_smoothing", low_open=False, high=0.99)
        _fraction("train", self, "ema_decay", low_open=False, high=0.999999)


@dataclass(frozen=True)
class ValSection:
    data: str = opt("", "held-out data evaluated during training (a data spec); empty: no validation")
    every: int = opt(0, "steps between evaluations (and at the end; 0: at the end only); a checkpoint is saved "
                        "at each, and checkpoints/best names the one with the best val.metric")
    task: str = opt("auto", "zeroshot (data with classes), retrieval (images with captions), or auto: zeroshot "
                            "where the data has classes, else retrieval")
    templates: str = opt("", "zero-shot prompt templates, one per line with {c}; empty: the data's own or "
                             "the generic ones")
    metric: str = opt("auto", "the metric that picks checkpoints/best, higher is better: top1, "
                              "mean_per_class_recall, image_to_text/R@1, text_to_image/R@5, mean_R@1, ...; "
                              "auto: top1 (zeroshot) or mean_R@1 (retrieval)")
    batch_size: int = opt(128, "images per batch when embedding the held-out data")

    def __post_init__(self):
        _at_least("val", self, every=0, batch_size=1)
        if self.task not in ("auto", "zeroshot", "retrieval"):
            raise UserError(f"val.task {self.task!r} is not auto, zeroshot or retrieval")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValSection = field(default_factory=ValSection)

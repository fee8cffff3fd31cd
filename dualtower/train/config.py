"""The training config tree. Its defaults train a small model on `builtin:digits` in about a minute on 2 cores."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSection:
    arch: str = "small-digits"  # a registry name
    init: str = ""  # a checkpoint to fine-tune from (anything `dualtower.load` reads); empty: random init
    init_arch: str = ""  # the architecture of `init` when it is a bare open_clip state dict
    patch_dropout: float = 0.0  # FLIP: fraction of patch tokens dropped in training
    dropout: float = 0.0  # on every residual branch of both towers, in training
    drop_path: float = 0.0  # stochastic depth of the vision tower, rising linearly to this at the last block
    grad_checkpointing: bool = False
    lock_image: bool = False  # LiT: freeze the image tower
    lock_text: bool = False


@dataclass(frozen=True)
class DataSection:
    train: str = "builtin:digits"  # see dualtower.data.open_source
    image_key: str = "image"
    caption_key: str = "caption"
    batch_size: int = 128  # global, over all processes
    workers: int = 1  # loader processes per training process
    crop_scale: float = 0.9  # random resized crops of this much of the area and up; 1 = the eval transform


@dataclass(frozen=True)
class OptimSection:
    lr: float = 2e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 30


@dataclass(frozen=True)
class TrainSection:
    steps: int = 300
    loss: str = "clip"  # "clip" (softmax) or "siglip" (sigmoid)
    label_smoothing: float = 0.0
    loss_chunk: int = 0  # > 0: compute the loss in tiles of this many rows/columns (dualtower.chunked_losses)
    micro_batch: int = 0  # > 0: gradient-cache steps, encoding this many samples at a time (train.gradcache)
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-repeatable on CPU
    out: str = "runs/train"
    log_every: int = 10
    save_every: int = 0  # 0: a checkpoint at the end only
    keep_checkpoints: int = 2
    max_nonfinite: int = 5  # this many non-finite steps in a row abort the run
    dist_timeout_s: float = 120.0  # a collective waiting longer than this (a dead peer) raises
    log_samples: bool = False  # write the ids of every step's samples to samples.jsonl
    progress: bool = True

    def __post_init__(self):
        if self.loss not in ("clip", "siglip"):
            raise ValueError(f"train.loss {self.loss!r} is not 'clip' or 'siglip'")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision {self.precision!r} is not 'fp32' or 'bf16'")
        if self.steps < 1:
            raise ValueError(f"train.steps must be at least 1, got {self.steps}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

"""The PyTorch runtime: a DualEncoder on a device, at a precision, behind the Embedder protocol."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import UserError
from ..images import eval_transform
from .base import Embedder

PRECISIONS = ("fp32", "bf16")


class TorchEmbedder(Embedder):
    """`model` (a DualEncoder) in eval mode on `device` (default: where its weights are). `precision`: "fp32",
    "bf16" (weights cast to bfloat16; norms still compute in fp32, outputs are fp32), or one per tower
    ({"image": "bf16", "text": "fp32"}, what `--precision auto` chooses). A tower cast here is first held to the
    self-check: its probe embeddings against the fp32 ones (`probes.py`), refused below the bf16 floor. The
    identity keeps the digest of the fp32 weights it was given."""

    runtime = "torch"

    def __init__(self, model, device: "torch.device | str | None" = None, precision: "str | dict" = "fp32"):
        per_tower = _per_tower(model, precision)
        super().__init__(model.cfg, model.origin)
        self._digest = model.origin.weights_sha256
        self.model = model.eval() if device is None else model.to(device).eval()
        self.device = next(self.model.parameters()).device
        self.transform = eval_transform(self.cfg.preprocess) if self.cfg.vision is not None else None
        lowered = [t for t, p in per_tower.items()
                   if p == "bf16" and next(_tower(model, t).parameters()).dtype != torch.bfloat16]
        if lowered:
            from . import probes

            self._digest = self._digest or _digest(model)  # the weights' identity is their fp32 one
            reference = probes.embed(self)
            for name in lowered:
                _tower(model, name).to(torch.bfloat16)  # the temperature and bias stay fp32
            probes.check(self, {t: reference[t] for t in lowered}, "bf16", f"{self.cfg.name} on PyTorch (bf16)")
        self.precision = per_tower

    @torch.inference_mode()
    def embed_pixels(self, batch) -> np.ndarray:
        with self._lock:
            return self.model.encode_image(batch.to(self.device), normalize=True).float().cpu().numpy()

    @torch.inference_mode()
    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        with self._lock:  # the text tower checks and trims the ids on the CPU, then moves them
            return self.model.encode_text(torch.from_numpy(np.asarray(ids, np.int64)), normalize=True) \
                .float().cpu().numpy()

    def weights_sha256(self) -> str:
        if self._digest is None:
            self._digest = _digest(self.model)
        return self._digest

    @property
    def logit_scale(self) -> float | None:
        return None if self.model.logit_scale is None else float(self.model.scale().detach().float())

    def map(self, dataset, batch_size: int, workers: int):
        """Lists of records decoded by `workers` loader processes, four batches ahead each."""
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=list,
                                           prefetch_factor=4 if workers else None)


def _digest(model) -> str:
    from ..checkpoint import weights_sha256

    return weights_sha256(model)


def random_weights(spec: str) -> bool:
    """Whether `spec` is an architecture name (no file of that name): opened with random weights."""
    import os

    import dualtower

    return not os.path.exists(spec) and spec in dualtower.list_architectures()


def load_model(spec: str, options):
    """A DualEncoder from `spec`: anything `dualtower.load` reads, or an architecture name (random weights, said
    to options.note), on options.device."""
    import dualtower

    if random_weights(spec):
        if options.note is not None:
            options.note(f"note: {spec} is an architecture name; using random weights")
        model = dualtower.create_model(spec)
    else:
        model = dualtower.load(spec, arch=options.arch, source=options.source, towers=options.towers)
    return model.to(device_of(options.device))


def at_precision(model, precision: str):
    """`model` with its weights in `precision`: "bf16" casts them to bfloat16 (norms still compute in fp32,
    outputs are returned as fp32); "fp32" leaves them. ("auto" is `auto.choose`, which says what it chose.)"""
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {PRECISIONS}")
    return model.to(torch.bfloat16) if precision == "bf16" else model


def _per_tower(model, precision: "str | dict") -> dict[str, str]:
    towers = [t for t, m in (("image", model.visual), ("text", model.text)) if m is not None]
    chosen = dict.fromkeys(towers, precision) if isinstance(precision, str) else dict(precision)
    for tower, value in chosen.items():
        if value not in PRECISIONS:
            raise UserError(f"precision {value!r} is not one of {PRECISIONS}")
        if tower not in towers:
            raise UserError(f"{model.cfg.name} has no {tower} tower to run at {value}")
    return chosen


def _tower(model, name: str):
    return model.visual if name == "image" else model.text


def open(spec: str, options) -> TorchEmbedder:  # noqa: A001 (the runtimes' factory calls it by this name)
    """The model of `spec`, loaded for inference: a foldable convolutional tower is folded (`reparameterize`: the same
    outputs, fewer operations), keeping the digest of the weights as loaded."""
    model = load_model(spec, options)
    if getattr(model.cfg.vision, "foldable", False) and not model.cfg.vision.folded:
        model.origin = dataclasses.replace(model.origin, weights_sha256=model.origin.weights_sha256 or _digest(model))
        model.reparameterize()
    if options.precision != "auto":
        return TorchEmbedder(model, precision=options.precision)
    from .auto import choose

    model.origin = dataclasses.replace(model.origin, weights_sha256=model.origin.weights_sha256 or _digest(model))
    choice = choose(model.eval())
    if options.note is not None:
        options.note(choice.line)
    return TorchEmbedder(model, precision=choice.precision)


def device_of(name: str = "auto") -> torch.device:
    """auto (the first CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r}: not a device name (auto, cpu, cuda, cuda:N)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch sees no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: only cpu and cuda are supported")
    return device

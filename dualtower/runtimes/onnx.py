"""The ONNX Runtime runtime: the towers of an export folder (`dualtower export --format onnx`), each an ONNX
Runtime session, behind the Embedder protocol. Needs numpy, Pillow and onnxruntime, not torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import UserError, require
from ..images import ArrayTransform, NaFlexArrayTransform
from ..origin import Origin
from ..text_pool import pool_positions
from .base import Embedder
from .base import normalize as _unit


class OnnxModel(Embedder):
    """`threads`: intra-op threads (default: ONNX Runtime's choice); `providers`: e.g. ["CUDAExecutionProvider",
    "CPUExecutionProvider"]. `spinning=False` stops idle worker threads from spinning while they wait for work:
    right for a service answering a few queries at a time beside other processes (ONNX Runtime spins by default,
    which suits bulk embedding). `check=True`: the probes the export recorded are embedded and compared with
    PyTorch's fp32 reference (`probes.check`), refusing the export below its precision's floor; `self.checked`
    holds the result (None for an export that recorded no probes)."""

    runtime = "onnx"

    def __init__(self, directory: "str | os.PathLike", threads: int | None = None,
                 providers: list[str] | None = None, spinning: bool = True, check: bool = True):
        from ..export_format import read_config

        self.directory = Path(directory)
        meta = read_config(self.directory, self.formats)  # every field checked: a string "false" is not False
        self.meta = meta
        super().__init__(ModelConfig.from_dict(meta["model"]),
                         Origin.of_folder(self.directory, meta["runtime"], weights_sha256=meta.get("weights_sha256")))
        self.normalized = bool(meta.get("normalized"))
        self.sessions = {}
        for name, graph in meta["graphs"].items():
            path = self.directory / graph["file"]
            for needed in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
                if not needed.is_file():
                    raise UserError(f"{self.directory}: {needed.name} is missing")
            self.sessions[name] = path
        self.sessions = self.compile(self.sessions, threads=threads, providers=providers, spinning=spinning)
        self.transform = None if self.cfg.vision is None else NaFlexArrayTransform(self.cfg.preprocess) \
            if self.cfg.vision.naflex else ArrayTransform(self.cfg.preprocess)
        self.checked = self_check(self, meta, self.runtime_name, self.precision) if check else None

    # ---------------------------------------------------------------- what another runtime of exports replaces

    runtime_name = "ONNX Runtime"
    formats = ("onnx",)  # the export folders it runs (config.json's "runtime")

    @property
    def precision(self) -> str:
        """The precision the graphs run at: the export's own on ONNX Runtime."""
        return self.meta["precision"]

    def compile(self, graphs: dict[str, Path], threads: int | None, providers: list[str] | None,
                spinning: bool) -> dict:
        """name -> something `run` takes, for each graph file."""
        ort = require("onnxruntime", "running exported models", "onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return {name: ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
                for name, path in graphs.items()}

    def run(self, name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The graph `name`'s one output for `inputs`."""
        return self.sessions[name].run(None, inputs)[0]

    # --------------------------------------------------------------------------------------- numpy in, out

    def encode_image(self, pixels, normalize: bool = False) -> np.ndarray:
        """pixels (B, 3, S, S) float32; for a NaFlex tower (values, mask, shapes) as `NaFlexArrayTransform`
        collates them (or a `Patches` batch, or transformers' processor output as a mapping)."""
        if "image" not in self.sessions:
            raise UserError(f"{self.cfg.name}: the export has no image tower")
        if self.cfg.vision.naflex:
            out = self.run("image", self._patch_inputs(pixels))
            return _unit(out) if normalize and not self.normalized else out
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        size, patch = self.cfg.vision.image_size, self.cfg.vision.stride
        if self.meta.get("dynamic_size"):
            if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:]) < 2 * patch:
                raise UserError(f"pixels must be (B, 3, H, W) with H, W >= {2 * patch}, got {tuple(x.shape)}")
        elif x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise UserError(f"pixels must be (B, 3, {size}, {size}), got {tuple(x.shape)} (an export with "
                             "--dynamic-size takes other sizes)")
        out = self.run("image", {"pixels": x})
        return _unit(out) if normalize and not self.normalized else out

    def _patch_inputs(self, batch) -> dict[str, np.ndarray]:
        """A NaFlex batch as the graph's inputs, checked as `Patches.check` does and cut after its longest image
        (padding past it changes nothing, as in the PyTorch tower)."""
        from ..naflex import HF_KEYS, Patches

        if isinstance(batch, Patches):
            batch = (batch.values, batch.mask, batch.shapes)
        elif isinstance(batch, dict):
            batch = tuple(batch[k] for k in HF_KEYS)
        values, mask, shapes = (np.asarray(a) for a in batch)
        patch = self.cfg.preprocess.patch_size
        if values.ndim != 3 or values.shape[2] != patch * patch * 3 or mask.shape != values.shape[:2] \
                or shapes.shape != (values.shape[0], 2):
            raise UserError(f"a NaFlex batch must be values (B, N, {patch * patch * 3}), mask (B, N) and shapes "
                             f"(B, 2), got {values.shape}, {mask.shape} and {shapes.shape}")
        counts = shapes.astype(np.int64).prod(axis=1)
        if len(counts) and ((shapes <= 0).any() or counts.max() > values.shape[1] or
                            (mask.astype(bool) != (np.arange(values.shape[1])[None, :] < counts[:, None])).any()):
            raise UserError("spatial_shapes and pixel_attention_mask disagree (each image's rows x columns patches "
                             "must come first, marked 1, then padding marked 0)")
        length = max(int(counts.max()) if len(counts) else 1, 2)  # the graph was traced with at least two
        if values.shape[1] < length:  # every image one patch: one more of padding
            values = np.pad(values, ((0, 0), (0, length - values.shape[1]), (0, 0)))
            mask = np.pad(mask, ((0, 0), (0, length - mask.shape[1])))
        return {"pixel_values": np.ascontiguousarray(values[:, :length], np.float32),
                "pixel_attention_mask": np.ascontiguousarray(mask[:, :length], np.int64),
                "spatial_shapes": np.ascontiguousarray(shapes, np.int64)}

    def encode_text(self, ids: np.ndarray, normalize: bool = False) -> np.ndarray:
        """ids (B, L) int64. Under a causal mask the padding after each row's pooled token changes nothing, so
        the batch is cut after its longest one, as the PyTorch tower does."""
        if "text" not in self.sessions:
            raise UserError(f"{self.cfg.name}: the export has no text tower")
        ids = np.asarray(ids, dtype=np.int64)
        cfg = self.cfg.text
        if ids.ndim != 2 or not 1 <= ids.shape[1] <= cfg.context_length:
            raise UserError(f"token ids must be (B, L) with L <= {cfg.context_length}, got {tuple(ids.shape)}")
        if cfg.causal and len(ids):
            ids = ids[:, : int(pool_positions(ids, cfg).max()) + 1]
        out = self.run("text", {"ids": np.ascontiguousarray(ids)})
        return _unit(out) if normalize and not self.normalized else out

    # ------------------------------------------------------------------------------------ the protocol

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.encode_image(batch, normalize=True)

    def embed_ids(self, ids: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.encode_text(ids, normalize=True)

    def weights_sha256(self) -> str | None:
        return self.meta.get("weights_sha256")

    @property
    def logit_scale(self) -> float | None:
        scale = self.meta.get("logit_scale")
        return None if scale is None else float(scale)


def self_check(embedder, meta: dict, runtime: str, precision: str):
    """The export's probes through `embedder` against their fp32 reference (None when it recorded none)."""
    from . import probes

    reference = probes.load(embedder.directory, meta.get("probes"))
    if reference is None:
        return None
    return probes.check(embedder, reference, precision, f"{embedder.directory} on {runtime} ({precision})")


def load(directory: "str | os.PathLike", threads: int | None = None, providers: list[str] | None = None,
         spinning: bool = True, check: bool = True) -> OnnxModel:
    return OnnxModel(directory, threads, providers, spinning, check)


def open(spec: str, options) -> OnnxModel:  # noqa: A001 (the runtimes' factory calls it by this name)
    """`spec`: a folder from `dualtower export`; a service (options.service) keeps idle threads from spinning."""
    model = OnnxModel(spec, spinning=not options.service)
    if options.note is not None and options.precision not in ("auto", model.precision):
        options.note(f"note: ONNX Runtime runs {spec} at the precision it was exported at ({model.precision}), not "
                     f"{options.precision}; --runtime openvino runs an fp32 export in bf16")
    return model

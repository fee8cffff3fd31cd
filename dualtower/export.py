"""Export the towers for deployment without PyTorch: ONNX (run by ONNX Runtime, `dualtower.onnx`) or torch.export
programs (`.pt2`).

    export(model, out, format="onnx", precision="fp32", normalize=False, opset=20)

writes into the folder `out`:

    image.onnx   pixels (B, 3, S, S) float32 -> image_embeds (B, E); B dynamic (and H, W with dynamic_size=True)
    text.onnx    ids (B, L) int64 -> text_embeds (B, E); B and L dynamic (L <= the context length), pooled
                 inside the graph at each row's own position (its first end-of-text token, or the model's rule)
    config.json  the model's config (preprocessing included), the inputs and outputs, precision, normalisation
    tokenizer files and a README.md for someone who has no PyTorch

`dynamic_size=True`: the image graph takes any height and width. format "torch-export" writes `image.pt2` and
`text.pt2` (torch.export programs, same dynamic dimensions); with `aot=True` also `image.aoti.pt2` and
`text.aoti.pt2`, AOTInductor packages compiled for this platform (needs a C++ compiler); `load_programs(dir)`
runs either.

A vision-only model writes no text.onnx, a text-only one no image.onnx. `precision`: "fp32"; "fp16" (weights and
activations in half precision, inputs and outputs float32); "int8" (ONNX Runtime's dynamic quantisation of the
matrix products' weights, activations quantised per call). `normalize=True` puts the L2 normalisation in the
graphs.

The text graph takes any length up to the context length: a caller may cut the padding after the longest
pooled position (the runtime does), which under the causal mask changes nothing. Rows with no end-of-text token
are the caller's to refuse (the runtime does) since a graph cannot raise.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import export_readme, io, lowering, openvino_ir
from .checkpoint import weights_sha256
from .config import ConvVisionConfig
from .errors import UserError, require
from .export_format import FORMAT_NAME, PRECISIONS, VERSION, _inside, read_config

FORMATS = ("onnx", "openvino", "torch-export")


class ImageGraph(nn.Module):
    """`dynamic_size`: any height and width, the positional embeddings resized inside the graph (bicubic, as
    `encode_image(..., interpolate_pos=True)` does) and 2-D rotary angles computed for the grid."""

    def __init__(self, model, normalize: bool, dynamic_size: bool = False):
        super().__init__()
        self.visual, self.normalize, self.dynamic_size = model.visual, normalize, dynamic_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.visual(pixels, self.dynamic_size)
        return F.normalize(x, dim=-1) if self.normalize else x


# A NaFlex image graph's inputs, named as transformers' Siglip2 image processor names them.
NAFLEX_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")


class NaFlexGraph(nn.Module):
    """A NaFlex tower (SigLIP 2): patches (B, N, p * p * 3) float32, their mask (B, N) int64 (1 for a patch, the
    patches first) and each image's grid (B, 2) int64 -> (B, E). N is dynamic; the positions are resampled to
    every image's grid inside the graph (`VisionTower.encode_patch_graph`)."""

    dynamic_size = False  # the patch count is dynamic; there is no image size

    def __init__(self, model, normalize: bool):
        super().__init__()
        self.visual, self.normalize = model.visual, normalize

    def forward(self, values: torch.Tensor, mask: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
        x = self.visual.encode_patch_graph(values, mask, shapes)
        return F.normalize(x, dim=-1) if self.normalize else x


class TextGraph(nn.Module):
    """The text tower without its data-dependent checks and trimming: pooling positions come from the ids."""

    def __init__(self, model, normalize: bool):
        super().__init__()
        self.text, self.normalize = model.text, normalize

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.text.encode(ids)
        return F.normalize(out, dim=-1) if self.normalize else out


@dataclass
class ExportReport:
    out: Path
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    seconds: float = 0.0

    def summary(self) -> str:
        sizes = ", ".join(f"{n} {b / 2**20:.1f} MB" for n, b in self.files.items())
        return f"{self.out}: {sizes} in {self.seconds:.1f} s"


def export(model, out: "str | os.PathLike", format: str = "onnx", precision: str = "fp32", normalize: bool = False,
           opset: int | None = None, dynamic_size: bool = False, aot: bool = False, reparameterize: bool = True,
           calibration: "list | None" = None) -> ExportReport:
    """`reparameterize`: a convolutional tower's training-time branches are folded into single convolutions
    first (`DualEncoder.reparameterize`: the same outputs, fewer operations); the caller's model is unchanged.
    `opset`: 20 by default, where a GELU is one ONNX op (at 18 it is Div/Erf/Mul/Add: 1.4x the images/s on the
    conv towers, 1.2x on ViT-B-16 int8, benchmarks/RESULTS.md). `calibration`: image paths for int8 of a
    convolutional tower, whose convolutions are quantised statically (`lowering.quantize_conv`), or for any
    OpenVINO int8 (`openvino_ir`); scikit-learn's sample photos by default."""
    naflex = model.cfg.vision is not None and model.cfg.vision.naflex
    _check_request(model.cfg.name, format, precision, aot, naflex and dynamic_size)
    opset = 20 if opset is None else opset
    started = time.monotonic()
    # The caller's model keeps its dtype, device and mode. In eval mode the training-time parts (dropout, drop path,
    # patch dropout) are identities; every family built here exports exactly (tests/test_export.py).
    model = copy.deepcopy(model).float().eval().cpu()
    model.set_grad_checkpointing(False)
    digest = weights_sha256(model)  # the model's identity is its weights as given: folding computes the same
    if reparameterize:
        model.reparameterize()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    graphs = _graphs(model, normalize, dynamic_size)
    with io.atomic_directory(out, replaceable=lambda d: (d / "config.json").is_file() or not any(d.iterdir())) as tmp:
        files = {}
        for name, graph in graphs.items():
            files.update(_write_graph(model, name, graph, tmp, format, precision, opset, aot, calibration))
        from .runtimes import as_embedder, probes

        record = probes.save(as_embedder(model), tmp)  # the fp32 reference every runtime is held to
        _write_side_files(model, tmp, out.name, format, precision, normalize, opset, graphs, aot, digest, record)
        if format == "openvino" and precision == "int8":
            openvino_ir.check(tmp)
    return ExportReport(out, files, time.monotonic() - started)


def _check_request(name: str, format: str, precision: str, aot: bool, naflex_resized: bool) -> None:
    """Refuses what export cannot write, before any work."""
    if format not in FORMATS:
        raise UserError(f"format {format!r} is not one of {FORMATS}")
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {PRECISIONS}")
    if format == "torch-export" and precision != "fp32":
        raise UserError("torch-export writes fp32 programs; --precision is for ONNX")
    if format == "openvino" and precision not in ("fp32", "int8"):
        raise UserError(f"openvino writes fp32 or int8 models, not {precision} (OpenVINO runs fp32 in bf16 by itself "
                        "on processors with bf16 units)")
    if aot and format != "torch-export":
        raise UserError("aot (AOTInductor packages) is for format torch-export")
    if aot and shutil.which(os.environ.get("CXX", "c++")) is None:
        raise UserError("aot needs a C++ compiler (AOTInductor compiles the programs); none found on PATH "
                         "(set CXX or install g++)")
    if naflex_resized:
        raise UserError(f"{name} has a NaFlex vision tower: its graph takes any patch count and grid "
                         "already; --dynamic-size is for fixed-size towers")


def _graphs(model, normalize: bool, dynamic_size: bool) -> dict:
    """name -> (graph module, example input, input name(s), output name) for each tower the model has."""
    graphs = {}
    if model.cfg.vision is not None and model.cfg.vision.naflex:
        graphs["image"] = (NaFlexGraph(model, normalize).eval(), _example_patches(model), list(NAFLEX_INPUTS),
                           "image_embeds")
    elif model.visual is not None:
        size = model.cfg.vision.image_size
        graphs["image"] = (ImageGraph(model, normalize, dynamic_size).eval(), torch.zeros(2, 3, size, size),
                           "pixels", "image_embeds")
    if model.text is not None:
        graphs["text"] = (TextGraph(model, normalize).eval(), _example_ids(model), "ids", "text_embeds")
    return graphs


def _write_graph(model, name: str, graph: tuple, tmp: Path, format: str, precision: str, opset: int, aot: bool,
                 calibration) -> dict[str, int]:
    """One tower's graph written into `tmp` in `format` at `precision`; the files it wrote, name -> bytes."""
    module, example, input_name, output_name = graph
    conv_image = name == "image" and isinstance(model.cfg.vision, ConvVisionConfig)
    files = {}
    if format == "onnx":
        path = tmp / f"{name}.onnx"
        _to_onnx(module, example, input_name, output_name, path, opset, name == "text")
        if precision == "int8" and conv_image:
            lowering.quantize_conv(path, lowering.calibration_pixels(model.cfg, calibration))
        elif precision != "fp32":
            lowering.lower(path, precision)
    elif format == "openvino":
        onnx_path, path = tmp / f"{name}.onnx", tmp / f"{name}.xml"
        _to_onnx(module, example, input_name, output_name, onnx_path, opset, name == "text")
        samples = None if precision == "fp32" else openvino_ir.image_samples(model, calibration) \
            if name == "image" else openvino_ir.text_samples(model)
        openvino_ir.convert(onnx_path, path, precision, samples, transformer=not conv_image)
        onnx_path.unlink()
        files[path.with_suffix(".bin").name] = path.with_suffix(".bin").stat().st_size
    else:
        path = tmp / f"{name}.pt2"
        with torch.no_grad():
            program = torch.export.export(module, _tuple(example),
                                          dynamic_shapes=_tuple(_dims(example, name == "text", module)))
        torch.export.save(program, path)
        if aot:  # compiled for this platform (CPU here; a CUDA model compiles for its GPU)
            from torch._inductor import aoti_compile_and_package

            package = tmp / f"{name}.aoti.pt2"
            aoti_compile_and_package(program, package_path=str(package))
            files[package.name] = package.stat().st_size
    files[path.name] = path.stat().st_size
    return files


def load_programs(directory: "str | os.PathLike", aot: bool = True) -> dict:
    """The graphs of a torch-export folder as callables, name -> module: the AOTInductor package where the export
    wrote one and `aot` is true (compiled code, no Python per layer), else the torch.export program.

    A torch-export folder is a program: an AOTInductor package is native code compiled for this platform, and
    runs as such; load only folders you made or trust. A plain `.pt2` program is checked before torch reads it
    (`check_program_archive`): torch would unpickle a weight marked as pickled, a legacy weights or constants
    file, or sample inputs that fail the safe loader, and so run the file's code."""
    directory = Path(directory)
    graphs = read_config(directory, "torch-export")["graphs"]
    programs = {}
    for name, graph in graphs.items():
        if aot and graph.get("aoti"):
            from torch._inductor import aoti_load_package

            programs[name] = aoti_load_package(str(_inside(directory, graph["aoti"])))
        else:
            path = _inside(directory, graph.get("file"))
            check_program_archive(path)
            programs[name] = torch.export.load(path).module()
    return programs


def check_program_archive(path: Path) -> None:
    """Refuse a `.pt2` archive holding anything torch.export.load would unpickle beyond plain data: only what
    torch.export.save writes for plain tensors is accepted (raw weight and tensor-constant files, JSON graphs
    and configs with no pickled payload, text markers, and sample inputs that torch.load(weights_only=True)
    reads)."""
    import json
    import zipfile

    def refuse(why: str):
        raise UserError(f"{path}: refused: {why}; a torch-export folder is a program, and dualtower loads only "
                         "the plain programs its exporter writes")

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a torch.export archive ({e})") from None
    with archive:
        names = archive.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any(n.startswith("/") or ".." in n.split("/") for n in names):
            refuse("its members do not sit in one folder of the archive")
        for name in names:
            inner = name.split("/", 1)[1] if "/" in name else ""
            if inner.endswith("/") or inner in ("archive_format", "archive_version", "byteorder", ".data/version",
                                               ".data/serialization_id") or inner.startswith("extra/"):
                continue
            if inner.startswith("models/") and inner.endswith(".json"):
                continue
            if inner.startswith(("data/weights/", "data/constants/")) and inner.endswith("_config.json"):
                try:
                    config = json.loads(archive.read(name)).get("config", {})
                except (ValueError, AttributeError):
                    refuse(f"{inner} is not JSON")
                for fqn, entry in config.items():
                    if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
                        refuse(f"{inner}: {fqn!r} is stored pickled")
                    file = entry.get("path_name")
                    if not isinstance(file, str) or not file.startswith(("weight_", "tensor_")) or "/" in file:
                        refuse(f"{inner}: {fqn!r} is stored as {file!r}, not a plain tensor")
                continue
            if inner.startswith(("data/weights/weight_", "data/constants/tensor_")):
                continue  # raw tensor bytes, read as such
            if inner.startswith("data/sample_inputs/") and inner.endswith(".pt"):
                import io as _io

                try:
                    torch.load(_io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as e:
                    from .errors import unpickling_reason

                    refuse(f"{inner} is not plain data ({unpickling_reason(e)})")
                continue
            refuse(f"it holds {inner!r}, which torch.export.save does not write for a plain program "
                   "(a legacy or pickled weights file, a custom object)")


def _example_ids(model) -> torch.Tensor:
    cfg = model.text.cfg
    length = min(cfg.context_length, 8)
    ids = torch.randint(1, max(2, min(cfg.vocab_size, 1000)), (2, length))
    if cfg.pool == "eot":
        ids = torch.where(ids == cfg.eot_id, torch.ones_like(ids), ids)
        ids[0, length - 1] = cfg.eot_id
        ids[1, length // 2] = cfg.eot_id
    return ids


def _example_patches(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two images of other grids (2 x 3 and 3 x 1 patches), padded to 6: the graph sees padding and two shapes."""
    p = model.cfg.vision.patch_size
    values = torch.randn(2, 6, p * p * 3)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]], dtype=torch.long)
    return values, mask, torch.tensor([[2, 3], [3, 1]], dtype=torch.long)


def _tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _dims(example, text: bool, graph):
    """The dynamic dimensions of a graph's input (a tuple of them for the NaFlex graph's three inputs)."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    if isinstance(graph, NaFlexGraph):
        patches = torch.export.Dim("patches", min=2, max=65536)
        return {0: batch, 1: patches}, {0: batch, 1: patches}, {0: batch}
    if not text:
        if not graph.dynamic_size:
            return {0: batch}
        # at least two patches a side: a one-patch side would let the exporter specialise the resize away
        patch = graph.visual.cfg.stride
        return {0: batch, 2: torch.export.Dim("height", min=2 * patch, max=8192),
                3: torch.export.Dim("width", min=2 * patch, max=8192)}
    return {0: batch, 1: torch.export.Dim("length", min=1, max=graph.text.cfg.context_length)}


def _to_onnx(graph, example, input_name: str, output_name: str, path: Path, opset: int, text: bool) -> None:
    require("onnxscript", "ONNX export", "onnx")
    import logging
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        names = input_name if isinstance(input_name, list) else [input_name]
        program = torch.onnx.export(graph, _tuple(example), dynamo=True, opset_version=opset, verbose=False,
                                    input_names=names, output_names=[output_name],
                                    dynamic_shapes=_tuple(_dims(example, text, graph)))  # by position
    program.save(str(path))  # one file: the weights inside (towers up to 2 GB)


def _write_side_files(model, directory: Path, name: str, format: str, precision: str, normalize: bool, opset: int,
                      graphs: dict, aot: bool = False, digest: str = "", probes: dict | None = None) -> None:
    from importlib import resources

    cfg = model.cfg
    dynamic = "image" in graphs and graphs["image"][0].dynamic_size
    ext = {"onnx": "onnx", "openvino": "xml"}.get(format, "pt2")
    io.write_json(directory / "config.json", {
        "format": FORMAT_NAME, "version": VERSION, "runtime": format, "precision": precision,
        "normalized": normalize, "opset": opset if format != "torch-export" else None,
        "dynamic_size": dynamic,
        "graphs": {name: {"file": f"{name}.{ext}", "input": g[2], "output": g[3],
                          **({"aoti": f"{name}.aoti.pt2"} if aot else {})} for name, g in graphs.items()},
        # what turns cosine similarities into logits: exp of the (clamped) learned temperature, and the bias
        "logit_scale": float(model.scale().detach()) if model.logit_scale is not None else None,
        "logit_bias": float(model.logit_bias.detach()) if model.logit_bias is not None else None,
        "model": cfg.to_dict(),
        # the exported weights' identity, as a search index records it (of the fp32 weights, before lowering)
        "weights_sha256": digest,
        # fixed probe images and texts embedded by PyTorch in fp32: a runtime loading this folder embeds them too
        # and refuses to run below its precision's floor (runtimes/probes.py)
        "probes": probes,
    })
    if cfg.text is not None:
        if cfg.tokenizer == "clip-bpe":  # OpenAI's vocabulary (MIT), for clients in other languages
            for asset in ("bpe_simple_vocab_16e6.txt.gz", "NOTICE"):
                data = resources.files("dualtower").joinpath(f"assets/{asset}").read_bytes()
                (directory / asset).write_bytes(data)
            from .tokenizers import get_tokenizer

            files = get_tokenizer(cfg).hf_files()  # a fast tokenizer.json: no BPE to rebuild in another runtime
            for file in ("tokenizer.json", "special_tokens_map.json"):
                (directory / file).write_text(files[file], encoding="utf-8")
        else:  # SentencePiece, or SigLIP 2's tokenizer.json: the export embeds text with them
            from .origin import tokenizer_files

            for file, path in tokenizer_files(model).items():
                shutil.copyfile(path, directory / file)
    readme = export_readme.text(cfg, name, format, precision, normalize, graphs, ext, dynamic)
    io.write_text(directory / "README.md", readme)

"""The towers as OpenVINO models (`dualtower export --format openvino`): the ONNX graphs the exporter writes,
converted to OpenVINO's own files (`image.xml` with its weights in `image.bin`, likewise text), in fp32, or in
int8 by OpenVINO's post-training quantisation (NNCF) calibrated on images and captions.

Why OpenVINO's own int8 rather than the ONNX int8 graph: OpenVINO runs the ONNX export's dynamic quantisation
(ONNX Runtime's own operators) no faster than fp32, while the models NNCF quantises run their products on the
processor's int8 units (VNNI, AMX) and the rest in bf16 where the processor has it: ViT-B-16 at 4.9x open_clip
fp32 on an AMX Xeon, against 2.8x for ONNX Runtime int8 (benchmarks/roofline.py, RESULTS.md). The OpenVINO
runtime (`runtimes/openvino.py`) runs these folders, and holds them to the int8 self-check like any export.

Needs `openvino`, and `nncf` for int8 (pip install 'dualtower[nncf]'; imported only here).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np

from .errors import require

# What the text tower's activation ranges are calibrated on: captions of the kinds people search with (objects,
# scenes, people, text, numbers, other languages' words), none of them the self-check's probe texts.
CAPTIONS = (
    "a photo of a dog running on the beach", "a close-up of a red flower with water drops", "the skyline of a city "
    "at night", "a bowl of noodles on a wooden table", "two children riding bicycles in a park", "a handwritten "
    "note on lined paper", "an old stone temple in the mountains", "a screenshot of a spreadsheet", "a cat sleeping "
    "on a sofa", "a plate of sushi", "a snowy forest at sunrise", "a man in a blue suit giving a speech",
    "a bar chart of quarterly sales", "a black and white portrait of a woman", "a yellow taxi on a busy street",
    "the number 42 painted on a wall", "a diagram of the human heart", "a pair of running shoes", "fireworks over "
    "a harbour", "a birthday cake with candles", "an aerial view of farmland", "a street sign that says STOP",
    "a sailing boat on a calm lake", "a microscope image of cells", "a watercolour painting of a village",
    "une photo d'un chat noir", "ein Hund im Schnee", "a blurry photo of a bird", "a receipt from a grocery store",
    "a tiny pixelated drawing of a house", "itap of a guitar.", "a photo of the large elephant.",
)


def convert(onnx_path: Path, xml_path: Path, precision: str, samples: list[dict] | None = None,
            transformer: bool = True) -> None:
    """Writes `xml_path` (and its .bin) from the ONNX graph at `onnx_path`: as it is for "fp32"; for "int8"
    quantised by NNCF with `samples` (the graph's inputs, one dict per sample) as calibration. `transformer`:
    NNCF's transformer scheme (the attention's softmax and the norms kept in higher precision), else its
    convolutional one."""
    from .runtimes.openvino import import_openvino

    ov = import_openvino()  # imported as the runtime imports it (its logging handler kept off other streams)
    model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        nncf = require("nncf", "OpenVINO int8 export", "nncf")
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                           AdvancedSmoothQuantParameters)

        # SmoothQuant (NNCF's default for transformers) off: it moved the probes' cosine to fp32 from 0.9998 to
        # 0.994 on ViT-B-16's image tower and from 0.9987 to 0.991 on its text tower, at the same speed (RESULTS.md)
        advanced = AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
        # A convolutional tower's depthwise convolutions stay in floating point: they read each input once, so int8
        # saves no arithmetic there, only adds quantise and dequantise steps, and their few weights per channel
        # lose the most (MobileCLIP2-S0: 82 against 111 images/s and probes' cosine 0.9945 against 0.9999).
        ignored = None if transformer else nncf.IgnoredScope(types=["GroupConvolution"], validate=False)
        with _quiet():
            model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                  preset=nncf.QuantizationPreset.MIXED, advanced_parameters=advanced,
                                  model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                                  ignored_scope=ignored)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)  # fp32 weights: what the runtime computes with


def image_samples(model, calibration) -> list[dict]:
    """The image graph's inputs for each calibration image (`lowering.calibration_images`), preprocessed as the
    runtimes do: {"pixels": (1, 3, S, S)}, or a NaFlex tower's three patch inputs."""
    from .images import ArrayTransform, NaFlexArrayTransform
    from .lowering import calibration_images

    images = calibration_images(calibration)
    if not model.cfg.vision.naflex:
        transform = ArrayTransform(model.cfg.preprocess)
        return [{"pixels": transform(im)[None].astype(np.float32)} for im in images]
    transform = NaFlexArrayTransform(model.cfg.preprocess)
    samples = []
    for im in images:
        values, mask, shapes = transform.collate([transform(im)])
        samples.append({"pixel_values": values, "pixel_attention_mask": mask, "spatial_shapes": shapes})
    return samples


def text_samples(model) -> list[dict]:
    """The text graph's inputs for each of CAPTIONS: {"ids": (1, L)}, cut after the pooled token under a causal
    mask as the runtimes cut them."""
    from .runtimes import as_embedder, probes
    from .text_pool import pool_positions

    cfg = model.cfg.text
    ids = probes.text_ids(as_embedder(model), CAPTIONS)
    samples = []
    for row in ids:
        row = row[None]
        if cfg.causal:
            row = row[:, : int(pool_positions(row, cfg).max()) + 1]
        samples.append({"ids": np.ascontiguousarray(row, np.int64)})
    return samples


def check(directory: Path) -> None:
    """Refuses an int8 folder whose towers fail the self-check (the probes' cosine to PyTorch's fp32 below the
    int8 floor) before it replaces anything: the export fails, naming the cosines and the cure."""
    from .errors import UserError
    from .runtimes import probes
    from .runtimes.openvino import OpenVinoModel

    model = OpenVinoModel(directory, check=False)  # as it will run by default (the rest in bf16 where it can)
    reference = dict(probes.load(directory, model.meta["probes"]))
    result = probes.compare(probes.embed(model, reference.pop("text_ids", None)), reference, model.precision)
    if not result.passed:
        raise UserError(f"the {model.precision} model OpenVINO's quantisation made fails the self-check: the probes' "
                        f"cosine to PyTorch's fp32 is {result.summary()}; export it in fp32, or calibrate on photos "
                        "like yours (--calibration)")


@contextlib.contextmanager
def _quiet():
    """NNCF's progress bars and its INFO lines are for its own command line, not for a library call."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        try:
            yield
        finally:
            logger.setLevel(level)

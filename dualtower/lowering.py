"""An exported ONNX graph at a precision below fp32: fp16 weights and activations, int8 by dynamic quantisation of
the matrix products (the ViTs and text towers), or for a convolutional tower static int8 calibrated on images.
ONNX Runtime's tools do the work; they are imported only here."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import UserError, require


def calibration_pixels(cfg, calibration):
    """(N, 3, S, S) float32: `calibration_images` through the model's eval preprocessing."""
    import numpy as np

    from .images import ArrayTransform

    transform = ArrayTransform(cfg.preprocess)
    return np.stack([transform(im) for im in calibration_images(calibration)]).astype(np.float32)


def calibration_images(calibration) -> list:
    """The images an int8 export calibrates its activation ranges on: the files `calibration` names (a bad one
    skipped, counted and logged), or by default scikit-learn's two sample photos (a temple, a flower), each as
    the whole photo and eight crops."""
    from .images import ImageDecodeError, open_image

    if calibration:
        images, skipped = [], []
        for path in calibration:
            try:
                images.append(open_image(path))
            except ImageDecodeError as e:  # a bad file is skipped, counted and logged, as a dataset's are
                skipped.append(str(e))
        if skipped:
            logging.getLogger("dualtower.export").warning("calibration: %d file(s) skipped, e.g. %s", len(skipped),
                                                          skipped[0])
        if not images:
            raise UserError(f"calibration: none of the {len(skipped)} files is an image read here")
        return images
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise UserError("an int8 export calibrates its activations on images: pass --calibration with a few dozen "
                        "of your photos (or install scikit-learn, whose sample photos are the default)") from None
    from PIL import Image

    images = []
    for array in load_sample_images().images:
        photo = Image.fromarray(array)
        w, h = photo.size
        images.append(photo)
        for i in range(8):  # crops at two scales across the photo
            side = int(min(w, h) * (0.5 if i < 4 else 0.75))
            x, y = (w - side) * (i % 4) // 3, (h - side) * ((i // 2) % 2)
            images.append(photo.crop((x, y, x + side, y + side)))
    return images


def quantize_conv(path: Path, pixels) -> None:
    """Static int8 of a convolutional image graph: the dense convolutions and matrix products quantised per
    channel (int8 weights, uint8 activations with ranges calibrated on `pixels`), the depthwise convolutions
    left in fp32. Measured on MobileCLIP2-S0 (benchmarks/mobileclip.py): 1.3x the images/s of the fp32 graph,
    where quantising every convolution (depthwise too) or only the matrix products (the dynamic scheme of the
    ViTs) gains nothing, the depthwise ones being memory-bound and surrounded by conversions."""
    onnx = require("onnx", "int8 export", "onnx")
    quantization = require("onnxruntime.quantization", "int8 export", "onnx")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": pixels[i:i + 4]} for i in range(0, len(pixels), 4)])

        def get_next(self):
            return next(self.batches, None)

    pre, tmp = path.with_suffix(".pre.onnx"), path.with_suffix(".int8.onnx")
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        quantization.quant_pre_process(str(path), str(pre))  # shapes inferred, so every node can be quantised
        graph = onnx.load(str(pre))
        depthwise = [n.name for n in graph.graph.node if n.op_type == "Conv"
                     and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        quantization.quantize_static(
            str(pre), str(tmp), Reader(), quant_format=quantization.QuantFormat.QOperator, per_channel=True,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul"], nodes_to_exclude=depthwise)
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
    os.replace(tmp, path)


def lower(path: Path, precision: str) -> None:
    if precision == "int8":
        quantization = require("onnxruntime.quantization", "int8 export", "onnx")
        tmp = path.with_suffix(".int8.onnx")
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)  # its advice to pre-process is for models with dynamic shapes it cannot infer
        try:
            # Dynamic quantisation of the products' weights. ONNX Runtime's transformer fusions first, or static
            # quantisation, gave no more images/s here (benchmarks/int8_variants.py, RESULTS.md).
            quantization.quantize_dynamic(str(path), str(tmp), weight_type=quantization.QuantType.QInt8,
                                          op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
        os.replace(tmp, path)
        return
    onnx = require("onnx", "fp16 export", "onnx")
    float16 = require("onnxruntime.transformers.float16", "fp16 export", "onnx")
    model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save(model, str(path))

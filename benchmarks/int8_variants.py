"""Which int8 recipe makes the image tower fastest on ONNX Runtime: one fp32 export of ViT-B-32 (random weights),
then, in one process, alternated, on the same input (batch 32 at 224 px): the fp32 graph; the graph after ONNX
Runtime's transformer fusions (residual + norm, bias + GELU); dynamic int8 of the plain graph (what `export
--precision int8` writes) and of the fused one; static int8 (activations calibrated ahead of time on a few
batches) in QOperator and QDQ form. Prints images/s, the ratio to fp32 and each variant's minimum cosine to fp32.

    .venv/bin/python benchmarks/int8_variants.py [--arch ViT-B-32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    import dualtower
    from dualtower.apps.machine import describe
    from onnxruntime.transformers import optimizer

    from dualtower.export import export

    logging.getLogger().setLevel(logging.ERROR)
    print(f"machine: {describe()}; onnxruntime {ort.__version__}, its default threads; {args.arch} image tower")
    pixels = np.random.RandomState(0).randn(32, 3, 224, 224).astype(np.float32)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixels": np.random.RandomState(i + 1).randn(4, 3, 224, 224).astype(np.float32)}
                                 for i in range(4)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        export(dualtower.create_model(args.arch, seed=0), d / "fp32")
        plain, fused = d / "fp32" / "image.onnx", d / "fused.onnx"
        # residual + norm and bias + GELU fused into single kernels (ONNX Runtime's transformer optimizer)
        optimizer.optimize_model(str(plain), model_type="bert", opt_level=0).save_model_to_file(str(fused))
        variants = {"fp32": plain, "fp32, fused": fused}
        variants["int8 dynamic (the export's)"] = d / "dynamic.onnx"
        quantize_dynamic(str(plain), str(variants["int8 dynamic (the export's)"]), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        variants["int8 dynamic, fused"] = d / "dynamic-fused.onnx"
        quantize_dynamic(str(fused), str(variants["int8 dynamic, fused"]),
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        for form in (QuantFormat.QOperator, QuantFormat.QDQ):
            path = d / f"static-{form.name}.onnx"
            quantize_static(str(fused), str(path), Calibration(), quant_format=form, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            variants[f"int8 static {form.name}, fused"] = path
        sessions = {name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                    for name, path in variants.items()}
        outputs = {name: s.run(None, {"pixels": pixels})[0] for name, s in sessions.items()}  # warm-up
        seconds = {name: [] for name in sessions}
        for _ in range(args.repeats):  # alternated, so a slower minute hits every variant alike
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {"pixels": pixels})
                seconds[name].append(time.perf_counter() - start)
    ref = outputs["fp32"]
    base = 32 / min(seconds["fp32"])
    for name, out in outputs.items():
        rate = 32 / min(seconds[name])
        cosine = ((out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).min()
        print(f"  {name:36s} {rate:6.1f} images/s  {rate / base:4.2f}x fp32   min cosine {cosine:.5f}")


if __name__ == "__main__":
    main()

"""The OpenVINO runtime: the graphs of an export folder compiled by OpenVINO for the CPU, behind the Embedder
protocol: an ONNX export (`dualtower export --format onnx`), or OpenVINO's own models (`--format openvino`, fp32
or int8 quantised by NNCF: `openvino_ir.py`). Needs numpy, Pillow and `openvino` (pip install
'dualtower[openvino]'), not torch.

Why a third runtime: on processors with AMX, OpenVINO runs an fp32 export's products in bf16 on the AMX units
(its `INFERENCE_PRECISION_HINT`), where ONNX Runtime's CPU kernels have no bf16 path (benchmarks/roofline.py,
RESULTS.md "Every CPU at its roofline"). The export folder, its preprocessing, tokenizer and self-check probes are
the ONNX runtime's; only the sessions differ.

    model = dualtower.runtimes.open("export-folder", runtime="openvino", options)   # precision: auto, fp32, bf16
    model.precision     # what it runs at: "fp32", "bf16", or "int8" for an int8 export (its other operations in
                        # bf16 or fp32 as the hint says)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError, require
from .onnx import OnnxModel

PRECISIONS = ("auto", "fp32", "bf16")


class OpenVinoModel(OnnxModel):
    """`precision`: "fp32" (exact), "bf16" (the products in bfloat16: on AMX or AVX512-BF16 processors), or "auto"
    (bf16 where the processor has bf16 units, else fp32). An int8 or fp16 export runs as it was written, its
    operations left in floating point at that precision."""

    runtime = "openvino"
    runtime_name = "OpenVINO"
    formats = ("onnx", "openvino")

    def __init__(self, directory, threads: int | None = None, precision: str = "auto", check: bool = True,
                 spinning: bool = True):
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r} is not one of {PRECISIONS} for the openvino runtime")
        self._asked = precision
        super().__init__(directory, threads, spinning=spinning, check=check)

    @property
    def precision(self) -> str:
        if self.meta["precision"] != "fp32":
            return self.meta["precision"]
        return self._hint

    @property
    def hint(self) -> str:
        """The floating-point precision OpenVINO computes at ("bf16" or "fp32"): every operation of an fp32 export,
        those an int8 export did not quantise."""
        return self._hint

    def compile(self, graphs: dict[str, Path], threads: int | None, providers, spinning: bool) -> dict:
        ov = import_openvino()
        core = ov.Core()
        self._hint = self._asked
        if self._asked == "auto":
            from ..apps.machine import bf16_units

            self._hint = "bf16" if bf16_units() else "fp32"
        # One stream with every thread: each call here is one synchronous batch. (THROUGHPUT would split the cores
        # into streams for parallel requests, and a lone call would run on one stream's share: half the speed on
        # 2 cores, measured.)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self._hint == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = {}
        for name, path in graphs.items():
            try:
                graph = core.read_model(str(path))
                try:
                    compiled[name] = core.compile_model(graph, "CPU", config)
                except RuntimeError as e:  # older OpenVINO refuses bf16 on a processor without it; newer ones
                    if "BF16" not in str(e).upper() or config["INFERENCE_PRECISION_HINT"] != "bf16":  # fall back
                        raise
                    config["INFERENCE_PRECISION_HINT"] = "f32"
                    compiled[name] = core.compile_model(graph, "CPU", config)
            except RuntimeError as e:  # a damaged or truncated graph or weights file: its own words, one line
                detail = " ".join(str(e).split())[-300:]
                raise UserError(f"{path}: OpenVINO cannot run it ({detail}); export it again") from None
            # what it really runs at: OpenVINO falls back to f32 where the processor has no bf16 units
            actual = compiled[name].get_property("INFERENCE_PRECISION_HINT").get_type_name()
            self._hint = "bf16" if actual == "bf16" else "fp32"
        return compiled

    def run(self, name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        result = self.sessions[name](inputs)  # a compiled model is callable: one synchronous inference
        return np.asarray(result[0], dtype=np.float32)


def import_openvino():
    """`import openvino`, which imports absl.logging (through its TensorFlow front end). absl makes a handler on the
    sys.stderr of that moment and closes it when logging's handlers are reset (uvicorn's dictConfig does, at
    `serve`), unless it is the process's own stderr: under pytest's capture or in a notebook it would close their
    stream. The handler is pointed at the process's stderr, which absl never closes."""
    import sys

    ov = require("openvino", "the openvino runtime", "openvino")
    absl = sys.modules.get("absl.logging")
    if absl is not None and sys.__stderr__ is not None:
        absl.get_absl_handler().python_handler.setStream(sys.__stderr__)
    return ov


def open(spec: str, options) -> OpenVinoModel:  # noqa: A001 (the runtimes' factory calls it by this name)
    """`spec`: a folder from `dualtower export --format onnx`, at options.precision (auto, fp32 or bf16); what
    auto chose is said to options.note."""
    model = OpenVinoModel(spec, precision=options.precision, spinning=not options.service)
    if options.note is not None and options.precision == "auto":
        checked = f"; probes {model.checked.summary()}" if model.checked is not None else ""
        rest = f", the rest in {model.hint}" if model.meta["precision"] != "fp32" else ""
        why = "this processor has bf16 units" if model.precision == "bf16" else \
            "no bf16 units on this processor" if model.meta["precision"] == "fp32" else "the export's own precision"
        options.note(f"precision auto: OpenVINO runs {spec} at {model.precision}{rest} ({why}){checked}")
    return model

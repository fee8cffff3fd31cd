"""An export folder's own description (config.json), read without torch: the ONNX runtime (`dualtower.onnx`) and
`export.load_programs` check it through `read_config` before anything runs on the folder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import io
from .errors import UserError

PRECISIONS = ("fp32", "fp16", "int8")
FORMAT_NAME = "dualtower-export"
VERSION = 1


def read_config(directory: "str | os.PathLike", runtime: "str | tuple[str, ...]") -> dict:
    """An export folder's config.json, checked field by field (the types this exporter writes, finite numbers,
    graph files inside the folder) before anything runs on it; ValueError naming the file and the field.
    `runtime`: the export format(s) the caller runs ("onnx", "openvino", "torch-export")."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise UserError(f"{directory}: not a dualtower export (no config.json)")
    meta = io.read_json(path)
    accepted = (runtime,) if isinstance(runtime, str) else tuple(runtime)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise UserError(f"{path}: not a dualtower {' or '.join(accepted)} export")
    if meta.get("runtime") not in accepted:
        hint = {"openvino": "; run it with --runtime openvino", "onnx": "; run it with --runtime onnx (or openvino)"}
        raise UserError(f"{path}: a dualtower {meta.get('runtime')} export, not {' or '.join(accepted)}"
                        f"{hint.get(meta.get('runtime'), '')}")

    def bad(field: str, why: str):
        raise UserError(f"{path}: {field} {json.dumps(meta.get(field))[:60]} {why}")

    if meta.get("version") != VERSION:
        bad("version", f"is not {VERSION}")
    if meta.get("precision") not in PRECISIONS:
        bad("precision", f"is not one of {PRECISIONS}")
    for flag in ("normalized", "dynamic_size"):
        if not isinstance(meta.get(flag, False), bool):
            bad(flag, "is not true or false")
    for number, low in (("logit_scale", 0.0), ("logit_bias", -math.inf)):
        value = meta.get(number)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not math.isfinite(value) or value <= low):
            bad(number, "is not a finite number" + (" above 0" if low == 0 else ""))
    graphs = meta.get("graphs")
    if not isinstance(graphs, dict) or not graphs or not set(graphs) <= {"image", "text"} or \
            not all(isinstance(g, dict) for g in graphs.values()):
        bad("graphs", "is not a table of the image and text graphs")
    for name, graph in graphs.items():
        for key in ("file", "aoti"):
            if key in graph:
                _inside(Path(directory), graph[key])
    from .config import ModelConfig

    try:
        ModelConfig.from_dict(meta.get("model"))
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: model: {e}") from None
    return meta


def _inside(directory: Path, name) -> Path:
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"{directory / 'config.json'}: names the file {name!r}, not a file of its folder")
    return directory / name

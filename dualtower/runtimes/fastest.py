"""`--runtime auto`: the model on the fastest runtime installed that can run it, measured once per machine and
export, said in one line.

    embedder = dualtower.runtimes.open("exported/", "auto", options)
    # "runtime auto: openvino (bf16), 3.9x onnx's image rate on AMX; measured now; probes image 0.99996, ..."

What can run what: a checkpoint, Hub or architecture name runs on PyTorch (whose own `--precision auto` picks fp32
or bf16 per tower: auto.py); an OpenVINO export (`export --format openvino`) on OpenVINO; an ONNX export on ONNX
Runtime, or on OpenVINO where it is installed (which runs an fp32 export's products in bf16 on AMX or AVX512-BF16
processors and an int8 one at its own precision). Nothing is converted behind the user's back: `dualtower export`
makes the other forms (RESULTS.md "Every CPU at its roofline" says which is fastest on which processor).

For an ONNX export with both installed, each runtime opens it (each passing its self-check, or it is not a
candidate), embeds a batch (8 probe images, 8 probe texts), warmed once, best of two alternated timings; the one
with the higher rate on the tower the command leans on wins (images for a batch command, texts for a service:
`options.service`). The rates are cached per processor, thread count, runtime versions and export (its weights
digest, precision and graph sizes), beside the PyTorch choices (`auto.cache_path()`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

from ..errors import UserError
from . import probes
from .auto import read_cache, write_cache


def open(spec: str, options):  # noqa: A001 (the runtimes' factory calls it by this name)
    from . import open as open_runtime
    from . import runtime_of

    kind = runtime_of(spec)
    if kind != "onnx" or importlib.util.find_spec("openvino") is None:
        why = {"torch": "a checkpoint runs on PyTorch; `dualtower export` makes its ONNX and OpenVINO forms",
               "openvino": "an OpenVINO export",
               "onnx": "OpenVINO, the other runtime of ONNX exports, is not installed"}[kind]
        embedder = open_runtime(spec, kind, options)
        _say(options, f"runtime auto: {kind} ({why})")
        return embedder
    candidates, failures = {}, {}
    for name in ("onnx", "openvino"):
        try:
            candidates[name] = open_runtime(spec, name, _quiet(options))
        except UserError as e:  # its self-check refused it on this processor, or it cannot run it
            failures[name] = str(e)
    if not candidates:
        raise UserError(f"{spec}: no runtime installed runs it here: " + "; ".join(failures.values()))
    tower = "text" if options.service or candidates[next(iter(candidates))].cfg.vision is None else "image"
    cache = read_cache()
    key = _key(spec, candidates)
    rates = cache.get(key)
    measured_now = rates is None or not set(candidates) <= set(rates)
    if measured_now:
        rates = _measure(candidates)
        cache[key] = {**rates, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_cache(cache)
    best = max(candidates, key=lambda name: rates[name][tower])
    others = [n for n in candidates if n != best]
    chosen = candidates[best]
    versus = ", ".join(f"{rates[best][tower] / rates[n][tower]:.2f}x {n}'s" for n in others) or "alone"
    checked = f"; probes {chosen.checked.summary()}" if chosen.checked is not None else ""
    refused = "".join(f"; {n} refused: {why}" for n, why in failures.items())
    _say(options, f"runtime auto: {best} ({chosen.precision}), {versus} {tower} rate, "
                  f"{'measured now' if measured_now else 'cached'}{checked}{refused}")
    return chosen


def _measure(candidates: dict) -> dict[str, dict[str, float]]:
    """Items per second of each candidate, per tower, on the probes (twice over): each warmed once, then the best of
    two alternated timings."""
    towers = [t for t, cfg in (("image", "vision"), ("text", "text"))
              if getattr(next(iter(candidates.values())).cfg, cfg) is not None]
    work = {name: {t: probes.timing_work(embedder, t) for t in towers} for name, embedder in candidates.items()}
    best: dict[str, dict[str, float]] = {name: {} for name in candidates}
    for round_ in range(3):
        for name, jobs in work.items():
            for tower, (fn, items) in jobs.items():
                start = time.perf_counter()
                fn()
                if round_:  # round 0 warms up
                    rate = items / (time.perf_counter() - start)
                    best[name][tower] = max(best[name].get(tower, 0.0), rate)
    return best


def _key(spec: str, candidates: dict) -> str:
    from ..apps.machine import cpu_name

    folder = Path(spec)
    meta = next(iter(candidates.values())).meta  # the export's config.json, as the runtime read and checked it
    graphs = {g["file"]: (folder / g["file"]).stat().st_size for g in meta["graphs"].values()}
    versions = {}
    for module in ("onnxruntime", "openvino"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    facts = {"runtimes": sorted(candidates), "versions": versions, "cpu": cpu_name(), "threads": os.cpu_count(),
             "weights": meta.get("weights_sha256"), "precision": meta.get("precision"), "graphs": graphs}
    return "runtime:" + hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _quiet(options):
    """The options without their note: the candidates' own precision lines would be noise beside the choice's."""
    import dataclasses

    return dataclasses.replace(options, note=None)


def _say(options, line: str) -> None:
    if options.note is not None:
        options.note(line)

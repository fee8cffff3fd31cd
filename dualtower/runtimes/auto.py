"""`--precision auto` on the PyTorch runtime: each tower at the fastest precision this processor runs it at that
still passes the self-check, chosen once per machine and tower shape and said in one line.

    choice = choose(model)       # {"image": "bf16", "text": "fp32"}: the model's towers cast to it
    choice.line                  # "precision auto: image bf16 (4.9x fp32's rate, probes 0.99996), text ..."

1. Candidates: fp32 always; bf16 where the processor has bf16 matrix units (AMX or AVX512-BF16 on a CPU, a CUDA
   GPU that supports it). On AVX2 alone bf16 runs slower than fp32 (no native bf16 products), so it is not tried.
2. Speed: each candidate embeds a batch (8 probe images at the model's size; 8 texts at the full context), warmed
   once, then the best of two alternated timings. The result is cached per processor, thread count, torch
   version, device and tower config (`cache_path()`), so a second start does not measure again.
3. Exactness: a bf16 tower embeds the probes (`probes.py`) and is kept only when every probe is within the bf16
   floor of the fp32 tower's own embedding; otherwise the tower stays fp32 and the line says why. This runs on
   every start (the weights differ between models of one shape; the speed does not).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import probes


def cache_path() -> Path:
    """Where measured choices are kept: $DUALTOWER_CACHE, else $XDG_CACHE_HOME/dualtower, else ~/.cache/dualtower."""
    root = os.environ.get("DUALTOWER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dualtower")
    return Path(root) / "precision-auto.json"


def bf16_units(device: torch.device) -> str | None:
    """The name of the units that make bf16 fast on `device`, or None where bf16 would only be emulated."""
    if device.type == "cuda":
        return "CUDA bf16" if torch.cuda.is_bf16_supported() else None
    from ..apps.machine import bf16_units as cpu_units

    return cpu_units()


@dataclass
class Choice:
    precision: dict[str, str] = field(default_factory=dict)  # tower ("image", "text") -> "fp32" or "bf16"
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def line(self) -> str:
        return "precision auto: " + "; ".join(f"{t} {p} ({self.reasons[t]})" for t, p in self.precision.items())


def choose(model, measure: bool = True) -> Choice:
    """Casts each tower of `model` (a DualEncoder in fp32, in eval mode) to its fastest exact-enough precision and
    returns the choice. `measure=False` uses only what the cache holds (fp32 where it holds nothing)."""
    device = next(model.parameters()).device
    units = bf16_units(device)
    choice = Choice()
    towers = {name: tower for name, tower in (("image", model.visual), ("text", model.text)) if tower is not None}
    if units is None:
        from ..apps.machine import instruction_sets

        why = f"no bf16 matrix units on this processor: {instruction_sets() or 'unknown'}"
        return Choice({t: "fp32" for t in towers}, {t: why for t in towers})
    from .pytorch import TorchEmbedder

    embedder = TorchEmbedder(model)  # embeds with whatever precision the model's towers have at the time
    reference = probes.embed(embedder)
    cache = read_cache()
    for name, tower in towers.items():
        key = _key(model, name, device)
        ratio = cache.get(key, {}).get("bf16_vs_fp32")
        low = copy.deepcopy(tower).to(torch.bfloat16)
        measured_now = False
        if ratio is None and measure:
            ratio, measured_now = _ratio(embedder, name, tower, low), True
            cache[key] = {"bf16_vs_fp32": ratio, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        if ratio is None or ratio <= 1.05:  # not measured, or no clear gain: fp32 is the exact one
            choice.precision[name] = "fp32"
            choice.reasons[name] = "no measurement cached" if ratio is None else \
                f"bf16 ran at {ratio:.2f}x fp32's rate on {units}"
            continue
        _set_tower(model, name, low)
        found = probes.embed(embedder)
        result = probes.compare({name: found[name]}, {name: reference[name]}, "bf16")
        if not result.passed:
            _set_tower(model, name, tower)
            choice.precision[name] = "fp32"
            choice.reasons[name] = f"bf16 is {ratio:.2f}x faster on {units} but failed the self-check: " \
                                   f"{result.summary()}"
            continue
        del tower
        choice.precision[name] = "bf16"
        choice.reasons[name] = (f"{ratio:.2f}x fp32's rate on {units}, {'measured now' if measured_now else 'cached'}"
                                f"; probes cosine {result.cosines[name]:.5f}")
    write_cache(cache)
    return choice


def _set_tower(model, name: str, tower) -> None:
    setattr(model, "visual" if name == "image" else "text", tower)


@torch.inference_mode()
def _ratio(embedder, name: str, fp32, bf16) -> float:
    """bf16's rate over fp32's on one batch (the probes twice, through the embedder's own preprocessing and token
    ids): each warmed once, then the best of two alternated timings. The embeddings come back as numpy, so a
    GPU's work is finished inside each timing."""
    encode, _ = probes.timing_work(embedder, name)
    best = {}
    for _round in range(3):
        for precision, tower in (("fp32", fp32), ("bf16", bf16)):
            _set_tower(embedder.model, name, tower)
            start = time.perf_counter()
            encode()
            if _round:  # round 0 warms up
                best[precision] = min(best.get(precision, np.inf), time.perf_counter() - start)
    _set_tower(embedder.model, name, fp32)
    return float(best["fp32"] / best["bf16"])


def _key(model, name: str, device) -> str:
    from ..apps.machine import cpu_name

    tower_cfg = model.cfg.vision if name == "image" else model.cfg.text
    facts = {"tower": name, "config": dataclasses.asdict(tower_cfg),
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure again


def write_cache(cache: dict) -> None:
    from .. import io

    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        io.write_json(cache_path(), cache)
    except OSError:
        pass  # a read-only home: the choice is measured again next time, nothing else is lost

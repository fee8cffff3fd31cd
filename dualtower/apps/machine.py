"""What machine a number was measured on (reports and benchmarks name it)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# The instruction sets that decide how fast (and how exactly alike) matrix products run: fp32 kernels on AVX2 and
# on AVX-512 sum in other orders, and bf16 / int8 have units of their own on some processors.
MATRIX_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("avx512_bf16", "AVX512-BF16"),
                ("amx_tile", "AMX"))


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_units() -> str | None:
    """The name of this processor's bf16 matrix units ("AMX", "AVX512-BF16"), or None where bf16 products are only
    emulated (AVX2 alone: slower than fp32). The one rule `--precision auto` follows on every runtime."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def instruction_sets() -> str:
    """"AVX2, AVX-512, VNNI, AVX512-BF16" and so on: what of MATRIX_FLAGS this processor has ("" if unknown)."""
    flags = cpu_flags()
    found = [name for flag, name in MATRIX_FLAGS if flag in flags]
    return ", ".join(found) if found != ["AVX2"] else "AVX2 only"


def describe() -> str:
    import torch

    sets = instruction_sets()
    return (f"{cpu_name()}{f' ({sets})' if sets else ''}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads")

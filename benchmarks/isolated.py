"""Running one measurement in its own process, so its peak resident memory (ru_maxrss) is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def run_isolated(script: str, *args) -> dict:
    """Runs `script --one ARGS...` in a new interpreter; the script prints its result as JSON on its last line."""
    out = subprocess.run([sys.executable, script, "--one", *map(str, args)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

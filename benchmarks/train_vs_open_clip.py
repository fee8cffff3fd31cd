"""Training throughput: dualtower's trainer against open_clip's (open_clip_train), same data, model, batch.

Both train the `small-digits` architecture on scikit-learn's digits (written once as PNG files + a CSV file that
both trainers read), fp32, one loader worker, batch 128, for the same number of steps. Each side's samples/s is
the median over its steps after the first five (warm-up), as each trainer reports it. Run from the README's test
environment (open_clip_train needs `pip install braceexpand webdataset pandas`):

    .venv/bin/python benchmarks/train_vs_open_clip.py [--steps 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from dualtower.apps.machine import cpu_name

OPEN_CLIP_CONFIG = {  # small-digits in open_clip's terms
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
RUN_OPEN_CLIP = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
    "from open_clip_train.main import main; main(sys.argv[2:])"
)


def write_digits(root: Path) -> Path:
    from dualtower.data import open_source

    source = open_source("builtin:digits")
    rows = ["filepath,title"]
    for i in range(len(source)):
        sample = source.load(i)
        path = root / "img" / f"{i:05d}.png"
        path.parent.mkdir(exist_ok=True)
        sample.image.save(path)
        rows.append(f"{path},{sample.caption}")
    csv = root / "digits.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def run_open_clip(csv: Path, work: Path, steps: int, batch: int, env: dict) -> list[float]:
    cfg_dir = work / "oc_configs"
    cfg_dir.mkdir()
    (cfg_dir / "small-digits-oc.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    n = len(csv.read_text().splitlines()) - 1
    epochs = -(-steps // (n // batch))
    cmd = [sys.executable, "-c", RUN_OPEN_CLIP, str(cfg_dir), "--model", "small-digits-oc", "--train-data", str(csv),
           "--dataset-type", "csv", "--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "title",
           "--batch-size", str(batch), "--epochs", str(epochs), "--workers", "1", "--lr", "2e-3", "--wd", "0.1",
           "--warmup", "30", "--precision", "fp32", "--log-every-n-steps", "1", "--logs", str(work / "oc_logs"),
           "--save-frequency", "0", "--report-to", "", "--seed", "0", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{done.stderr[-3000:]}")
    rates = [float(m) for m in re.findall(r"([\d.]+)/s/gpu", done.stdout + done.stderr)]
    return rates[5:steps]


def run_ours(csv: Path, work: Path, steps: int, batch: int, env: dict) -> list[float]:
    out = work / "ours"
    cmd = [sys.executable, "-m", "dualtower", "train", f"--data.train={csv}", "--data.image_key=filepath",
           "--data.caption_key=title", f"--data.batch_size={batch}", "--data.workers=1", f"--train.steps={steps}",
           "--train.log_every=1", "--train.progress=false", f"--train.out={out}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in records][5:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = write_digits(work)
        ours = run_ours(csv, work, args.steps, args.batch, env)
        theirs = run_open_clip(csv, work, args.steps, args.batch, env)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads per trainer; torch "
          f"{__import__('torch').__version__}")
    print(f"small-digits, batch {args.batch}, fp32, {args.steps} steps, median after 5 warm-up steps")
    print(f"{'trainer':<12} {'samples/s':>10}")
    print(f"{'open_clip':<12} {t:>10.1f}")
    print(f"{'dualtower':<12} {o:>10.1f}")
    print(f"ratio dualtower / open_clip: {o / t:.2f}x")


if __name__ == "__main__":
    main()

"""Exported towers on ONNX Runtime against PyTorch, same random weights, one process, implementations alternated:
open_clip fp32, dualtower fp32 (PyTorch), ONNX Runtime fp32 and int8 (dynamic quantisation), for the image tower
(batch 32 at 224 px) and the text tower (batch 256 of real sentences). Prints throughput, ratios against
open_clip, the int8 embeddings' cosine to fp32, export time and file sizes, and the machine.

    .venv/bin/python benchmarks/onnx_speed.py [--archs ViT-B-32,ViT-B-16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="ViT-B-32,ViT-B-16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import logging

    import open_clip
    from safetensors.torch import save_file

    import dualtower
    import dualtower.onnx
    from cpu_speed import sentences, timed
    from dualtower.apps.machine import describe
    from dualtower.export import export

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    print(f"machine: {describe()}; onnxruntime threads: its default")
    texts = sentences(256)
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        ref = open_clip.create_model(arch).eval()
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, d / "w.safetensors")
            ours = dualtower.load(d / "w.safetensors", arch=arch).eval()
            runtimes, sizes = {}, {}
            for precision in ("fp32", "int8"):
                start = time.perf_counter()
                report = export(ours, d / precision, precision=precision)
                sizes[precision] = (time.perf_counter() - start, report.files)
                runtimes[precision] = dualtower.onnx.load(d / precision)
            pixels = torch.randn(32, 3, 224, 224)
            ids = dualtower.get_tokenizer(ours)(texts)
            with torch.inference_mode():
                img_ref = ref.encode_image(pixels).numpy()
                txt_ref = ref.encode_text(ids).numpy()
            results = {"image": {}, "text": {}}
            outputs = {"image": {}, "text": {}}
            for name, fn_img, fn_txt in (
                ("open_clip fp32", lambda: ref.encode_image(pixels), lambda: ref.encode_text(ids)),
                ("dualtower fp32", lambda: ours.encode_image(pixels), lambda: ours.encode_text(ids)),
                ("ONNX Runtime fp32", lambda: runtimes["fp32"].encode_image(pixels.numpy()),
                 lambda: runtimes["fp32"].encode_text(ids.numpy())),
                ("ONNX Runtime int8", lambda: runtimes["int8"].encode_image(pixels.numpy()),
                 lambda: runtimes["int8"].encode_text(ids.numpy())),
            ):
                with torch.inference_mode():
                    for tower, fn, n in (("image", fn_img, 32), ("text", fn_txt, 256)):
                        out = fn()
                        outputs[tower][name] = np.asarray(out)
                        results[tower][name] = n / timed(fn, args.repeats)
            for tower, unit, ref_out in (("image", "images/s", img_ref), ("text", "texts/s", txt_ref)):
                base = results[tower]["open_clip fp32"]
                print(f"\n{arch} {tower} tower ({'batch 32, 224 px' if tower == 'image' else 'batch 256 sentences'}):")
                for name, rate in results[tower].items():
                    out = outputs[tower][name]
                    cos = (out * ref_out).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref_out, axis=1)
                    rel = np.abs(out - ref_out).max() / np.abs(ref_out).max()
                    print(f"  {name:18s} {rate:8.1f} {unit}  {rate / base:5.2f}x open_clip   "
                          f"max rel diff {rel:.1e}, min cosine {cos.min():.5f}")
            for precision, (seconds, files) in sizes.items():
                listing = ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in files.items())
                print(f"  export {precision}: {seconds:.0f} s; {listing}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

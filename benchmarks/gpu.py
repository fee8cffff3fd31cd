"""CUDA: a ViT-B-16 training step in bf16 (samples/s and model FLOPs utilisation against the card's peak) and
inference images/s against open_clip on the same card, same random weights, alternated in one process.

    .venv/bin/python benchmarks/gpu.py [--arch ViT-B-16] [--batch 256] [--steps 20] [--compile]
    .venv/bin/python benchmarks/gpu.py --device cpu --batch 4 --steps 2   # a smoke run of the script itself

Model FLOPs are counted by torch's FlopCounterMode on one real step (matmuls and attention, forward and
backward); utilisation = FLOPs per second / the card's dense bf16 peak (a table of known cards below, or
--peak-tflops). A few minutes on one H100.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")

# Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets (without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def peak_for(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd training and inference")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    args = parser.parse_args()

    import open_clip

    import dualtower
    from dualtower.losses import clip_loss

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"device: {name}; torch {torch.__version__}; {args.arch}, batch {args.batch}, bf16 autocast")

    torch.manual_seed(0)
    ref = open_clip.create_model(args.arch).to(device)
    ours = dualtower.create_model(args.arch).to(device)
    from dualtower.convert import open_clip as oc

    ours.load_state_dict(oc.import_state_dict(ref.state_dict(), ours.cfg, set(ours.state_dict()), "open_clip"))
    size = ours.cfg.vision.image_size
    g = torch.Generator(device="cpu").manual_seed(1)
    pixels = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    captions = [f"a photo of thing number {i} " + "with some words " * (i % 4) for i in range(args.batch)]
    ids = dualtower.get_tokenizer(ours)(captions).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    # Same outputs first (fp32, a few images).
    ref.eval(), ours.eval()
    with torch.inference_mode():
        a, b = ref.encode_image(pixels[:4]).float(), ours.encode_image(pixels[:4]).float()
    print(f"fp32 image embeddings: max relative difference {float((a - b).abs().max() / a.abs().max()):.2e}")

    # Inference: images/s, bf16 autocast for both.
    def infer(model):
        with torch.inference_mode(), autocast:
            model.encode_image(pixels)

    infer_models = {"open_clip": ref, "dualtower": ours}
    if args.compile:
        infer_models["dualtower compiled"] = torch.compile(ours)
    for model in infer_models.values():
        infer(model)
    times = {k: [] for k in infer_models}
    for _ in range(5):
        for k, model in infer_models.items():
            times[k].append(timed(lambda: infer(model), device, 1))
    base = statistics.median(times["open_clip"])
    for k, v in times.items():
        t = statistics.median(v)
        print(f"inference {k:<20} {args.batch / t:>9.1f} images/s  {base / t:.2f}x open_clip")

    # Training: one step = forward both towers, CLIP loss, backward, fused AdamW.
    ours.train()
    optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(model):
        with autocast:
            out = model(pixels, ids)
            loss = clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(ours)
    flops = counter.get_total_flops()
    peak = peak_for(name, args.peak_tflops)
    runs = {"dualtower": ours}
    if args.compile:
        runs["dualtower compiled"] = torch.compile(ours)
    for k, model in runs.items():
        for _ in range(3):
            step(model)
        t = timed(lambda: step(model), device, args.steps)
        mfu = f"{flops / t / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s" if peak else "peak unknown (--peak-tflops)"
        print(f"train step {k:<19} {args.batch / t:>9.1f} samples/s  {flops / t / 1e12:.1f} TFLOP/s  MFU {mfu}")
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()

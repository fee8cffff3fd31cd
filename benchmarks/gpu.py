"""CUDA: a ViT-B-16 training step in bf16 (samples/s and model FLOPs utilisation against the card's peak) and
inference images/s and texts/s against open_clip (and HF transformers) on the same card, same random weights,
alternated in one process.

    .venv/bin/python benchmarks/gpu.py [--arch ViT-B-16] [--batch 256] [--steps 20] [--compile] [--out FILE.md]
    .venv/bin/python benchmarks/gpu.py --device cpu --batch 4 --steps 2   # a smoke run of the script itself

Model FLOPs are counted by torch's FlopCounterMode on one real step of each implementation (matmuls and
attention, forward and backward); utilisation = FLOPs per second / the card's dense bf16 peak (a table of known
cards below, or --peak-tflops). The captions are real-length (mostly 8-20 tokens): our text tower computes only
up to the longest caption of a batch, open_clip and HF always run all 77 positions, so the counted FLOPs differ
and each row's utilisation uses its own count. About 3 minutes on an H200, most of it in the --compile rows.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
torch._logging.set_logs(dynamo=logging.ERROR)  # the text tower's graph break (its length is data-dependent) is known

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


def timed(fn, device: torch.device, calls: int) -> float:
    """Seconds per call, over `calls` back-to-back calls (the device drained before and after)."""
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def alternate(fns: dict, device: torch.device, rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each function, the functions taking turns round by round."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(timed(fn, device, calls))
    return {k: statistics.median(v) for k, v in times.items()}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def captions(n: int) -> list[str]:
    """Real-length captions: 8-20 tokens, a few long ones."""
    subjects = ["a dog", "two children", "an old red bus", "a bowl of soup", "a man on a bicycle", "the skyline"]
    places = ["in the park", "on a rainy street", "next to a wooden table", "at night", "under a bright blue sky"]
    extra = [" while people walk past and look at the shop windows", " with mountains far behind it"]
    return [f"{subjects[i % 6]} {places[i % 5]}" + (extra[i % 2] if i % 7 == 0 else "") for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per implementation")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd inference and training")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()

    import open_clip

    import dualtower
    from dualtower.convert import open_clip as oc
    from dualtower.losses import clip_loss

    device = torch.device(args.device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    lines = [f"device: {name}; torch {torch.__version__}; open_clip {open_clip.__version__}; "
             f"{args.arch}, batch {args.batch}, bf16"]
    print(lines[0], flush=True)

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    torch.manual_seed(0)
    ref = open_clip.create_model(args.arch).to(device).eval()
    ours = dualtower.create_model(args.arch).to(device).eval()
    ours.load_state_dict(oc.import_state_dict(ref.state_dict(), ours.cfg, set(ours.state_dict()), "open_clip"))
    hf, hf_dir = None, None
    try:
        import transformers

        from dualtower import convert

        hf_dir = tempfile.mkdtemp(prefix="dualtower-gpu-hf-")
        convert.export(ours.cpu(), hf_dir, "hf")
        ours.to(device)
        hf = transformers.CLIPModel.from_pretrained(hf_dir, attn_implementation="sdpa").to(device).eval()
    except Exception as e:  # HF is an optional peer here
        report(f"HF transformers row left out: {type(e).__name__}: {e}")
    finally:
        if hf_dir:
            shutil.rmtree(hf_dir, ignore_errors=True)

    size = ours.cfg.vision.image_size
    g = torch.Generator(device="cpu").manual_seed(1)
    pixels = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    texts = captions(args.batch)
    cpu_ids = dualtower.get_tokenizer(ours)(texts)  # as a loader gives them: the tower checks, trims and moves
    ids = cpu_ids.to(device)
    ref_ids = open_clip.get_tokenizer(args.arch)(texts).to(device)
    assert torch.equal(ids.cpu(), ref_ids.cpu()), "tokenizers disagree"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def hf_image(x):
        out = hf.get_image_features(pixel_values=x)
        return out if torch.is_tensor(out) else out.pooler_output

    def hf_text(x):
        out = hf.get_text_features(input_ids=x)
        return out if torch.is_tensor(out) else out.pooler_output

    # Same outputs first: full fp32 (TF32 off), then bf16 against that.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    n = min(16, args.batch)
    with torch.inference_mode():
        a, b = ref.encode_image(pixels[:n]), ours.encode_image(pixels[:n])
        at, bt = ref.encode_text(ref_ids[:n]), ours.encode_text(ids[:n])
        line = f"fp32 outputs, max |diff| / max |ref|: image {rel(b, a):.1e}, text {rel(bt, at):.1e}"
        if hf is not None:
            line += f" (HF: image {rel(hf_image(pixels[:n]), a):.1e}, text {rel(hf_text(ref_ids[:n]), at):.1e})"
        report(line)
        with autocast:
            c = ours.encode_image(pixels[:n]).float()
        half = copy.deepcopy(ours).to(torch.bfloat16)
        d = half.encode_image(pixels[:n]).float()
        report(f"bf16 image embeddings, min cosine to fp32: autocast {float(F.cosine_similarity(c, a).min()):.5f}, "
               f"bf16 weights {float(F.cosine_similarity(d, a).min()):.5f}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    # Inference, bf16: autocast for the peers and for us, and our weights held in bf16.
    def under_autocast(fn):
        def call():
            with torch.inference_mode(), autocast:
                fn()
        return call

    def plain(fn):
        def call():
            with torch.inference_mode():
                fn()
        return call

    image_fns = {"open_clip (autocast)": under_autocast(lambda: ref.encode_image(pixels)),
                 "dualtower (autocast)": under_autocast(lambda: ours.encode_image(pixels)),
                 "dualtower (bf16 weights)": plain(lambda: half.encode_image(pixels))}
    text_fns = {"open_clip (autocast)": under_autocast(lambda: ref.encode_text(ref_ids)),
                "dualtower (autocast)": under_autocast(lambda: ours.encode_text(cpu_ids)),
                "dualtower (bf16 weights)": plain(lambda: half.encode_text(cpu_ids)),
                "dualtower (bf16 weights, ids on the GPU)": plain(lambda: half.encode_text(ids))}
    if hf is not None:
        image_fns["HF transformers (autocast)"] = under_autocast(lambda: hf_image(pixels))
        text_fns["HF transformers (autocast)"] = under_autocast(lambda: hf_text(ref_ids))
    if args.compile:
        compiled = torch.compile(half.visual)
        start = time.perf_counter()
        plain(lambda: compiled(pixels))()
        sync(device)
        report(f"torch.compile, first image call: {time.perf_counter() - start:.1f} s")
        image_fns["dualtower (bf16 weights, compiled)"] = plain(lambda: compiled(pixels))
    calls = 10 if device.type == "cuda" else 1
    report("")
    report("| inference | images/s | x open_clip | | texts/s | x open_clip |")
    report("|---|---:|---:|---|---:|---:|")
    ti = alternate(image_fns, device, 5, calls)
    tt = alternate(text_fns, device, 5, calls)
    for k in {**image_fns, **text_fns}:
        image = f"{args.batch / ti[k]:.0f} | {ti['open_clip (autocast)'] / ti[k]:.2f}x" if k in ti else " | "
        text = f"{args.batch / tt[k]:.0f} | {tt['open_clip (autocast)'] / tt[k]:.2f}x" if k in tt else " | "
        report(f"| {k} | {image} | | {text} |")

    # Training: one step = both towers forward, the CLIP loss, backward, fused AdamW; bf16 autocast, fp32 weights.
    # Our token ids come from the CPU, as `dualtower train` passes them; the "ids on the GPU" row has the text
    # tower's checks and trimming wait for the device once per step instead (on an H200: no measurable cost).
    from torch.utils.flop_counter import FlopCounterMode

    def trainer(model, encode_image, encode_text, scale, tokens):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

        def step():
            with autocast:
                image = F.normalize(encode_image(pixels), dim=-1)
                text = F.normalize(encode_text(tokens), dim=-1)
                loss = clip_loss(image.float(), text.float(), scale())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    ref.train(), ours.train()
    runs = {"open_clip": (ref, trainer(ref, ref.encode_image, ref.encode_text, lambda: ref.logit_scale.exp(),
                                       ref_ids)),
            "dualtower": (ours, trainer(ours, ours.encode_image, ours.encode_text, ours.scale, cpu_ids)),
            "dualtower, ids on the GPU": (ours, trainer(ours, ours.encode_image, ours.encode_text, ours.scale, ids))}
    if args.compile:
        twin = copy.deepcopy(ours)
        runs["dualtower (compiled)"] = (twin, trainer(twin, torch.compile(twin.visual), torch.compile(twin.text),
                                                      twin.scale, cpu_ids))
    peak = peak_for(name, args.peak_tflops)
    report("")
    report("| train step | samples/s | x open_clip | model TFLOP/step | TFLOP/s | MFU | peak memory GiB |")
    report("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for k, (model, step) in runs.items():
        start = time.perf_counter()
        step()
        sync(device)
        first = time.perf_counter() - start
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        for _ in range(2):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = timed(step, device, args.steps)
        base = base or t
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        mfu = f"{flops / t / (peak * 1e12):.1%}" if peak else "peak unknown"
        report(f"| {k} | {args.batch / t:.0f} | {base / t:.2f}x | {flops / 1e12:.2f} | {flops / t / 1e12:.0f} | "
               f"{mfu} | {memory:.1f} |")
        if k.endswith("(compiled)"):
            report(f"(first compiled step: {first:.1f} s)")
    if peak:
        report(f"MFU against {peak:.0f} TFLOP/s dense bf16")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()

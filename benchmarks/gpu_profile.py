"""CUDA: where one bf16 training step of ours goes, by kernel (torch.profiler), for ViT-B-16 at batch 256.

    .venv/bin/python benchmarks/gpu_profile.py [--arch ViT-B-16] [--batch 256]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    import dualtower
    from dualtower.losses import clip_loss

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = dualtower.create_model(args.arch).to(device).train()
    size = model.cfg.vision.image_size
    pixels = torch.randn(args.batch, 3, size, size, device=device)
    ids = dualtower.get_tokenizer(model)(["a photo of a dog in the park at night"] * args.batch).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = clip_loss(F.normalize(model.encode_image(pixels), dim=-1).float(),
                             F.normalize(model.encode_text(ids), dim=-1).float(), model.scale())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print("three steps profiled: divide the table's totals by 3 for one step")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))


if __name__ == "__main__":
    main()

"""Run under torchrun: one training step of `small-digits` with or without FSDP; writes this process's bytes of
parameters and optimizer state to OUT/rank<R>.json (a file per rank: the ranks' stdout lines can interleave)."""

import json
import sys
from pathlib import Path

import torch

import dualtower
from dualtower import distributed


def main(parallel: str, out: str) -> None:
    d = distributed.init()
    model = dualtower.create_model("small-digits", seed=0)
    if parallel == "fsdp":
        distributed.shard(model, d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixels = torch.randn(4, 3, 32, 32)
    ids = dualtower.get_tokenizer("small-digits")(["a", "b", "c", "d"])
    model(pixels, ids).logits_per_image.sum().backward()
    optimizer.step()
    (Path(out) / f"rank{d.rank}.json").write_text(json.dumps({"bytes": distributed.local_bytes(model, optimizer)}))
    distributed.shutdown(d)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""`dualtower archs`, `plan`, `models`, `convert`: the named architectures and pretrained models, and their
files."""

from __future__ import annotations

import sys

from ..formats import listing
from .common import count


def _cmd_archs(args) -> int:
    from ..archs import REGISTRY
    from ..config import ConvVisionConfig

    print(f"{'name':<24} {'image':>5} {'patch':>5} {'vis w/d':>9} {'txt w/d':>9} {'embed':>5}  {'act':<10} pool")
    for name in sorted(REGISTRY):
        c = REGISTRY[name]
        v, t = c.vision, c.text
        text = f"{t.width:>5}/{t.depth:<3}" if t is not None else f"{'-':>9}"
        act, pool = ("gelu", "mean (conv)") if isinstance(v, ConvVisionConfig) else (v.act, v.pool)
        print(f"{name:<24} {v.image_size:>5} {v.stride:>5} {v.width:>5}/{v.depth:<3} {text} "
              f"{c.embed_dim:>5}  {act:<10} {pool}")
    return 0


def add_archs(sub) -> None:
    p = sub.add_parser("archs", help="list the named architectures")
    p.set_defaults(func=_cmd_archs)


def _cmd_plan(args) -> int:
    from ..plan import plan

    for gpus in args.gpus:
        print(plan(args.arch, gpus, args.batch, args.parallel, args.precision, args.grad_checkpointing).table())
    return 0


def add_plan(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU training memory of an architecture: weights, gradients, optimizer "
                                    "state, activations (DDP or FSDP)")
    p.add_argument("arch", help="an architecture name (dualtower archs)")
    p.add_argument("--gpus", type=count(1), nargs="+", default=[8], help="GPUs in all; several give one plan each")
    p.add_argument("--batch", type=count(1), required=True, help="the global batch")
    p.add_argument("--parallel", choices=("ddp", "fsdp"), default="fsdp",
                   help="ddp: every GPU holds the whole model; fsdp: weights, gradients and optimizer state sharded")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="the activations' precision (weights and optimizer state stay fp32)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in the backward pass")
    p.set_defaults(func=_cmd_plan)


def _cmd_models(args) -> int:
    from ..hub import known_models

    rows = known_models()
    print(f"{'name':<38} {'params':>7}  {'layout':<14} {'licence':<12} repo")
    for r in rows:
        print(f"{r['name']:<38} {r['params'] / 1e6:>6.0f}M  {r['layout']:<14} {r['licence'] or '-':<12} {r['repo']}")
    print("load one with dualtower.load(NAME) or --model NAME; any repo with hf-hub:ORG/NAME[@REVISION]. "
          "Licences show once a model card is cached; weights carry their own licences.")
    return 0


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the well-known pretrained models (loaded from the Hugging Face Hub)")
    p.set_defaults(func=_cmd_models)


def _cmd_convert(args) -> int:
    from ..convert import convert

    from ..convert.registry import writer_for

    model = convert(args.src, args.dst, arch=args.arch, to=args.to, source=args.source, towers=args.towers)
    written = writer_for(args.to, model.cfg)
    towers = "vision tower only" if model.text is None or written.vision_only else "both towers"
    print(f"wrote {args.dst} ({args.to} format, architecture {model.cfg.name}, {towers})")
    changes = written.preprocessing_changes(model.cfg)
    if changes:  # a transformers processor cannot express this model's rules: say what changes, and how much
        print(f"note: transformers' image processor will prepare images unlike this model: {'; '.join(changes)}. "
              "Measured on real photos with a small (32-pixel) model: embeddings down to cosine 0.91, 0.31 for "
              "half-transparent images; zero-shot probabilities moved by up to 0.43 (0.97). Larger images move "
              "less; `dualtower load` of the directory keeps transformers' rules", file=sys.stderr)
    return 0


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", help="our checkpoint directory or a run directory; an HF CLIP, SigLIP or InternVL(Vision) "
                               "directory; or a state dict (open_clip/OpenAI, bare timm ViT/EVA, InternViT) with "
                               "--arch")
    p.add_argument("dst", help="output directory (dualtower, hf) or file (open_clip, timm, internvl: .safetensors "
                               "or .bin)")
    p.add_argument("--arch", help="architecture of a bare state dict, e.g. ViT-B-32, EVA02-B-16, InternViT-300M-448px")
    p.add_argument("--from", dest="source", help=f"the source's format when it should not be detected: {listing()}")
    p.add_argument("--towers", choices=["both", "vision", "text"],
                   help="vision or text: convert that tower alone")
    p.add_argument("--to", default="dualtower", help=f"the format to write: {listing()}, or hf (the transformers "
                                                    "class that fits the model)")
    p.set_defaults(func=_cmd_convert)

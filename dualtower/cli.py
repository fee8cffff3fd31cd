"""The `dualtower` command: thin wrappers over the library."""

from __future__ import annotations

import argparse
import logging
import sys


def _cmd_archs(args) -> int:
    from .archs import REGISTRY

    print(f"{'name':<24} {'image':>5} {'patch':>5} {'vis w/d':>9} {'txt w/d':>9} {'embed':>5}  act")
    for name in sorted(REGISTRY):
        c = REGISTRY[name]
        v, t = c.vision, c.text
        print(f"{name:<24} {v.image_size:>5} {v.patch_size:>5} {v.width:>5}/{v.depth:<3} {t.width:>5}/{t.depth:<3} "
              f"{c.embed_dim:>5}  {v.act}")
    return 0


def _cmd_convert(args) -> int:
    from .checkpoint import convert

    model = convert(args.src, args.dst, arch=args.arch, to=args.to)
    print(f"wrote {args.dst} ({args.to} format, architecture {model.cfg.name})")
    return 0


def _cmd_smoke(args) -> int:
    from .smoke import run

    run(arch=args.arch, seed=args.seed)
    return 0


def _cmd_train(args, overrides: list[str]) -> int:
    from . import configtree
    from .train.config import TrainConfig
    from .train.loop import resume_config, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.resume:
        if args.config:
            raise ValueError("--resume continues a run with its own saved config; give no CONFIG file")
        cfg = resume_config(args.resume, overrides)
    else:
        cfg = configtree.load(TrainConfig, args.config, overrides)
    train(cfg, resume=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualtower", description="CLIP-style dual-encoder vision-text models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("archs", help="list the named architectures")
    p.set_defaults(func=_cmd_archs)

    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", help="our checkpoint directory, an HF CLIP directory, or an open_clip/OpenAI state dict")
    p.add_argument("dst", help="output directory (dualtower, hf) or file (open_clip: .safetensors or .bin)")
    p.add_argument("--arch", help="architecture of a bare state dict, e.g. ViT-B-32")
    p.add_argument("--to", choices=["dualtower", "hf", "open_clip"], default="dualtower")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train or fine-tune (CONFIG: .toml/.yaml; --section.key=value overrides)")
    p.add_argument("config", nargs="?", help="a TOML or YAML config; without one, a small model on builtin:digits")
    p.add_argument("--resume", metavar="DIR", help="continue a run exactly from its latest checkpoint")
    p.set_defaults(func=_cmd_train, takes_overrides=True)

    p = sub.add_parser("smoke", help="encode sample photos and captions with a small random model")
    p.add_argument("--arch", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .train.loop import TrainingError

    try:
        return args.func(args, rest) if getattr(args, "takes_overrides", False) else args.func(args)
    except (ValueError, KeyError, FileNotFoundError, TrainingError) as e:
        print(f"dualtower {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

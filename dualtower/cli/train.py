"""`dualtower train`, `demo`, `smoke`: training runs and the built-in demonstrations."""

from __future__ import annotations

import logging

from ..errors import UserError
from .common import count


def train_keys() -> str:
    """The config keys for `dualtower train --help`, from the config classes themselves."""
    from ..configtree import describe
    from ..train.config import TrainConfig

    rows = describe(TrainConfig)
    width = max(len(k) + len(d) for k, d, _ in rows) + 4
    lines = [f"  --{k}={d}".ljust(width + 5) + h for k, d, h in rows]
    return "config keys (in a TOML/YAML file, or as --section.key=value or --section.key value):\n" + "\n".join(lines)


def _cmd_train(args, overrides: list[str]) -> int:
    from .. import configtree
    from ..train.config import TrainConfig
    from ..train.loop import resume_config, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = configtree.pair_overrides(overrides)
    if args.resume:
        if args.config:
            raise UserError("--resume continues a run with its own saved config; give no CONFIG file")
        cfg = resume_config(args.resume, overrides)
    else:
        cfg = configtree.load(TrainConfig, args.config, overrides)
    train(cfg, resume=args.resume)
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune (CONFIG: .toml/.yaml; --section.key=value overrides)",
                       epilog=train_keys())
    p.add_argument("config", nargs="?", help="a TOML or YAML config; without one, a small model on builtin:digits")
    p.add_argument("--resume", metavar="DIR", help="continue a run exactly from its latest checkpoint")
    p.set_defaults(func=_cmd_train, takes_overrides=True)


def _cmd_demo(args) -> int:
    from ..apps.demo import run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(data=args.data, out=args.out, steps=args.steps, workers=args.workers, seed=args.seed)
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a small CLIP on built-in data, evaluate it, write a report")
    p.add_argument("--data", default="builtin:digits", help="builtin:digits or builtin:fashion-mnist")
    p.add_argument("--out", default="demo-out", help="the report directory")
    p.add_argument("--steps", type=count(1), help="training steps (default: the data set's recipe)")
    p.add_argument("--workers", type=count(0), default=1, help="image-decoding processes")
    p.add_argument("--seed", type=int, default=0, help="the run's seed")
    p.set_defaults(func=_cmd_demo, out_dir=True)


def _cmd_smoke(args) -> int:
    from ..apps.smoke import run

    run(arch=args.arch, seed=args.seed)
    return 0


def add_smoke(sub) -> None:
    p = sub.add_parser("smoke", help="encode sample photos and captions with a small random model")
    p.add_argument("--arch", default="tiny", help="the architecture of the random model")
    p.add_argument("--seed", type=int, default=0, help="its seed")
    p.set_defaults(func=_cmd_smoke)

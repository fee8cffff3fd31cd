"""The `dualtower` command: thin wrappers over the library."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys


def _cmd_archs(args) -> int:
    from .archs import REGISTRY

    print(f"{'name':<24} {'image':>5} {'patch':>5} {'vis w/d':>9} {'txt w/d':>9} {'embed':>5}  {'act':<10} pool")
    for name in sorted(REGISTRY):
        c = REGISTRY[name]
        v, t = c.vision, c.text
        text = f"{t.width:>5}/{t.depth:<3}" if t is not None else f"{'-':>9}"
        print(f"{name:<24} {v.image_size:>5} {v.patch_size:>5} {v.width:>5}/{v.depth:<3} {text} "
              f"{c.embed_dim:>5}  {v.act:<10} {v.pool}")
    return 0


def _cmd_plan(args) -> int:
    from .plan import plan

    for gpus in args.gpus:
        print(plan(args.arch, gpus, args.batch, args.parallel, args.precision, args.grad_checkpointing).table())
    return 0


def _cmd_models(args) -> int:
    from .hub import known_models

    rows = known_models()
    print(f"{'name':<38} {'params':>7}  {'layout':<14} {'licence':<12} repo")
    for r in rows:
        print(f"{r['name']:<38} {r['params'] / 1e6:>6.0f}M  {r['layout']:<14} {r['licence'] or '-':<12} {r['repo']}")
    print("load one with dualtower.load(NAME) or --model NAME; any repo with hf-hub:ORG/NAME[@REVISION]. "
          "Licences show once a model card is cached; weights carry their own licences.")
    return 0


def _cmd_convert(args) -> int:
    from .convert import convert

    model = convert(args.src, args.dst, arch=args.arch, to=args.to, source=args.source, towers=args.towers)
    towers = "vision tower only" if model.text is None else "both towers"
    print(f"wrote {args.dst} ({args.to} format, architecture {model.cfg.name}, {towers})")
    return 0


def _cmd_smoke(args) -> int:
    from .apps.smoke import run

    run(arch=args.arch, seed=args.seed)
    return 0


def _cmd_train(args, overrides: list[str]) -> int:
    from . import configtree
    from .train.config import TrainConfig
    from .train.loop import resume_config, train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = configtree.pair_overrides(overrides)
    if args.resume:
        if args.config:
            raise ValueError("--resume continues a run with its own saved config; give no CONFIG file")
        cfg = resume_config(args.resume, overrides)
    else:
        cfg = configtree.load(TrainConfig, args.config, overrides)
    train(cfg, resume=args.resume)
    return 0


def _cmd_demo(args) -> int:
    from .apps.demo import run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run(data=args.data, out=args.out, steps=args.steps, workers=args.workers, seed=args.seed)
    return 0


def _options(args, service: bool = False):
    """How --model is opened: --device, --precision, --arch, --source, --towers where the command has them."""
    from .runtimes import OpenOptions

    return OpenOptions(device=getattr(args, "device", "auto"), precision=getattr(args, "precision", "fp32"),
                       arch=getattr(args, "arch", None), source=getattr(args, "source", None),
                       towers=getattr(args, "towers", None), service=service,
                       note=lambda message: print(message, file=sys.stderr))


def _embedder(args, service: bool = False):
    """--model on --runtime (torch: a checkpoint or a registry name, random weights said so; onnx: an export)."""
    from . import runtimes

    return runtimes.open(args.model, getattr(args, "runtime", "torch"), _options(args, service))


def _model(args):
    """--model as a DualEncoder (the commands that need the module itself: features, export), at --precision."""
    from .runtimes.pytorch import load_model

    model = load_model(args.model, _options(args))
    if getattr(args, "precision", "fp32") == "bf16":
        import torch

        model.to(torch.bfloat16)  # weights in bf16; norms still compute in fp32, outputs are returned as fp32
    return model


def _templates(args, source_name: str) -> list[str]:
    from .eval.templates import read_templates, templates_for

    return read_templates(args.templates) if args.templates else templates_for(source_name)


def _write_json(path: str | None, result: dict) -> None:
    from .io import write_json

    if path:
        write_json(path, result)
        print(f"results: {path}")


def _cmd_eval(args) -> int:
    from .data import open_source
    from .eval import embed_source, linear_probe, retrieval, zeroshot

    # Everything that can be refused is checked before the model loads and the images are embedded.
    source = open_source(args.data, args.image_key, args.caption_key)
    if args.task in ("zeroshot", "linear-probe") and not source.classes:
        raise ValueError(f"{args.data}: {args.task} needs data with classes (for example builtin:digits:test)")
    if args.task == "linear-probe" and not args.train:
        raise ValueError("linear-probe needs --train DATA (the probe's training data)")
    templates = _templates(args, source.name) if args.task == "zeroshot" else None
    model = _embedder(args)
    images, _ = embed_source(model, source, args.batch_size, args.workers, progress=True)
    if args.task == "zeroshot":
        result = zeroshot(model, images, source.classes, templates)
        rows = [(name, result[key]) for name, key in (("top-1", "top1"), ("top-5", "top5"),
                                                      ("mean per-class recall", "mean_per_class_recall"))
                if key in result]
    elif args.task == "retrieval":
        result = retrieval(model, images)
        rows = [(f"image->text {k}", v) for k, v in result["image_to_text"].items()]
        rows += [(f"text->image {k}", v) for k, v in result["text_to_image"].items()]
    else:
        train_source = open_source(args.train, args.image_key, args.caption_key)
        train_images, _ = embed_source(model, train_source, args.batch_size, args.workers, progress=True)
        result = linear_probe(train_images, images, source.classes)
        rows = [(name, result[key]) for name, key in (("top-1", "top1"), ("top-5", "top5"),
                                                      ("mean per-class recall", "mean_per_class_recall"),
                                                      ("weight decay", "weight_decay")) if key in result]
    result = {"task": args.task, "model": args.model, "data": args.data, **result,
              "images": {"accepted": images.stats.accepted, "skipped": dict(images.stats.skipped)}}
    print(f"{args.task} on {args.data} ({images.stats.accepted} images, "
          f"{sum(images.stats.skipped.values())} skipped)")
    for name, value in rows:
        print(f"  {name:<24} {value:.4g}")
    _write_json(args.out, result)
    return 0


def shown(text: str) -> str:
    """`text` for one line of output: a newline, carriage return or other control character in a file name (or a
    caption) is shown escaped, so it cannot forge a line of its own."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def _cmd_classify(args) -> int:
    from .data.files import image_paths
    from .eval.output import write_predictions
    from .images import open_image

    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if len(labels) < 2:
        raise ValueError("--labels needs at least two comma-separated labels")
    templates = _templates(args, "")  # before the model loads
    from .eval.classifier import ZeroShotClassifier

    classifier = ZeroShotClassifier(_embedder(args), labels, templates)
    status, rows = 0, []
    for path in image_paths(args.images):
        try:
            top = classifier.top(open_image(path), args.top_k)
        except ValueError as e:
            print(f"{shown(path)}: error: {e}", file=sys.stderr)
            status = 2
            continue
        rows.append({"image": path, "top": [{"label": label, "prob": p} for label, p in top]})
        print(shown(path) + ": " + ", ".join(f"{shown(label)} {p:.3f}" for label, p in top))
    if args.out:
        write_predictions(args.out, rows)
        print(f"results: {args.out}")
    return status


def _cmd_embed(args) -> int:
    from .data import open_source
    from .eval.output import write_embeddings

    from .eval.sources import embed_source

    source = open_source(args.data, args.image_key, args.caption_key, captions=args.text)
    got = embed_source(_embedder(args), source, args.batch_size, args.workers, progress=True, with_text=args.text)
    if not got.ids:
        raise ValueError(f"{args.data}: nothing to embed, so nothing was written; {got.stats.summary()}")
    write_embeddings(args.out, got.features, got.ids, got.texts, got.captions if args.text else None)
    print(f"wrote {len(got.ids)} embeddings to {args.out}; {got.stats.summary()}")
    return 0


def _cmd_features(args) -> int:
    from .mllm import check_features_path, extract_features

    check_features_path(args.out)  # before any work
    lo, _, hi = (args.tiles or "1-1").partition("-")
    try:
        tiles = (int(lo), int(hi or lo)) if args.tiles else None
    except ValueError:
        tiles = (0, 0)
    if tiles is not None and not 1 <= tiles[0] <= tiles[1]:
        raise ValueError(f"--tiles {args.tiles!r}: expected MIN-MAX with 1 <= MIN <= MAX, e.g. 1-12")
    result = extract_features(_model(args), args.images, layers=tuple(int(x) for x in args.layer.split(",")),
                              keep_cls=not args.no_cls, final_norm=args.final_norm, tiles=tiles,
                              batch_size=args.batch_size, on_skip=lambda message: print(message, file=sys.stderr))
    result.save(args.out)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in result.tensors.items())
    print(f"wrote {args.out}: {shapes}; {len(result.skipped)} image(s) skipped")
    return 2 if result.skipped else 0


def _model_source(name: str) -> str:
    """What an index records of --model: an absolute path for a local one, the name otherwise."""
    import os

    return os.path.abspath(name) if os.path.exists(name) else name


def _cmd_export(args) -> int:
    from .export import export

    model = _model(args)
    report = export(model, args.out, format=args.format, precision=args.precision_out, normalize=args.normalize,
                    opset=args.opset, dynamic_size=args.dynamic_size, aot=args.aot)
    print(f"wrote {report.summary()}")
    return 0


def _cmd_index(args) -> int:
    from .search import build_index

    report = build_index(args.data, _embedder(args), args.out, engine=args.engine, batch_size=args.batch_size,
                         workers=args.workers, progress=True, model_source=_model_source(args.model),
                         image_key=args.image_key, caption_key=args.caption_key, backend=args.backend, uri=args.uri,
                         collection=args.collection, repair=args.repair)
    for key, reason, detail in report.skipped_list[:20]:
        print(f"skipped {shown(key)}: {reason} ({shown(detail)})", file=sys.stderr)
    if len(report.skipped_list) > 20:
        print(f"... and {len(report.skipped_list) - 20} more skipped", file=sys.stderr)
    print(f"{args.out}: {report.summary()}")
    return 0


def _open_index(args):
    from .search import SearchIndex, Store

    if args.runtime == "onnx" and not args.model:
        raise ValueError("--runtime onnx needs --model: a folder from `dualtower export` of the index's model")
    if not args.model:  # the model the index was built with, on this command's device and precision
        store = Store(args.index)
        args.model = store.model.get("source")
        store.close()
        if not args.model:
            raise ValueError(f"{args.index}: the index does not say where its model came from; pass --model")
    return SearchIndex(args.index, model=_embedder(args, service=True))  # a few queries at a time


def _cmd_search(args) -> int:
    import json

    if (args.text is None) == (args.image is None):
        raise ValueError("give a text to search for, or --image FILE (one of them)")
    if not 1 <= args.k <= 10_000:
        raise ValueError(f"-k {args.k}: expected 1 to 10000")
    index = _open_index(args)
    if args.image is not None:
        from .images import open_image

        hits = index.search_image(open_image(args.image), args.k)
    else:
        hits = index.search_text(args.text, args.k)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return 0
    for h in hits:
        where = shown(h.path or h.key)
        print(f"{h.score:.4f}  {where}" + (f"  {shown(h.caption)}" if h.caption else ""))
    return 0


def _cmd_serve(args) -> int:
    from .search.server import Limits, serve

    index = _open_index(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: serving on {args.host}: reachable from other machines; the service has no authentication",
              file=sys.stderr)
    print(f"serving {args.index} ({len(index)} images) on http://{args.host}:{args.port}/", file=sys.stderr)
    serve(index, args.host, args.port, Limits(max_body=args.max_body, max_k=args.max_k,
                                              max_waiting=args.max_waiting))
    return 0


_FORMATS = ("dualtower, open_clip, openai (written for QuickGELU models only), timm, internvl, hf-clip, hf-siglip, "
            "hf-siglip2, hf-internvl")


def _model_args(p) -> None:
    p.add_argument("--model", required=True, help="a checkpoint (or a training run's directory: its latest "
                                                  "checkpoint), hf-hub:ORG/NAME[@REVISION] or a name from "
                                                  "`dualtower models`, or an architecture name for random weights")
    p.add_argument("--arch", help="the architecture of a bare state dict checkpoint")
    p.add_argument("--source", "--from", dest="source", help=f"the checkpoint's format when it should not be "
                                                                f"detected: {_FORMATS}")
    p.add_argument("--towers", choices=["both", "vision", "text"],
                   help="vision or text: load that tower alone (tower-only formats such as timm's always do)")


def _data_args(p, data_help: str = "a data spec (builtin:digits:test, a captions file, a folder, tar shards)"):
    _model_args(p)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--image-key", default="image", help="the image column of a captions file")
    p.add_argument("--caption-key", default="caption", help="the caption column of a captions file")
    p.add_argument("--batch-size", type=_count(1), default=64, help="images per batch")
    p.add_argument("--workers", type=_count(0), default=2, help="image-decoding processes")
    _inference_args(p)


def _inference_args(p) -> None:
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: weights in bfloat16 (about 2x faster on CPUs with AVX512-BF16 or AMX; embeddings "
                        "within cosine 0.999 of fp32)")
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")


def _runtime_arg(p) -> None:
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: --model is a folder from `dualtower export`, run on ONNX Runtime without torch")


def _train_keys() -> str:
    """The config keys for `dualtower train --help`, from the config classes themselves."""
    from .configtree import describe
    from .train.config import TrainConfig

    rows = describe(TrainConfig)
    width = max(len(k) + len(d) for k, d, _ in rows) + 4
    lines = [f"  --{k}={d}".ljust(width + 5) + h for k, d, h in rows]
    return "config keys (in a TOML/YAML file, or as --section.key=value or --section.key value):\n" + "\n".join(lines)


class _Help(argparse.RawDescriptionHelpFormatter):
    """An option's help ends with its default when it has one; epilogs keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _count(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]; anything else is refused by argparse, naming the option."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high if high is not None else '...'}]")
        return value

    parse.__name__ = "integer"
    return parse


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dualtower", description="CLIP-style dual-encoder vision-text models.")
    parser.add_argument("--version", action="version", version=f"dualtower {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: DUALTOWER_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_Help))

    p = sub.add_parser("archs", help="list the named architectures")
    p.set_defaults(func=_cmd_archs)

    p = sub.add_parser("plan", help="per-GPU training memory of an architecture: weights, gradients, optimizer "
                                    "state, activations (DDP or FSDP)")
    p.add_argument("arch", help="an architecture name (dualtower archs)")
    p.add_argument("--gpus", type=_count(1), nargs="+", default=[8], help="GPUs in all; several give one plan each")
    p.add_argument("--batch", type=_count(1), required=True, help="the global batch")
    p.add_argument("--parallel", choices=("ddp", "fsdp"), default="fsdp",
                   help="ddp: every GPU holds the whole model; fsdp: weights, gradients and optimizer state sharded")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                   help="the activations' precision (weights and optimizer state stay fp32)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in the backward pass")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("models", help="list the well-known pretrained models (loaded from the Hugging Face Hub)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("convert", help="convert a checkpoint between formats")
    p.add_argument("src", help="our checkpoint directory or a run directory; an HF CLIP, SigLIP or InternVL(Vision) "
                               "directory; or a state dict (open_clip/OpenAI, bare timm ViT/EVA, InternViT) with "
                               "--arch")
    p.add_argument("dst", help="output directory (dualtower, hf) or file (open_clip, timm, internvl: .safetensors "
                               "or .bin)")
    p.add_argument("--arch", help="architecture of a bare state dict, e.g. ViT-B-32, EVA02-B-16, InternViT-300M-448px")
    p.add_argument("--from", dest="source", help=f"the source's format when it should not be detected: {_FORMATS}")
    p.add_argument("--towers", choices=["both", "vision", "text"],
                   help="vision or text: convert that tower alone")
    p.add_argument("--to", default="dualtower", help=f"the format to write: {_FORMATS}, or hf (the transformers "
                                                    "class that fits the model)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train or fine-tune (CONFIG: .toml/.yaml; --section.key=value overrides)",
                       epilog=_train_keys())
    p.add_argument("config", nargs="?", help="a TOML or YAML config; without one, a small model on builtin:digits")
    p.add_argument("--resume", metavar="DIR", help="continue a run exactly from its latest checkpoint")
    p.set_defaults(func=_cmd_train, takes_overrides=True)

    p = sub.add_parser("demo", help="train a small CLIP on built-in data, evaluate it, write a report")
    p.add_argument("--data", default="builtin:digits", help="builtin:digits or builtin:fashion-mnist")
    p.add_argument("--out", default="demo-out", help="the report directory")
    p.add_argument("--steps", type=_count(1), help="training steps (default: the data set's recipe)")
    p.add_argument("--workers", type=_count(0), default=1, help="image-decoding processes")
    p.add_argument("--seed", type=int, default=0, help="the run's seed")
    p.set_defaults(func=_cmd_demo, out_dir=True)

    p = sub.add_parser("eval", help="zero-shot classification, retrieval or linear probe")
    p.add_argument("task", choices=["zeroshot", "retrieval", "linear-probe"], help="what to measure")
    _data_args(p)
    p.add_argument("--train", help="linear-probe: the data the probe is fitted on")
    p.add_argument("--templates", help="zeroshot: a file of prompt templates, one per line, {c} for the class")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=_cmd_eval, out_file=(".json",))

    p = sub.add_parser("classify", help="top-k labels for images, zero-shot")
    _model_args(p)
    p.add_argument("--labels", required=True, help='comma-separated, e.g. "cat,dog,car"')
    p.add_argument("--templates", help="a file of prompt templates ({c} for the label)")
    p.add_argument("--top-k", type=_count(1), default=3, help="labels printed per image")
    p.add_argument("--out", help="also write the results: FILE.json or FILE.csv")
    _inference_args(p)
    p.add_argument("images", nargs="+", help="image files, or folders (their images, recursively)")
    _runtime_arg(p)
    p.set_defaults(func=_cmd_classify, out_file=(".json", ".csv"))

    p = sub.add_parser("embed", help="embed every image of a data source to .npz or .safetensors")
    _data_args(p)
    p.add_argument("--out", required=True, help="FILE.npz or FILE.safetensors")
    p.add_argument("--text", action="store_true", help="also embed the captions")
    _runtime_arg(p)
    p.set_defaults(func=_cmd_embed, out_file=(".npz", ".safetensors"))

    p = sub.add_parser("features", help="hidden states of chosen vision layers, for multimodal LLMs")
    _model_args(p)
    p.add_argument("--layer", default="-2", help="hidden-state indices (HF numbering), comma-separated; write negative ones as --layer=-2")
    p.add_argument("--no-cls", action="store_true", help="drop the class token")
    p.add_argument("--final-norm", action="store_true", help="apply the tower's final norm to every token")
    p.add_argument("--tiles", help="MIN-MAX: cut each image into InternVL's dynamic tiles (plus a thumbnail)")
    p.add_argument("--batch-size", type=_count(1), default=32, help="images per batch (tiles count separately)")
    _inference_args(p)
    p.add_argument("--out", required=True,
                   help="FILE.safetensors: tensors layer<N> (tiles, tokens, width); metadata images, tiles_per_image")
    p.add_argument("images", nargs="+", help="image files")
    p.set_defaults(func=_cmd_features, out_file=(".safetensors",))

    p = sub.add_parser("export", help="export the towers for deployment: ONNX (ONNX Runtime) or torch.export")
    p.add_argument("model", help="a checkpoint, hf-hub:ORG/NAME, a name from `dualtower models`, or an "
                                 "architecture name for random weights")
    p.add_argument("out", help="the folder to write (image.onnx, text.onnx, config.json, tokenizer files, README)")
    p.add_argument("--arch", help="the architecture of a bare state dict checkpoint")
    p.add_argument("--format", choices=["onnx", "torch-export"], default="onnx", help="what to write")
    p.add_argument("--precision", dest="precision_out", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="ONNX: fp16 weights and activations, or int8 (dynamic quantisation of the matrix products)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings inside the graphs")
    p.add_argument("--opset", type=_count(7, 30), default=18, help="the ONNX opset")
    p.add_argument("--dynamic-size", action="store_true",
                   help="image graph for any height and width (positional embeddings resized in the graph)")
    p.add_argument("--aot", action="store_true", help="torch-export: also compile AOTInductor packages "
                                                      "(*.aoti.pt2) for this platform; needs a C++ compiler")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("index", help="build or update a search index of the images of a data spec")
    p.add_argument("data", help="a folder of images, a captions file, tar shards or builtin:NAME")
    _model_args(p)
    p.add_argument("--out", required=True, help="the index folder (created, or updated when it exists)")
    p.add_argument("--engine", choices=["auto", "flat", "ivf"], default="auto",
                   help="flat: exact; ivf: compressed codes with an exact re-rank; auto: flat up to 100,000 images")
    p.add_argument("--backend", choices=["faiss", "milvus"],
                   help="where the vectors are searched: FAISS in the index folder (the default for a new index) or "
                        "a Milvus collection (pip install 'dualtower[milvus]')")
    p.add_argument("--uri", help="milvus: a Milvus Lite file (default: INDEX/milvus.db) or a server's URL, e.g. "
                                 "http://localhost:19530")
    p.add_argument("--collection", default="dualtower", help="milvus: the collection's name")
    p.add_argument("--repair", action="store_true", help="an index whose database is damaged: move it aside "
                   "(OUT.damaged-TIME) and build it again (a damaged or foreign engine file is rebuilt anyway)")
    p.add_argument("--image-key", default="image", help="the image column of a captions file")
    p.add_argument("--caption-key", default="caption", help="the caption column of a captions file")
    p.add_argument("--batch-size", type=_count(1), default=64, help="images per batch")
    p.add_argument("--workers", type=_count(0), default=2,
                   help="image-decoding processes (threads with --runtime onnx)")
    _inference_args(p)
    _runtime_arg(p)
    p.set_defaults(func=_cmd_index)

    def _index_args(p):
        p.add_argument("index", help="an index folder made by `dualtower index`")
        p.add_argument("--model", help="the index's model, when it should not be loaded from where the index "
                                       "says (it must have the same weights)")
        p.add_argument("--arch", help="the architecture of a bare state dict checkpoint")
        _inference_args(p)
        _runtime_arg(p)

    p = sub.add_parser("search", help="the images of an index nearest a text or an image")
    _index_args(p)
    p.add_argument("text", nargs="?", help="what to look for, e.g. \"a red car\"")
    p.add_argument("--image", help="search by this image file instead of a text")
    p.add_argument("-k", type=_count(1), default=10, help="how many results")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("serve", help="an HTTP search service and web page for an index")
    _index_args(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (other than loopback: reachable "
                                                       "from other machines)")
    p.add_argument("--port", type=_count(1, 65535), default=8000, help="the port")
    p.add_argument("--max-body", type=_count(1), default=10 * 1024 * 1024, help="the largest request body, in bytes")
    p.add_argument("--max-k", type=_count(1), default=1000, help="the most results one request may ask for")
    p.add_argument("--max-waiting", type=_count(1), default=32,
                   help="searches in flight before more are answered 503")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("smoke", help="encode sample photos and captions with a small random model")
    p.add_argument("--arch", default="tiny", help="the architecture of the random model")
    p.add_argument("--seed", type=int, default=0, help="its seed")
    p.set_defaults(func=_cmd_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    from .configtree import pair_overrides

    # `--train.out runs/x` (the space form): paired before parsing, or the parser takes runs/x for CONFIG
    argv = pair_overrides(list(sys.argv[1:] if argv is None else argv))
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .errors import MissingDependency
    from .train.errors import TrainingError

    from .io import disk_full

    debug = args.debug or os.environ.get("DUALTOWER_DEBUG", "") not in ("", "0")
    previous = _terminate_as_interrupt()
    try:
        _check_out(args)
        return args.func(args, rest) if getattr(args, "takes_overrides", False) else args.func(args)
    except BrokenPipeError:  # `dualtower archs | head -1`: the reader has what it wanted
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except OSError:
            pass
        return 0
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated; a training run's Stopped says which)
        terminated = getattr(e, "signum", signal.SIGINT) == signal.SIGTERM
        print(f"dualtower {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as e:  # every failure ends in one line naming the input and the problem; --debug: traceback
        if debug:
            raise
        user = isinstance(e, (ValueError, KeyError, FileNotFoundError, TrainingError, MissingDependency)) or \
            disk_full(e)
        print(f"dualtower {args.command}: error: {shown(_describe(e))}", file=sys.stderr)
        if not user:
            print(f"dualtower {args.command}: (run with --debug for the traceback)", file=sys.stderr)
        return 2 if user else 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, as Ctrl-C is: every atomic write removes its temporary and leaves the
    previous output, or the complete new one (exit 143). (A training run catches both itself: `train.stop`.)"""

    signum = signal.SIGTERM


def _terminate_as_interrupt():
    """SIGTERM becomes `Terminated` in the main thread (the previous handler, to restore; None where none was
    set: not the main thread)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a caller running main() in a thread)
        return None


def _check_out(args) -> None:
    """--out, before any work: a file output must not be a folder and must end as the command writes; a folder
    output must not be a file. Its parent folder is created by the writer."""
    out = getattr(args, "out", None)
    if not out:
        return
    path = os.path.abspath(out)
    suffixes = getattr(args, "out_file", None)
    if suffixes:
        if os.path.isdir(path):
            raise ValueError(f"--out {out}: is a folder; name the file to write ({' or '.join(suffixes)})")
        if not path.lower().endswith(suffixes):
            raise ValueError(f"--out {out}: name the file {' or '.join('FILE' + x for x in suffixes)}")
    elif getattr(args, "out_dir", False) and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {out}: exists and is a file, not a folder")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the nearest folder that exists (the root always does)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {out}: {parent} is a file, not a folder")


def _describe(error: Exception) -> str:
    """One line for an error: a KeyError without quotes; a full disk with the path and the space left there."""
    from .io import disk_full

    if disk_full(error):
        import shutil

        path = getattr(error, "filename", None)
        if path:
            where = os.path.dirname(os.path.abspath(path)) or "."
            try:
                free = f"{shutil.disk_usage(where).free / 2**20:.1f} MB free in {where}"
            except OSError:
                free = f"free space in {where} unknown"
            return (f"{path}: no space left on the device ({free}); nothing was replaced and the partial files "
                    "were removed: free some space and run again")
        return f"no space left on the device ({error}); nothing was replaced and the partial files were removed"
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])  # a KeyError's str() adds quotes
    text = " ".join(str(error).split())
    if isinstance(error, (ValueError, FileNotFoundError)) or not text:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())

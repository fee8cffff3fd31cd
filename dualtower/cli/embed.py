"""`dualtower eval`, `classify`, `embed`, `features`, `export`: what a model makes of images and texts."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from .common import (count, data_args, embedder, inference_args, model_args, prompt_templates, runtime_arg, shown,
                     torch_model, write_json)


def _cmd_eval(args) -> int:
    from ..data import open_source
    from ..eval import embed_source, linear_probe, retrieval, zeroshot
    from ..eval.retrieval import class_captions

    # Everything that can be refused is checked before the model loads and the images are embedded.
    source = open_source(args.data, args.image_key, args.caption_key)
    if args.task in ("zeroshot", "linear-probe") and not source.classes:
        raise UserError(f"{args.data}: {args.task} needs data with classes (for example builtin:digits:test)")
    if args.task == "linear-probe" and not args.train:
        raise UserError("linear-probe needs --train DATA (the probe's training data)")
    by_class = args.task == "retrieval" and args.match == "class"
    if by_class and not source.classes:
        raise UserError(f"{args.data}: --match class needs data with classes (for example builtin:digits:test)")
    templates = prompt_templates(args, source.name) if args.task == "zeroshot" or by_class else None
    model = embedder(args)
    images, _ = embed_source(model, source, args.batch_size, args.workers, progress=True)
    if args.task == "zeroshot":
        result = zeroshot(model, images, source.classes, templates)
    elif args.task == "retrieval":
        result = retrieval(model, class_captions(images, source.classes, templates) if by_class else images,
                           match=args.match)
    else:
        train_source = open_source(args.train, args.image_key, args.caption_key)
        train_images, _ = embed_source(model, train_source, args.batch_size, args.workers, progress=True)
        result = linear_probe(train_images, images, source.classes)
    print(f"{args.task} on {args.data} ({images.stats.accepted} images, "
          f"{sum(images.stats.skipped.values())} skipped)")
    if args.task == "retrieval":
        print(f"  rule: {result.RULES[result.match]} (--match {result.match}; "
              f"{result.n_images} images, {result.n_texts} texts)")
    for name, value in result.rows():
        print(f"  {name:<24} {value:.4f}")
    write_json(args.out, {"task": args.task, "model": args.model, "data": args.data, **result.to_dict(),
                          "images": {"accepted": images.stats.accepted, "skipped": dict(images.stats.skipped)}})
    return 0


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot classification, retrieval or linear probe")
    p.add_argument("task", choices=["zeroshot", "retrieval", "linear-probe"], help="what to measure")
    data_args(p)
    p.add_argument("--train", help="linear-probe: the data the probe is fitted on")
    p.add_argument("--templates", help="zeroshot, and retrieval --match class: a file of prompt templates, one per "
                                       "line, {c} for the class")
    p.add_argument("--match", choices=["caption", "class"], default="caption",
                   help="retrieval: caption (a text matches the images it is a caption of; built-in data gives each "
                        "image one rotating caption) or class (a text matches every image of the class it names, "
                        "each template per class: the demo report's rule)")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=_cmd_eval, out_file=(".json",))


def _cmd_classify(args) -> int:
    from ..data.files import image_paths
    from ..eval.output import write_predictions
    from ..images import open_image

    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if len(labels) < 2:
        raise UserError("--labels needs at least two comma-separated labels")
    templates = prompt_templates(args, "")  # before the model loads
    from ..eval.classifier import ZeroShotClassifier

    classifier = ZeroShotClassifier(embedder(args), labels, templates)
    status, rows = 0, []
    for path in image_paths(args.images):
        try:
            top = classifier.top(open_image(path), args.top_k)
        except ValueError as e:
            reason = str(e).removeprefix(f"{path}: ")  # the decoder's message names the file already
            print(f"{shown(path)}: error: {shown(reason)}", file=sys.stderr)
            status = 2
            continue
        rows.append({"image": path, "top": [{"label": label, "prob": p} for label, p in top]})
        print(shown(path) + ": " + ", ".join(f"{shown(label)} {p:.3f}" for label, p in top))
    if args.out:
        write_predictions(args.out, rows)
        print(f"results: {args.out}")
    return status


def add_classify(sub) -> None:
    p = sub.add_parser("classify", help="top-k labels for images, zero-shot")
    model_args(p)
    p.add_argument("--labels", required=True, help='comma-separated, e.g. "cat,dog,car"')
    p.add_argument("--templates", help="a file of prompt templates ({c} for the label)")
    p.add_argument("--top-k", type=count(1), default=3, help="labels printed per image")
    p.add_argument("--out", help="also write the results: FILE.json or FILE.csv")
    inference_args(p)
    p.add_argument("images", nargs="+", help="image files, or folders (their images, recursively)")
    runtime_arg(p)
    p.set_defaults(func=_cmd_classify, out_file=(".json", ".csv"))


def _cmd_embed(args) -> int:
    from ..data import open_source
    from ..eval.output import write_embeddings
    from ..eval.sources import embed_source

    source = open_source(args.data, args.image_key, args.caption_key, captions=args.text)
    got = embed_source(embedder(args), source, args.batch_size, args.workers, progress=True, with_text=args.text)
    if not got.ids:
        raise UserError(f"{args.data}: nothing to embed, so nothing was written; {got.stats.summary()}")
    write_embeddings(args.out, got.features, got.ids, got.texts, got.captions if args.text else None)
    print(f"wrote {len(got.ids)} embeddings to {args.out}; {got.stats.summary()}")
    return 0


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed every image of a data source to .npz or .safetensors")
    data_args(p)
    p.add_argument("--out", required=True, help="FILE.npz or FILE.safetensors")
    p.add_argument("--text", action="store_true", help="also embed the captions")
    runtime_arg(p)
    p.set_defaults(func=_cmd_embed, out_file=(".npz", ".safetensors"))


def _cmd_features(args) -> int:
    from ..mllm import check_features_path, extract_features

    check_features_path(args.out)  # before any work
    lo, _, hi = (args.tiles or "1-1").partition("-")
    try:
        tiles = (int(lo), int(hi or lo)) if args.tiles else None
    except ValueError:
        tiles = (0, 0)
    if tiles is not None and not 1 <= tiles[0] <= tiles[1]:
        raise UserError(f"--tiles {args.tiles!r}: expected MIN-MAX with 1 <= MIN <= MAX, e.g. 1-12")
    from ..data.files import image_paths

    result = extract_features(torch_model(args), image_paths(args.images), layers=tuple(int(x) for x in args.layer.split(",")),
                              keep_cls=not args.no_cls, final_norm=args.final_norm, tiles=tiles,
                              batch_size=args.batch_size, on_skip=lambda message: print(message, file=sys.stderr))
    result.save(args.out)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in result.tensors.items())
    print(f"wrote {args.out}: {shapes}; {len(result.skipped)} image(s) skipped")
    return 2 if result.skipped else 0


def add_features(sub) -> None:
    p = sub.add_parser("features", help="hidden states of chosen vision layers, for multimodal LLMs")
    model_args(p)
    p.add_argument("--layer", default="-2", help="hidden-state indices (HF numbering), comma-separated; write negative ones as --layer=-2")
    p.add_argument("--no-cls", action="store_true", help="drop the class token")
    p.add_argument("--final-norm", action="store_true", help="apply the tower's final norm to every token")
    p.add_argument("--tiles", help="MIN-MAX: cut each image into InternVL's dynamic tiles (plus a thumbnail)")
    p.add_argument("--batch-size", type=count(1), default=32, help="images per batch (tiles count separately)")
    inference_args(p)
    p.add_argument("--out", required=True,
                   help="FILE.safetensors: tensors layer<N> (tiles, tokens, width); metadata images, tiles_per_image")
    p.add_argument("images", nargs="+", help="image files, or folders (their images, recursively)")
    p.set_defaults(func=_cmd_features, out_file=(".safetensors",))


def _cmd_export(args) -> int:
    from ..data.files import image_paths
    from ..export import export

    if args.model_option:  # `export --model CKPT OUT`: the one positional is OUT
        if args.out is not None:
            args.parser.error("give the model once: MODEL OUT, or --model MODEL OUT")
        args.model, args.out = args.model_option, args.model
    if not args.model or not args.out:
        args.parser.error("the following arguments are required: MODEL OUT (or --model MODEL OUT)")
    calibration = image_paths(args.calibration)[:256] if args.calibration else None  # refused before the model
    missing = [p for p in calibration or () if not os.path.isfile(p)]
    if missing:
        raise UserError(f"--calibration {missing[0]}: no such file or folder")
    model = torch_model(args)
    report = export(model, args.out, format=args.format, precision=args.lowering, normalize=args.normalize,
                    opset=args.opset, dynamic_size=args.dynamic_size, aot=args.aot,
                    reparameterize=args.reparameterize, calibration=calibration)
    print(f"wrote {report.summary()}")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export the towers for deployment: ONNX (ONNX Runtime), OpenVINO or "
                                      "torch.export")
    p.add_argument("model", nargs="?", help="a checkpoint, hf-hub:ORG/NAME, a name from `dualtower models`, or an "
                                            "architecture name for random weights (or give it as --model)")
    p.add_argument("out", nargs="?", help="the folder to write (image.onnx and text.onnx, or .xml/.bin for openvino, "
                                          ".pt2 for torch-export; config.json, probes, tokenizer files, README)")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the model, as every other command takes it")
    p.add_argument("--arch", help="the architecture of a bare state dict checkpoint")
    p.add_argument("--format", choices=["onnx", "openvino", "torch-export"], default="onnx",
                   help="what to write: ONNX graphs (ONNX Runtime, or OpenVINO from them), OpenVINO's own models "
                        "(.xml/.bin; int8 quantised by OpenVINO, pip install 'dualtower[nncf]'), or torch.export "
                        "programs")
    p.add_argument("--lowering", "--precision", dest="lowering", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="ONNX: fp16 weights and activations, or int8 (dynamic quantisation of the matrix products; "
                        "a convolutional tower's dense convolutions static, see --calibration); openvino: fp32, or "
                        "int8 by NNCF calibrated on images (--calibration) and built-in captions, the fastest on "
                        "processors with VNNI or AMX; --precision is its older name")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings inside the graphs")
    p.add_argument("--opset", type=count(7, 30), help="the ONNX opset (default 20: one Gelu op per GELU)")
    p.add_argument("--calibration", metavar="PATH", nargs="+",
                   help="int8 of a convolutional tower (MobileCLIP S0-S4), or any OpenVINO int8: images or "
                        "folders of images the activation ranges are calibrated on (default: scikit-learn's "
                        "sample photos)")
    p.add_argument("--dynamic-size", action="store_true",
                   help="image graph for any height and width (positional embeddings resized in the graph)")
    p.add_argument("--aot", action="store_true", help="torch-export: also compile AOTInductor packages "
                                                      "(*.aoti.pt2) for this platform; needs a C++ compiler")
    p.add_argument("--reparameterize", action=argparse.BooleanOptionalAction, default=True,
                   help="fold a convolutional tower's training-time branches into single convolutions (MobileCLIP; "
                        "the same outputs, fewer operations); on by default, --no-reparameterize keeps them")
    p.set_defaults(func=_cmd_export)

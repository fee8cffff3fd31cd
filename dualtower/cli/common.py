"""What the commands share: how --model is opened, the shared flag groups, the help formatter, output lines."""

from __future__ import annotations

import argparse
import sys

from ..formats import listing


class Help(argparse.RawDescriptionHelpFormatter):
    """An option's help ends with its default when it has one; epilogs keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is not None and action.default is not False and action.default != argparse.SUPPRESS \
                and "default" not in text and action.option_strings:  # 0 is a default too (0 == False)
            text += " (default: %(default)s)"
        return text


def count(low: int, high: int | None = None):
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


def model_args(p) -> None:
    p.add_argument("--model", required=True, help="a checkpoint (or a training run's directory: its latest "
                                                  "checkpoint), hf-hub:ORG/NAME[@REVISION] or a name from "
                                                  "`dualtower models`, or an architecture name for random weights")
    p.add_argument("--arch", help="the architecture of a bare state dict checkpoint")
    p.add_argument("--source", "--from", dest="source", help=f"the checkpoint's format when it should not be "
                                                                f"detected: {listing()}")
    p.add_argument("--towers", choices=["both", "vision", "text"],
                   help="vision or text: load that tower alone (tower-only formats such as timm's always do)")
    p.add_argument("--language", help="NLLB models (nllb-clip-*): the language tag put before each text, such as "
                                      "fra_Latn or zho_Hans (default eng_Latn)")


def data_args(p, data_help: str = "a data spec (builtin:digits:test, a captions file, a folder, tar shards)"):
    model_args(p)
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--image-key", default="image", help="the image column of a captions file")
    p.add_argument("--caption-key", default="caption", help="the caption column of a captions file")
    p.add_argument("--batch-size", type=count(1), default=64, help="images per batch")
    p.add_argument("--workers", type=count(0), default=2, help="image-decoding processes")
    inference_args(p)


PRECISIONS = ("auto", "fp32", "bf16")


def default_precision() -> str:
    """--precision when it is not given: $DUALTOWER_PRECISION (to pin one for a deployment), else auto. A value
    that is not a precision is refused when a command opens its model (`options`)."""
    import os

    return os.environ.get("DUALTOWER_PRECISION") or "auto"


def inference_args(p) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default=default_precision(),
                   help="auto: each tower at the fastest precision this processor runs it at (bf16 where AMX, "
                        "AVX512-BF16 or a GPU makes it faster; measured once per machine and cached) that passes the "
                        "self-check, said in one line; bf16: weights in bfloat16 (embeddings within cosine 0.999 of "
                        "fp32, checked on load); fp32: exact. $DUALTOWER_PRECISION sets the default. The onnx "
                        "runtime runs the precision its export was written at")
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N")


def runtime_arg(p) -> None:
    from ..runtimes import CHOICES

    p.add_argument("--runtime", choices=list(CHOICES), default="torch",
                   help="onnx: --model is a folder from `dualtower export`, run on ONNX Runtime without torch; "
                        "openvino: the same folder, or an `--format openvino` one, on OpenVINO (pip install "
                        "'dualtower[openvino]'), whose --precision auto runs the products in bf16 on AMX or "
                        "AVX512-BF16 processors; auto: the fastest runtime installed that runs --model, measured "
                        "once per machine and said")


def options(args, service: bool = False):
    """How --model is opened: --device, --precision, --arch, --source, --towers where the command has them."""
    from ..errors import UserError
    from ..runtimes import OpenOptions

    precision = getattr(args, "precision", "fp32")
    if precision not in PRECISIONS:
        raise UserError(f"DUALTOWER_PRECISION={precision!r} is not one of {', '.join(PRECISIONS)}")
    return OpenOptions(device=getattr(args, "device", "auto"), precision=precision,
                       arch=getattr(args, "arch", None), source=getattr(args, "source", None),
                       towers=getattr(args, "towers", None), language=getattr(args, "language", None),
                       service=service,
                       note=lambda message: print(message, file=sys.stderr))


def embedder(args, service: bool = False):
    """--model on --runtime (torch: a checkpoint or a registry name, random weights said so; onnx: an export)."""
    from .. import runtimes

    return runtimes.open(args.model, getattr(args, "runtime", "torch"), options(args, service))


def torch_model(args):
    """--model as a DualEncoder (the commands that need the module itself: features, export), at --precision."""
    from ..runtimes.pytorch import at_precision, load_model

    opened = options(args)
    model = load_model(args.model, opened)
    if opened.precision != "auto":
        return at_precision(model, opened.precision)
    from ..runtimes.auto import choose

    opened.note(choose(model.eval()).line)  # each tower cast as chosen
    return model


def prompt_templates(args, source_name: str) -> list[str]:
    from ..eval.templates import read_templates, templates_for

    return read_templates(args.templates) if args.templates else templates_for(source_name)


def write_json(path: str | None, result: dict) -> None:
    from ..io import write_json

    if path:
        write_json(path, result)
        print(f"results: {path}")


def shown(text: str) -> str:
    """`text` for one line of output: a newline, carriage return or other control character in a file name (or a
    caption) is shown escaped, so it cannot forge a line of its own."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))

"""The `dualtower` command: one module per command group, each declaring its flags next to its handlers;
handlers parse and call the library. `dualtower --help` answers without torch."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys

from ..errors import UserError
from . import embed, models, search, train
from .common import Help, shown
from .interrupts import Terminated, as_exceptions

# every command, in the order `dualtower --help` lists them
COMMANDS = (models.add_archs, models.add_plan, models.add_models, models.add_convert, train.add_train, train.add_demo,
            embed.add_eval, embed.add_classify, embed.add_embed, embed.add_features, embed.add_export,
            search.add_index, search.add_merge, search.add_search, search.add_serve, search.add_dedupe, search.add_keys,
            train.add_smoke)


# two-word commands, parsed as one hidden command of their own: `dualtower index merge` is `index-merge`
HIDDEN = {("index", "merge"): "index-merge"}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="dualtower", description="CLIP-style dual-encoder vision-text models.")
    parser.add_argument("--version", action="version", version=f"dualtower {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: DUALTOWER_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, formatter_class=Help))
    for add in COMMANDS:
        add(sub)
    for command in sub.choices.values():  # an argument error prints that command's usage, not the top level's
        command.set_defaults(parser=command)
    sub.metavar = "{" + ",".join(name for name in sub.choices if name not in HIDDEN.values()) + "}"
    sub._choices_actions = [a for a in sub._choices_actions if a.dest not in HIDDEN.values()]  # nor in the list
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    from ..configtree import pair_overrides

    # `--train.out runs/x` (the space form): paired before parsing, or the parser takes runs/x for CONFIG
    argv = pair_overrides(list(sys.argv[1:] if argv is None else argv))
    if tuple(argv[:2]) in HIDDEN:
        argv = [HIDDEN[tuple(argv[:2])]] + argv[2:]
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_overrides", False):
        args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from ..errors import is_user_error
    from ..io import disk_full

    debug = args.debug or os.environ.get("DUALTOWER_DEBUG", "") not in ("", "0")
    try:
        with as_exceptions():
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
        print(f"{args.parser.prog}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as e:  # every failure ends in one line naming the input and the problem; --debug: traceback
        if debug:
            raise
        user = is_user_error(e) or disk_full(e)
        print(f"{args.parser.prog}: error: {shown(_describe(e))}", file=sys.stderr)
        if not user:
            print(f"{args.parser.prog}: (run with --debug for the traceback)", file=sys.stderr)
        return 2 if user else 1


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
            raise UserError(f"--out {out}: is a folder; name the file to write ({' or '.join(suffixes)})")
        if not path.lower().endswith(suffixes):
            raise UserError(f"--out {out}: name the file {' or '.join('FILE' + x for x in suffixes)}")
    elif getattr(args, "out_dir", False) and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out {out}: exists and is a file, not a folder")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):  # the nearest folder that exists (the root always does)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"--out {out}: {parent} is a file, not a folder")


def _describe(error: Exception) -> str:
    """One line for an error: a KeyError without quotes; a full disk with the path and the space left there."""
    from ..io import disk_full

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
    from ..errors import is_user_error

    if is_user_error(error) or not text:  # a user error's message says it all; a fault of ours names its type
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}"


__all__ = ["COMMANDS", "Terminated", "build_parser", "main", "shown"]
